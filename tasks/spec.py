"""validate: the resolved spec; keys: the cluster secret and the test SSH key."""

from doit.tools import config_changed

from clusteros import paths, secrets
from clusteros.atomic import write_json
from tasks.context import spec, spec_file


def task_validate():
    """Check cluster.yaml against the schema; write the resolved spec to dist/spec.json."""
    target = paths.dist_dir() / "spec.json"
    return {
        "actions": [(write_json, [target, spec()])],
        "file_dep": [spec_file(), paths.SCHEMA_FILE],
        "targets": [target],
        "uptodate": [config_changed(spec())],
        "clean": True,
    }


def task_keys():
    """Make the cluster secret, the owner's key and the test SSH key once, in the 0700 state dir."""
    s = spec()
    keys = [secrets.test_key_path(s), secrets.owner_key_path(s)]
    return {
        "actions": [(secrets.ensure_all, [s])],
        "targets": [secrets.cluster_secret_path(s), *keys, *(key.with_suffix(".pub") for key in keys)],
        "uptodate": [True],
    }
