"""prereqs: is this machine ready for the spec's configuration?"""

from doit.exceptions import TaskFailed

from clusteros import doctor
from tasks.context import spec


def _doctor():
    text, ready = doctor.report(spec())
    print(text)
    return True if ready else TaskFailed("prerequisites missing: run scripts/install-prereqs.sh")


def task_prereqs():
    """List the external tools the chosen builders need, and whether KVM really works."""
    return {"actions": [_doctor], "uptodate": [False], "verbosity": 2}
