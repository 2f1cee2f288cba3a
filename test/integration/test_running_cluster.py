"""Checks a running test cluster from the outside (doit test_vm_integration).

Needs `doit test_vm` first: with no cluster up, every test fails saying so.
Each test uses the `cluster` fixture of clusteros.vm.checks, as a user's own checks do.
"""

import json


def test_systemd_is_pid_1(cluster):
    for node in cluster:
        assert node.succeed("ps -p 1 -o comm=").strip() == "systemd"


def test_each_node_has_its_name_from_the_spec(cluster):
    for node in cluster:
        assert node.succeed("hostname").strip() == node.name


def test_node_agent_is_running(cluster):
    for node in cluster:
        node.wait_for_unit("node-agent.service")


def test_wireguard_and_slurm_are_installed(cluster):
    for node in cluster:
        node.succeed("command -v wg", "test -x /usr/sbin/slurmd", "test -x /usr/sbin/slurmctld", "command -v sinfo")


def _agent_status(node) -> dict:
    return json.loads(node.succeed("clusteros-node status --json"))


def test_k3s_runs_where_the_image_carries_it(cluster):
    for node in cluster:
        def k3s_state() -> str:
            return _agent_status(node)["k3s"]
        if not cluster.spec["services"]["k3s"]["enabled"]:
            assert k3s_state() == "disabled"
            continue
        node.succeed("test -x /usr/local/bin/k3s")
        # The agent starts it once the node knows its role.
        node.retry(lambda: _equal(k3s_state(), "active", f"{node.name}: k3s"), timeout=25)


def _equal(value, expected, what: str) -> None:
    assert value == expected, f"{what} is {value!r}, not {expected!r}"


def test_kernel_log_is_readable(cluster):
    for node in cluster:
        node.succeed("sudo dd if=/dev/kmsg of=/dev/null bs=8192 count=3 status=none")


def test_every_node_reaches_every_other_on_the_lan(cluster):
    addresses = {node.name: _agent_status(node)["lan_address"].split("/")[0] for node in cluster}
    for node in cluster:
        for other, address in addresses.items():
            if other != node.name:
                node.succeed(f"ping -c 1 -W 5 {address}")
