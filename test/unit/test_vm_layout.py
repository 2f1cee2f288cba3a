"""Test-cluster layout and the checks made before launching (no VM is started here)."""

import os
import socket
from pathlib import Path

import pytest

from clusteros.errors import UsageError
from clusteros.spec import load_spec, check_spec_data
from clusteros.vm import cluster, layout, ports
from clusteros.vm.ssh import SSHTarget

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec():
    return load_spec(ROOT / "cluster.yaml")


def test_five_nodes_get_deterministic_macs_ports_and_addresses(spec):
    nodes = layout.layout(spec, 5)
    assert [n.name for n in nodes] == ["node1", "node2", "node3", "node4", "node5"]
    assert [n.ssh_port for n in nodes] == [2223, 2224, 2225, 2226, 2227]
    assert nodes[3].lan_address == "10.42.0.14"
    assert nodes[4].lan_mac == spec["node_naming"]["mac_prefix"] + ":05"
    assert len({n.lan_mac for n in nodes} | {n.uplink_mac for n in nodes}) == 10
    assert nodes == layout.layout(spec, 5), "the same spec gives the same layout"


def test_node_overrides_from_the_spec_list(tmp_path):
    spec = check_spec_data(b"cluster: {name: lab}\nnodes: [{name: big, memory: 4096, cpus: 2}, {name: small}]\n",
                           "t", tmp_path)
    big, small = layout.layout(spec, 2, host_cpus=8)
    assert (big.name, big.memory, big.cpus) == ("big", 4096, 2)
    assert (small.memory, small.cpus) == (1024, 4)


def test_auto_cpus_share_the_hosts_cores_among_the_vms_one_at_least(spec):
    assert spec["vm"]["cpus"] == "auto"
    assert [n.cpus for n in layout.layout(spec, 1, host_cpus=2)] == [2]
    assert [n.cpus for n in layout.layout(spec, 3, host_cpus=2)] == [1, 1, 1]
    assert [n.cpus for n in layout.layout(spec, 3, host_cpus=8)] == [2, 2, 2]
    assert [n.cpus for n in layout.layout({**spec, "vm": {**spec["vm"], "cpus": 3}}, 1, host_cpus=2)] == [3]


def test_node_count_from_the_command_line(spec):
    assert layout.vm_count(spec, None) == 3
    assert layout.vm_count(spec, "5") == 5
    for bad in ("five", "0", "17"):
        with pytest.raises(UsageError):
            layout.vm_count(spec, bad)


def test_a_listed_cluster_cannot_run_more_vms_than_it_lists(tmp_path):
    spec = check_spec_data(b"cluster: {name: lab}\nnodes: [{name: a}, {name: b}]\n", "t", tmp_path)
    with pytest.raises(UsageError, match="lists 2 nodes"):
        layout.vm_count(spec, "3")


def test_a_taken_port_is_named_with_its_program(spec):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        owner = ports.port_owner(port)
        assert owner is not None and f"(pid {os.getpid()})" in owner
        node = layout.layout(spec, 1)[0]
        node = layout.VMNode(**{**node.__dict__, "ssh_port": port})
        with pytest.raises(UsageError, match=f"SSH port {port} is taken by .*pid {os.getpid()}"):
            cluster.check_ports([node])
    finally:
        holder.close()
    assert ports.port_owner(port) is None


def test_ssh_runs_one_command_line_on_the_node(spec):
    argv = SSHTarget(2223, "admin", Path("/k")).argv("echo 'a b'; exit 3")
    assert argv[-2:] == ["--", "echo 'a b'; exit 3"], "the login shell on the node gets the line as written"
    assert "StrictHostKeyChecking=no" in argv and "admin@127.0.0.1" in argv and "BatchMode=yes" in argv
    assert "-t" in SSHTarget(2223, "admin", Path("/k")).argv(interactive=True)


def test_the_storage_node_stops_after_the_members_that_mount_its_home(spec):
    nodes = layout.layout(spec, 4)
    assert [[n.name for n in wave] for wave in cluster.stop_order(spec, nodes)] == \
        [["node2", "node3", "node4"], ["node1"]]
    spec["services"]["slurm"]["storage_node"] = "node3"
    assert [[n.name for n in wave] for wave in cluster.stop_order(spec, nodes)] == \
        [["node1", "node2", "node4"], ["node3"]]
    spec["services"]["slurm"]["enabled"] = False
    assert [[n.name for n in wave] for wave in cluster.stop_order(spec, nodes)] == \
        [["node1", "node2", "node3", "node4"]], "no shared home: all at once"


def test_a_running_node_whose_size_changed_restarts_and_the_rest_stay(spec, tmp_path, monkeypatch):
    """`doit test_vm --nodes 1` on 2 cores gives node1 both; a 3-node cluster then gives each one."""
    monkeypatch.setenv("CLUSTEROS_DIST", str(tmp_path))
    was = layout.layout(spec, 2, host_cpus=4)                  # 2 CPUs each
    (tmp_path / "vm").mkdir()
    cluster.state_file().write_text(cluster.json.dumps({
        "image_sha256": "i", "boot": "b", "accel": "kvm", "nodes": [n.__dict__ for n in was]}))
    stopped = []
    monkeypatch.setattr(cluster.Machine, "is_alive", lambda self: True)
    monkeypatch.setattr(cluster.Machine, "stop", lambda self, timeout: stopped.append(self.name))
    boot = type("Boot", (), {"describe": lambda self: "b"})()
    cluster._stop_what_does_not_belong(spec, layout.layout(spec, 2, host_cpus=4), "i", boot)
    assert stopped == [], "nothing changed: nothing restarts"
    cluster._stop_what_does_not_belong(spec, layout.layout(spec, 3, host_cpus=4), "i", boot)
    assert stopped == ["node1", "node2"], "1 CPU each now: both restart"
    stopped.clear()
    cluster._stop_what_does_not_belong(spec, layout.layout(spec, 1, host_cpus=4)[:1], "i", boot)
    assert stopped == ["node1", "node2"], "node1 gets 4 CPUs now, node2 is not in a 1-node cluster"
