"""test_vm and friends: the QEMU test cluster (clusteros/vm)."""

import sys

import doit
from doit.exceptions import TaskFailed

from clusteros import paths
from clusteros.vm import cluster
from tasks.context import dist, spec


def _up(count=None):
    s = spec()
    n = cluster.vm_count(s, count if count is not None else doit.get_var("nodes", None))
    cluster.up(s, dist(".qcow2"), dist(".manifest.json"), n)
    text, ok = cluster.status_report(s)
    print(text)
    return True if ok else TaskFailed("not every node is running and reachable")


def _status():
    text, ok = cluster.status_report(spec())
    print(text)
    return True if ok else TaskFailed("not every node is running and reachable")


def _print(fn):
    def action():
        out = fn(spec())
        print(out if isinstance(out, str) else "\n".join(out) or "nothing was running")
    return action


def _vm_task(doc, action, **extra):
    task = {"actions": [action], "uptodate": [False], "verbosity": 2, "doc": doc}
    task.update(extra)
    return task


def task_test_vm():
    """Boot the test cluster (vm.nodes, or `doit test_vm nodes=5`) and wait for SSH on every node."""
    return _vm_task(task_test_vm.__doc__, _up, file_dep=[dist(".qcow2"), dist(".manifest.json")])


def task_test_vm_5():
    """Boot a 5-node test cluster."""
    return _vm_task(task_test_vm_5.__doc__, (_up, [5]), file_dep=[dist(".qcow2"), dist(".manifest.json")])


def task_vm_status():
    """Per node: QMP state, SSH reachability, node-agent state."""
    return _vm_task(task_vm_status.__doc__, _status)


def task_vm_info():
    """Per node: ports, pids, MACs, and the paths of logs, overlays and QMP sockets."""
    return _vm_task(task_vm_info.__doc__, _print(cluster.info_report))


def task_vm_stop():
    """Power the test cluster down (ACPI, then QMP quit, then kill); overlays stay."""
    return _vm_task(task_vm_stop.__doc__, _print(cluster.stop))


def task_vm_clean():
    """Stop the test cluster and remove everything it left under dist/vm."""
    return _vm_task(task_vm_clean.__doc__, _print(cluster.clean))


def _shell():
    node = doit.get_var("node", "1")
    command = doit.get_var("cmd", "")
    try:
        number = int(node)
    except ValueError:
        return TaskFailed(f"node={node!r}: give a node number, e.g. `doit vm_shell node=2 cmd=hostname`")
    # cmd is a command line, as for `ssh host 'cmd'`: pipes, `;` and quotes work.
    code = cluster.shell(spec(), number, ["sh", "-c", command] if command else [])
    return True if code == 0 else TaskFailed(f"node{number}: command exited {code}")


def task_vm_shell():
    """Run a command on node N: `doit vm_shell node=2 cmd="sinfo -N"` (no cmd: log in)."""
    return _vm_task(task_vm_shell.__doc__, _shell)


def task_test_vm_integration():
    """Run the integration suite (test/integration) against the running cluster; JUnit XML in dist/."""
    report = paths.dist_dir() / "reports" / "integration.xml"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", str(paths.PROJECT_ROOT / "test" / "integration"),
            f"--junitxml={report}"]
    return _vm_task(task_test_vm_integration.__doc__, argv)
