"""The 3-node test cluster, launched through doit as a user does, checked through node handles."""

import json
import os
import signal
import time

import pytest

from .conftest import DIST, ROOT, agent_status, doit, pids, statuses

pytestmark = pytest.mark.e2e

AGENT_CODE = "/usr/local/lib/clusteros/node-agent"


def payload_for(name: str, index: int, lan_ip: str, wg_ip: str, **extra) -> dict:
    import base64
    return {"cluster": "democluster", "generation": 1, "name": name, "index": index, "lan_ip": lan_ip,
            "wg_ip": wg_ip, "wg_pubkey": base64.b64encode(b"k" * 32).decode(), "wg_port": 51820, "cpus": 1,
            "memory_mb": 100, "boot_id": "0b5e6a3c-64b0-4d7f-9d1c-2b8f3c1a4e5d", "seq": 10**12, "controller": None,
            "slurm_nodes": []} | extra


def send(node, packets_expression: str, count: int = 3) -> None:
    """Broadcast on the cluster LAN, from `node`, what a Python expression makes (with the node-agent's own
    modules, and `cred`: the node's credential as its agent takes it, the highest generation it holds,
    which root can read)."""
    script = f"""
import socket, sys
sys.path.insert(0, "{AGENT_CODE}")
from clusteros_node import credential, messages
cred = credential.load("democluster")[0]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for _ in range({count}):
    packet = {packets_expression}
    for one in (packet if isinstance(packet, list) else [packet]):
        s.sendto(one, ("10.42.0.255", 7946))
"""
    node.succeed(f"sudo python3 -S - <<'EOF'\n{script}\nEOF", timeout=300)


def test_status_shows_every_node_running_and_reachable(running):
    out = doit("vm_status")
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("node")]
    assert [r[0] for r in rows[1:]] == ["node1", "node2", "node3"]
    assert all(r[1] == "running" and r[2] == "yes" for r in rows[1:]), out.stdout


def test_every_node_lists_three_live_members(running):
    def three_live():
        for node in running:
            members = [m["name"] for m in agent_status(node)["members"] if m["live"]]
            assert members == ["node1", "node2", "node3"], (node.name, members)
    running.retry(three_live, 45)


def test_wireguard_mesh_has_two_peers_with_recent_handshakes(running):
    def handshakes():
        for node in running:
            dump = node.succeed("sudo wg show wg0 dump").splitlines()[1:]
            assert len(dump) == 2, (node.name, dump)
            now = int(node.succeed("date +%s"))
            for peer in dump:
                handshake = int(peer.split("\t")[4])
                assert handshake and now - handshake < 120, (node.name, peer)
    running.retry(handshakes, 45)
    for node, other in (("node1", "10.99.0.2"), ("node2", "10.99.0.3"), ("node3", "10.99.0.1")):
        running[node].succeed(f"ping -c 1 -W 5 {other}")


def test_sinfo_shows_three_idle_nodes_and_srun_spans_them(running):
    node1 = running["node1"]
    node1.wait_until_succeeds("test \"$(sinfo --noheader --Node --format='%N %t' | sort | tr '\\n' ' ')\" = "
                              "'node1 idle node2 idle node3 idle '", timeout=75)
    names = node1.succeed("srun -N3 hostname", timeout=30).split()
    assert sorted(names) == ["node1", "node2", "node3"]


def standin_record(node) -> dict:
    """What the K3s stand-in (test/e2e/k3s_standin.py) on that node was started with, and saw."""
    return json.loads(node.succeed("cat /run/k3s-standin.json"))


def test_k3s_runs_in_each_role_and_the_agents_join_the_server_over_wg0(running):
    by_name = statuses(running)
    controller = running[next(n for n, s in by_name.items() if s["role"] == "controller")]
    server_ip = by_name[controller.name]["wg_address"]
    workers = {running[n]: s["wg_address"] for n, s in by_name.items() if n != controller.name}

    def joined():
        for node in running:
            assert agent_status(node)["k3s"] == "active", node.name
        server = standin_record(controller)
        assert server["mode"] == "server" and server["argv"][server["argv"].index("--node-ip") + 1] == server_ip
        # Each agent came in from its own wg0 address, with the token the server derived on its own.
        assert sorted(server["agents"]) == sorted(workers.values()), server
        for node, wg_ip in workers.items():
            agent = standin_record(node)
            assert agent["mode"] == "agent" and agent["answer"] == "welcome", (node.name, agent)
            argv = agent["argv"]
            assert argv[argv.index("--server") + 1] == f"https://{server_ip}:6443"
            assert argv[argv.index("--node-ip") + 1] == wg_ip and argv[argv.index("--flannel-iface") + 1] == "wg0"
    running.retry(joined, 45)
    assert "k3s: active" in controller.succeed("clusteros-node status")


def test_a_forged_announcement_is_not_a_member(running):
    """Signed with a key that is not the cluster's: dropped by every member, and said in its journal."""
    status = running.retry(lambda: agent_status(running["node1"]), 60)
    generation = status["credential"]["generation"]   # rotated by earlier runs, maybe
    forged = payload_for("intruder", 9, "10.42.0.13", "10.99.0.9", generation=generation)
    send(running["node3"], f"messages.encode_announcement({forged!r}, {generation}, b'wrong key' * 4)")

    def dropped(name: str) -> None:   # the agent reads packets between its ticks, which may be slow
        status = agent_status(running[name])
        assert "intruder" not in [m["name"] for m in status["members"]]
        assert status["dropped_packets"] >= 1, f"{name}: nothing dropped yet"
    for name in ("node1", "node2"):
        running.retry(lambda: dropped(name), 60)
    assert "dropped a packet from 10.42.0.13: bad MAC" in running["node1"].succeed(
        "sudo journalctl -u node-agent --no-pager")


def test_second_test_vm_restarts_nothing(running):
    before = pids()
    out = doit("test_vm")
    assert "already running on this image: node1, node2, node3" in out.stderr
    assert pids() == before


def test_vm_info_names_ports_pids_and_logs(running):
    out = doit("vm_info").stdout
    for needle in ("127.0.0.1:2223", "boot: direct kernel boot (democluster.vmlinuz)", "serial log:",
                   "overlay.qcow2", "qmp.sock"):
        assert needle in out


def test_the_running_cluster_belongs_to_its_owner_alone(running):
    """dist/vm and each node's folder (overlay, console log, sockets) are 0700; the state file 0600."""
    for folder in [DIST / "vm", *[(DIST / "vm" / name) for name in running.names]]:
        assert oct(folder.stat().st_mode & 0o777) == "0o700", folder
    assert oct((DIST / "vm" / "cluster.json").stat().st_mode & 0o777) == "0o600"


def test_a_test_vm_holds_the_credential_it_was_handed_in_ram_only(running):
    """`doit test_vm` hands each node the credential through QEMU's fw_cfg, as a systemd credential:
    on the node it is in /run (RAM) only, never written to its disk. (A newer generation, handed on
    by a rotation, the agent keeps on disk, to come back with after a reboot: test_cluster_trust.py.)"""
    for node in running:
        handed = node.succeed("sudo grep -o '\"generation\": *[0-9]*' /run/credentials/@system/clusteros-credential")
        if int(handed.split(":")[1]) == agent_status(node)["credential"]["generation"]:
            node.succeed("test ! -e /var/lib/clusteros/credential.json")
        else:
            node.succeed("sudo test -s /var/lib/clusteros/credential.json")


def test_a_killed_node_shows_down_goes_down_in_sinfo_and_comes_back_idle(running):
    """QEMU killed from outside: vm_status says so with the serial log, SLURM marks the node down, and
    `doit test_vm` restarts it, after which it is back in SLURM. (The graceful ACPI power-down is what
    vm_stop does: test_stop_then_clean.)"""
    node1 = running["node1"]
    victim = pids()["node2"]
    os.kill(victim, signal.SIGKILL)
    time.sleep(1)
    out = doit("vm_status", check=False)
    assert out.returncode != 0
    assert "node2 is down. Last lines of" in out.stdout
    assert "serial.log" in out.stdout
    node1.retry(lambda: _in_state(node1, "node2", "down"), 60)
    again = doit("test_vm", timeout=900)
    assert "node2: QEMU had died" in again.stderr
    assert "already running on this image: node1, node3" in again.stderr
    assert pids()["node2"] not in (None, victim)
    node1.retry(lambda: _in_state(node1, "node2", "idle", exact=True), 75)


def _in_state(node, name: str, state: str, exact: bool = False) -> None:
    """`name`'s state in sinfo, as `node` sees it; on failure, say what slurmctld said lately."""
    seen = node.execute(f"sinfo --noheader --Node --nodes={name} --format='%t'").stdout.strip()
    assert (seen == state) if exact else seen.startswith(state), (
        f"{name} is {seen!r} in sinfo, not {state!r}; slurmctld lately:\n"
        + node.execute("sudo journalctl -u slurmctld --no-pager -n 15").stdout)


def test_shell_runs_one_command_and_returns_its_status(running):
    from clusteros.cli import main
    assert main(["shell", "1", "--", "true"]) == 0
    assert main(["shell", "1", "--", "sh", "-c", "exit 7"]) == 7
    assert main(["shell", "1", "--", "sh", "-c", "echo 'two words'; test -n \"$0\""]) == 0
    assert "node2" in doit("vm_shell", "--node", "2", "--cmd", "hostname").stdout


def documented_check() -> str:
    """The complete check file docs/vm-testing.md shows a user: it must run as shown."""
    text = (ROOT / "docs" / "vm-testing.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_integration_suite_passes_and_runs_a_users_own_checks(running, tmp_path):
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "test_my_cluster.py").write_text(documented_check())
    (checks / "test_failing.py").write_text("def test_this_one_fails(cluster):\n    cluster[2].succeed('false')\n")
    out = doit("test_vm_integration", "--tests", str(checks), check=False, timeout=600)
    assert out.returncode != 0, "a failing check fails the task"
    results = [line for line in out.stdout.splitlines() if "::" in line and (" PASSED" in line or " FAILED" in line)]
    built_in = [line for line in results if "test_running_cluster.py" in line]
    assert built_in and all(" PASSED" in line for line in built_in), "\n".join(built_in)
    assert (DIST / "reports" / "integration.xml").exists()
    mine = [line for line in results if "test_my_cluster.py" in line]
    assert len(mine) == 3 and all(" PASSED" in line for line in mine), "\n".join(mine)
    assert "test_failing.py::test_this_one_fails FAILED" in out.stdout
    assert "node2: 'false' exited 1 (expected exit 0)" in out.stdout
