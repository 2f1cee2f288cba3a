"""test_vm and friends: the QEMU test cluster (clusteros/vm)."""

import subprocess
import sys

from doit.exceptions import TaskFailed

from clusteros import paths
from clusteros.vm import cluster, layout, report
from tasks.context import dist, spec

NODES = {"name": "nodes", "long": "nodes", "type": str, "default": "",
         "help": "number of VMs (default: vm.nodes in cluster.yaml)"}


def _outcome(text: str, ok: bool):
    print(text)
    return True if ok else TaskFailed("not every node is running and reachable")


def _up(nodes):
    s = spec()
    cluster.up(s, dist(".qcow2"), dist(".manifest.json"), layout.vm_count(s, nodes))
    return _outcome(*report.status_report(s))


def _print(fn):
    def action():
        out = fn(spec())
        print(out if isinstance(out, str) else "\n".join(out) or "nothing was running")
    return action


def _shell(node, cmd):
    # cmd is a command line, as for `ssh host 'cmd'`: pipes, `;` and quotes work.
    code = cluster.shell(spec(), node, ["sh", "-c", cmd] if cmd else [])
    return True if code == 0 else TaskFailed(f"node {node}: command exited {code}")


def _integration(tests):
    folders = [paths.PROJECT_ROOT / "test" / "integration", *spec()["vm"].get("tests", []), *tests]
    report_file = paths.dist_dir() / "reports" / "integration.xml"
    # -o addopts=: the checks run in this one process on the one cluster, whatever this
    # project's own test suite sets for itself (two test workers) in pyproject.toml.
    argv = [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-p", "clusteros.vm.checks",
            "-v", f"--rootdir={paths.PROJECT_ROOT}", f"--junitxml={report_file}", *map(str, folders)]
    code = subprocess.call(argv)
    return True if code == 0 else TaskFailed(f"integration checks failed (pytest exit {code}); see {report_file}")


def _vm_task(action, doc: str, **extra) -> dict:
    return {"actions": [action], "uptodate": [False], "verbosity": 2, "doc": doc, **extra}


def task_test_vm():
    """Boot the test cluster (vm.nodes VMs, or --nodes N) and wait for SSH on every node."""
    return _vm_task(_up, task_test_vm.__doc__, params=[NODES], file_dep=[dist(".qcow2"), dist(".manifest.json")])


def task_vm_status():
    """Per node: QMP state, SSH reachability, node-agent state; fails if a node is down."""
    return _vm_task(lambda: _outcome(*report.status_report(spec())), task_vm_status.__doc__)


def task_vm_info():
    """Per node: ports, pids, MACs, and the paths of logs, overlays and QMP sockets."""
    return _vm_task(_print(report.info_report), task_vm_info.__doc__)


def task_vm_stop():
    """Power the test cluster down (ACPI, then QMP quit, then kill); overlays stay."""
    return _vm_task(_print(cluster.stop), task_vm_stop.__doc__)


def task_vm_clean():
    """Stop the test cluster and remove everything it left under dist/vm."""
    return _vm_task(_print(cluster.clean), task_vm_clean.__doc__)


def task_vm_shell():
    """Run a command on a node: `doit vm_shell --node 2 --cmd "sinfo -N"` (no --cmd: log in)."""
    params = [{"name": "node", "long": "node", "type": int, "default": 1, "help": "node number, from 1"},
              {"name": "cmd", "long": "cmd", "type": str, "default": "", "help": "a shell command line"}]
    return _vm_task(_shell, task_vm_shell.__doc__, params=params)


def task_test_vm_integration():
    """Check the running cluster: test/integration plus vm.tests and --tests folders; JUnit XML in dist/reports/."""
    params = [{"name": "tests", "long": "tests", "type": list, "default": [],
               "help": "a folder of your own checks (repeatable)"}]
    return _vm_task(_integration, task_test_vm_integration.__doc__, params=params)
