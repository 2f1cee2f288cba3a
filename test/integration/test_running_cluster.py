"""Checks a running test cluster from the outside (doit test_vm_integration).

Needs `doit test_vm` first: with no cluster up, every test fails saying so.
"""

import pytest

from clusteros.spec import load_spec
from clusteros.vm import cluster


@pytest.fixture(scope="module")
def nodes():
    state = cluster.load_state()
    assert state, "no test cluster is running: start one with `doit test_vm`"
    return [cluster.VMNode(**n) for n in state["nodes"]]


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def run(spec, node, command: str) -> str:
    out = cluster.ssh_run(spec, node, ["sh", "-c", command], timeout=60)
    assert out.returncode == 0, f"{node.name}: {command!r} exited {out.returncode}\n{out.stdout}{out.stderr}"
    return out.stdout.strip()


def test_systemd_is_pid_1(spec, nodes):
    for node in nodes:
        assert run(spec, node, "ps -p 1 -o comm=") == "systemd"


def test_each_node_has_its_name_from_the_spec(spec, nodes):
    for node in nodes:
        assert run(spec, node, "hostname") == node.name


def test_node_agent_is_running(spec, nodes):
    for node in nodes:
        assert run(spec, node, "systemctl is-active node-agent.service") == "active"


def test_wireguard_and_slurm_are_installed(spec, nodes):
    for node in nodes:
        run(spec, node, "command -v wg && test -x /usr/sbin/slurmd && test -x /usr/sbin/slurmctld && command -v sinfo")


def test_k3s_is_installed_or_reported_as_not_provided(spec, nodes):
    for node in nodes:
        state = run(spec, node, "test -x /usr/local/bin/k3s && echo installed || "
                                "/usr/local/bin/clusteros-node status --json")
        assert state == "installed" or '"not provided"' in state


def test_kernel_log_is_readable(spec, nodes):
    for node in nodes:
        run(spec, node, "sudo dd if=/dev/kmsg of=/dev/null bs=8192 count=3 status=none")


def test_every_node_reaches_every_other_on_the_lan(spec, nodes):
    for node in nodes:
        for other in nodes:
            if other is not node:
                run(spec, node, f"ping -c 1 -W 5 {other.lan_address}")
