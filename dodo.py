"""ClusterOS build graph. `doit list` shows the tasks; each lives in tasks/."""

from clusteros import paths
from tasks import TASKS
from tasks.filecheck import StampOrContentChecker
from tasks.reporter import Reporter

globals().update(TASKS)

# doit opens its state database before any task runs: its folder must exist.
paths.doit_db().parent.mkdir(parents=True, exist_ok=True)

DOIT_CONFIG = {
    "default_tasks": ["image", "raw", "gz"],
    "dep_file": str(paths.doit_db()),
    "backend": "sqlite3",
    "verbosity": 2,
    "reporter": Reporter,
    "action_string_formatting": "new",
    "check_file_uptodate": StampOrContentChecker,   # big files by their stamp, not hashed whole at every build
}
