"""Bad input: every broken spec exits 2 naming the place, with no traceback and nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from clusteros import cli

ROOT = Path(__file__).resolve().parents[2]
OK = "cluster: {name: demo}\n"

# (id, spec text, text that must appear in the report)
BROKEN = [
    ("address-out-of-range", OK + "nodes:\n  - name: a\n    address: 999.1.1.1\n", "nodes[0].address (line 4): '999.1.1.1' is not an IPv4 address\n"),
    ("gateway-out-of-range", OK + "network: {lan: {gateway: 10.42.0.300}}\n", "network.lan.gateway (line 2): '10.42.0.300' is not an IPv4 address"),
    ("gateway-off-the-lan", OK + "network: {lan: {gateway: 10.43.0.1}}\n", "network.lan.gateway (line 2): 10.43.0.1 is not a host address in 10.42.0.0/24"),
    ("subnet-out-of-range", OK + "network: {wireguard: {subnet: 10.300.0.0/24}}\n", "network.wireguard.subnet (line 2): '10.300.0.0/24' is not an IPv4 subnet"),
    ("bad-hostname", OK + "nodes:\n  - name: a\n  - name: b\n  - name: Node_2\n", "nodes[2].name (line 5): 'Node_2' is not a valid hostname"),
    ("unknown-key-hint", OK + "image: {packges: [vim]}\n", "image.packges (line 2): unknown key\n    hint: did you mean 'packages'?"),
    ("unknown-top-key", OK + "netwrok: {}\n", "netwrok (line 2): unknown key\n    hint: did you mean 'network'?"),
    ("distro-typo", OK + "image: {distro: debain}\n", "image.distro (line 2): 'debain' is not one of"),
    ("disk-size-unit", OK + "image: {disk_size: 4T}\n", "image.disk_size (line 2): '4T' is not a size"),
    ("vm-memory-range", OK + "vm: {memory: 10}\n", "vm.memory (line 2): 10 is out of range"),
    ("node-count-zero", OK + "nodes: {count: 0}\n", "nodes.count (line 2): 0 is out of range"),
    ("nodes-scalar", OK + "nodes: 3\n", "nodes (line 2): 3 is neither a node count nor a node list"),
    ("duplicate-node", OK + "nodes: [{name: a}, {name: a}]\n", "nodes[1].name (line 2): 'a' is already used by nodes[0]"),
    ("duplicate-mac", OK + "nodes: [{name: a, mac: '52:54:00:00:00:01'}, {name: b, mac: '52:54:00:00:00:01'}]\n", "nodes[1].mac"),
    ("bad-mac", OK + "nodes: [{name: a, mac: 'AA-BB'}]\n", "nodes[0].mac (line 2): 'AA-BB' is not a MAC address"),
    ("bad-role", OK + "nodes: [{name: a, role: master}]\n", "nodes[0].role (line 2): 'master' is not one of"),
    ("address-outside-lan", OK + "nodes: [{name: a, address: 192.168.1.5}]\n", "nodes[0].address (line 2): 192.168.1.5 is not a host address in 10.42.0.0/24"),
    ("lan-host-bits", OK + "network: {lan: {subnet: 10.42.0.1/24}}\n", "network.lan.subnet (line 2): '10.42.0.1/24' is not an IPv4 subnet (10.42.0.1/24 has host bits set)"),
    ("lan-too-small", OK + "network: {lan: {subnet: 10.42.0.0/29}}\n", "network.lan.subnet (line 2): 10.42.0.0/29 is too small for 3 nodes"),
    ("subnets-overlap", OK + "network: {wireguard: {subnet: 10.42.0.0/16}}\n", "network.wireguard.subnet (line 2): overlaps network.lan.subnet"),
    ("wg-port", OK + "network: {wireguard: {port: 70000}}\n", "network.wireguard.port (line 2): 70000 is out of range"),
    ("wifi-inline-psk", OK + "network: {wifi: {ssid: lab, psk: hunter2}}\n", "network.wifi.psk (line 2): unknown key\n    hint: a WiFi key never goes in cluster.yaml"),
    ("wifi-no-psk-source", OK + "network: {wifi: {ssid: lab}}\n", "network.wifi (line 2): needs exactly one of psk_env or psk_file"),
    ("wifi-ssid-bytes", OK + "network: {wifi: {ssid: ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ, psk_env: LAB_PSK}}\n", "network.wifi.ssid (line 2): 34 bytes in UTF-8: an SSID has at most 32"),
    ("wifi-psk-file-missing", OK + "network: {wifi: {ssid: lab, psk_file: /nonexistent/psk}}\n", "network.wifi.psk_file (line 2): '/nonexistent/psk' does not exist"),
    ("k3s-url-without-sha", OK + "services: {k3s: {url: 'http://example.invalid/k3s'}}\n", "services.k3s.sha256 (line 2): is required with url or file"),
    ("k3s-bad-sha", OK + "services: {k3s: {sha256: xyz}}\n", "services.k3s.sha256 (line 2): 'xyz' is not a sha256 hex digest"),
    ("k3s-url-and-file", OK + f"services: {{k3s: {{url: 'http://x.invalid/k', file: {__file__}, sha256: '{'a' * 64}'}}}}\n", "services.k3s (line 2): gives both url and file"),
    ("partition-unknown-node", OK + "services: {slurm: {partitions: [{name: main, nodes: [node1, nod2]}]}}\n", "services.slurm.partitions[0].nodes[1] (line 2): no node is named 'nod2'\n    hint: did you mean 'node2'?"),
    ("storage-node-unknown", OK + "services: {slurm: {storage_node: nod3}}\n", "services.slurm.storage_node (line 2): no node is named 'nod3'\n    hint: did you mean 'node3'?"),
    ("mpi-network-typo", OK + "services: {slurm: {mpi_network: wg1}}\n", "services.slurm.mpi_network (line 2): 'wg1' is not one of 'wg0', 'lan'"),
    ("two-default-partitions", OK + "services: {slurm: {partitions: [{name: a, default: true}, {name: b, default: true}]}}\n", "services.slurm.partitions[1].default"),
    ("ssh-key-garbage", OK + "image: {users: [{name: bob, ssh_keys: ['not a key']}]}\n", "image.users[0].ssh_keys[0] (line 2): 'not a key' is not an SSH public key"),
    ("root-user", OK + "image: {users: [{name: root}]}\n", "image.users[0].name (line 2): root cannot log in over SSH"),
    ("firmware-unknown", OK + "image: {firmware: [nvidia]}\n", "image.firmware[0] (line 2): 'nvidia' is not one of 'realtek', 'iwlwifi'"),
    ("accel-typo", OK + "vm: {accel: kmv}\n", "vm.accel (line 2): 'kmv' is not one of 'auto', 'kvm', 'tcg'\n    hint: did you mean 'kvm'?"),
    ("type-mismatch", OK + "vm: {memory: lots}\n", "vm.memory (line 2): 'lots' should be an integer, not a string"),
    ("cpus-neither", OK + "vm: {cpus: two}\n", "vm.cpus (line 2): 'two' is neither an integer from 1 to 64 nor 'auto'"),
    ("cpus-zero", OK + "vm: {cpus: 0}\n", "vm.cpus (line 2): 0 is neither an integer from 1 to 64 nor 'auto'"),
    ("vm-nodes-over-list", OK + "nodes: [{name: a}]\nvm: {nodes: 3}\n", "vm.nodes (line 3): 3 VMs but only 1 nodes are listed"),
    ("missing-name", "cluster: {}\n", "cluster.name (line 1): is required"),
    ("secret-file-missing", "cluster: {name: a, secret_file: /nope/secret}\n", "cluster.secret_file (line 1): '/nope/secret' does not exist"),
    ("not-a-mapping", "- just\n- a list\n", "the spec must be a mapping"),
    ("duplicate-key", OK + "cluster: {name: other}\n", "duplicate key 'cluster' (first on line 1)"),
    ("yaml-syntax", "cluster: [1\n", "not valid YAML"),
    ("python-tag", "cluster: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("long-name", "cluster: {name: " + "a" * 70 + "}\n", "cluster.name (line 1): '" + "a" * 70 + "' is not a valid hostname"),
]


@pytest.mark.parametrize("name,text,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_spec_exits_2_naming_the_place(name, text, expected, tmp_path, capsys, monkeypatch):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"], "nothing may be written"


def test_all_problems_are_reported_at_once(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: {name: Bad_Name}\nimage: {distro: arch, disk_size: huge}\nvm: {memory: 1}\n")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "4 problems" in err
    for place in ("cluster.name", "image.distro", "image.disk_size", "vm.memory"):
        assert place in err


def test_non_utf8_is_refused_with_its_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"cluster:\n  name: caf\xe9\n")
    assert cli.main(["validate", str(path)]) == 2
    assert "(line 2): byte 20 is not UTF-8" in capsys.readouterr().err


def test_alias_bomb_is_refused_quickly(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    import time
    started = time.monotonic()
    assert cli.main(["validate", str(path)]) == 2
    assert time.monotonic() - started < 2
    assert "values once aliases are expanded" in capsys.readouterr().err


def test_huge_file_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("cluster: {name: a}\n# " + "x" * (2 * 1024 * 1024) + "\n")
    assert cli.main(["validate", str(path)]) == 2
    assert "the limit is 1048576" in capsys.readouterr().err


def test_deep_nesting_is_refused(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("cluster: " + "[" * 200 + "]" * 200 + "\n")
    assert cli.main(["validate", str(path)]) == 2
    assert "nested deeper than" in capsys.readouterr().err


def test_missing_file_names_the_fix(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_doit_with_a_broken_spec_exits_2_and_builds_nothing(tmp_path):
    spec = tmp_path / "cluster.yaml"
    spec.write_text("cluster: {name: Bad_Name}\n")
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "CLUSTEROS_SPEC": str(spec), "CLUSTEROS_DIST": str(tmp_path / "dist"),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "--dir", str(ROOT), "validate"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stderr
    assert "cluster.name (line 1): 'Bad_Name' is not a valid hostname" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "dist" / "spec.json").exists()


def test_cli_validate_ok_prints_a_summary(capsys):
    assert cli.main(["validate", str(ROOT / "cluster.yaml")]) == 0
    assert "ok: cluster 'democluster', 3 nodes (node1, node2, node3)" in capsys.readouterr().out
