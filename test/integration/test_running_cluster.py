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


def test_every_node_reaches_every_other_over_wg0(cluster):
    addresses = {node.name: _agent_status(node)["wg_address"] for node in cluster}
    for node in cluster:
        for other, address in addresses.items():
            if other != node.name:
                node.succeed(f"ping -c 1 -W 5 -I wg0 {address}")


def test_k3s_is_present_where_the_spec_enables_it(cluster):
    wanted = cluster.spec["services"]["k3s"]["enabled"]
    for node in cluster:
        present = node.execute("test -x /usr/local/bin/k3s").status == 0
        assert present == wanted, f"{node.name}: k3s {'missing' if wanted else 'present though disabled'}"


def test_the_cgroup_controllers_kubelet_and_slurm_need_are_delegated(cluster):
    """cgroup v2 alone, with cpu, cpuset, memory and pids enabled for system services (slurmd, k3s)."""
    for node in cluster:
        assert node.succeed("stat -fc %T /sys/fs/cgroup").strip() == "cgroup2fs", f"{node.name}: not cgroup v2"
        for level in ("/sys/fs/cgroup", "/sys/fs/cgroup/system.slice"):
            enabled = set(node.succeed(f"cat {level}/cgroup.subtree_control").split())
            missing = {"cpu", "cpuset", "memory", "pids"} - enabled
            assert not missing, f"{node.name}: {level} does not delegate {sorted(missing)}"


def test_every_node_is_running_with_no_failed_unit(cluster):
    for node in cluster:
        state = node.retry(lambda: _settled(node), timeout=120)
        assert state == "running", f"{node.name} is {state}: " + node.succeed("systemctl --failed --no-legend")


def _settled(node) -> str:
    state = node.execute("systemctl is-system-running").stdout.strip()
    assert state not in ("initializing", "starting"), f"{node.name} is still {state}"
    return state
