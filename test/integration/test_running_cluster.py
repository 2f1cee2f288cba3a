"""Checks a running test cluster from the outside (doit test_vm_integration).

Needs `doit test_vm` first: with no cluster up, every test fails saying so.
"""

import json
import time

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


def k3s_state(spec, node) -> str:
    return json.loads(run(spec, node, "/usr/local/bin/clusteros-node status --json"))["k3s"]


def test_k3s_runs_where_the_image_carries_it(spec, nodes):
    for node in nodes:
        if not spec["services"]["k3s"]["enabled"]:
            assert k3s_state(spec, node) == "disabled"
            continue
        assert run(spec, node, "test -x /usr/local/bin/k3s && echo installed") == "installed"
        deadline = time.monotonic() + 90   # the agent starts it once the node knows its role
        while (state := k3s_state(spec, node)) != "active" and time.monotonic() < deadline:
            time.sleep(5)
        assert state == "active", f"{node.name}: k3s is {state}"


def test_kernel_log_is_readable(spec, nodes):
    for node in nodes:
        run(spec, node, "sudo dd if=/dev/kmsg of=/dev/null bs=8192 count=3 status=none")


def test_every_node_reaches_every_other_on_the_lan(spec, nodes):
    for node in nodes:
        for other in nodes:
            if other is not node:
                run(spec, node, f"ping -c 1 -W 5 {other.lan_address}")
