"""clusteros-identity, the boot script, on a made-up machine with the table the image build writes.

The table is made by the real build code (customize.install_node_spec); the script runs for
real under /bin/sh with SYS and ROOT pointing at folders, so no NIC of this machine is read
and no hostname is changed.
"""

import json
import subprocess
from pathlib import Path

import pytest

from clusteros import customize
from clusteros.spec import check_spec_data, node_mac, node_view
from clusteros_node import identity

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "images/common/overlay/usr/local/sbin/clusteros-identity"


class Machine:
    def __init__(self, tmp_path: Path, spec_text: str):
        self.root, self.sys = tmp_path / "root", tmp_path / "sys"
        (self.root / "etc").mkdir(parents=True)
        (self.root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        (self.sys / "class" / "net").mkdir(parents=True)
        self.spec = node_view(check_spec_data(spec_text.encode(), "t", tmp_path))
        customize.install_node_spec(self.root, self.spec)

    def nic(self, name: str, mac: str) -> None:
        dev = self.sys / "class" / "net" / name
        (dev / "device").mkdir(parents=True)
        (dev / "address").write_text(mac + "\n")

    def boot(self) -> subprocess.CompletedProcess:
        env = {"SYS": str(self.sys), "ROOT": str(self.root), "TIMEOUT": "3", "SETTLE_CS": "20",
               "PATH": "/usr/bin:/bin"}
        return subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)

    def read(self, path: str) -> str:
        return (self.root / path).read_text()


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path, "cluster: {name: lab}\nnodes: {count: 3}\n")


def test_a_test_vm_takes_its_name_and_lan_address_from_its_mac(machine):
    machine.nic("enp0s3", "52:54:01:aa:bb:02")             # the uplink: not in the table
    machine.nic("enp0s2", node_mac("lab", 2))
    out = machine.boot()
    assert out.returncode == 0, out.stderr
    assert f"this is node2, by the MAC {node_mac('lab', 2)}" in out.stdout
    assert machine.read("etc/hostname") == "node2\n"
    assert "127.0.1.1\tnode2" in machine.read("etc/hosts") and "10.42.0.13\tnode3" in machine.read("etc/hosts")
    unit = machine.read("run/systemd/network/10-clusteros-lan.network")
    assert f"MACAddress={node_mac('lab', 2)}" in unit and "Address=10.42.0.12/24" in unit
    me = json.loads(machine.read("run/clusteros/identity.json"))
    assert me == {"name": "node2", "index": 2, "mac": node_mac("lab", 2), "interface": None,
                  "address": "10.42.0.12/24", "role": "auto"}
    assert identity.load(machine.root / "run/clusteros", machine.sys / "class/net").interface == "enp0s2", \
        "the agent finds the NIC by its MAC"


def test_a_vm_beyond_the_spec_count_is_still_in_the_range(machine):
    machine.nic("ens3", node_mac("lab", 5))
    machine.boot()
    assert machine.read("etc/hostname") == "node5\n"
    assert json.loads(machine.read("run/clusteros/identity.json"))["address"] == "10.42.0.15/24"


def test_a_listed_node_keeps_its_own_name_role_and_address(tmp_path):
    machine = Machine(tmp_path, "cluster: {name: lab}\nnodes:\n  - {name: ctl, role: controller, "
                                "mac: '3c:ec:ef:00:00:01', address: 10.42.0.99}\n")
    machine.nic("eno1", "3c:ec:ef:00:00:01")
    machine.boot()
    me = json.loads(machine.read("run/clusteros/identity.json"))
    assert (me["name"], me["role"], me["address"]) == ("ctl", "controller", "10.42.0.99/24")


def test_a_machine_the_spec_does_not_know_is_named_by_its_machine_id_and_left_to_dhcp(machine):
    machine.nic("eno1", "3c:ec:ef:11:22:33")
    out = machine.boot()
    assert "this is node-01234567, a machine the spec does not list" in out.stdout
    assert machine.read("etc/hostname") == "node-01234567\n"
    assert "127.0.1.1\tnode-01234567" in machine.read("etc/hosts")
    assert not (machine.root / "run/systemd/network/10-clusteros-lan.network").exists()
    me = json.loads(machine.read("run/clusteros/identity.json"))
    assert (me["name"], me["address"], me["mac"]) == ("node-01234567", None, None)


def test_the_table_covers_the_test_vm_range_the_lan_can_hold(tmp_path):
    machine = Machine(tmp_path, "cluster: {name: lab}\nnodes: {count: 2}\nnetwork: {lan: {subnet: 10.42.0.0/27}}\n")
    rows = {p.name for p in (machine.root / "etc/clusteros/identities").iterdir()}
    assert len(rows) == 20 + 1, "a /27 holds 30 hosts: 10 kept for routers, 20 nodes, and the row for strangers"
