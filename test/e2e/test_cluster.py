"""The 3-node test cluster, launched through doit as a user does."""

import os
import signal
import time

import pytest

from clusteros.vm import cluster

from .conftest import DIST, doit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def running(image, spec):
    doit("test_vm", timeout=1500)
    yield spec
    out = doit("vm_clean", check=False)
    assert out.returncode == 0


def pids() -> dict[str, int]:
    state = cluster.load_state()
    return {n["name"]: cluster.machine(cluster.VMNode(**n)).pid() for n in state["nodes"]}


def test_status_shows_every_node_running_and_reachable(running):
    out = doit("vm_status")
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("node")]
    assert [r[0] for r in rows[1:]] == ["node1", "node2", "node3"]
    assert all(r[1] == "running" and r[2] == "yes" for r in rows[1:]), out.stdout


def test_integration_suite_passes(running):
    doit("test_vm_integration", timeout=600)
    assert (DIST / "reports" / "integration.xml").exists()


def node_sh(spec, number: int, command: str, timeout: float = 90) -> str:
    node = [cluster.VMNode(**n) for n in cluster.load_state()["nodes"]][number - 1]
    out = cluster.ssh_run(spec, node, ["sh", "-c", command], timeout=timeout)
    assert out.returncode == 0, f"node{number}: {command!r} exited {out.returncode}\n{out.stdout}{out.stderr}"
    return out.stdout.strip()


def eventually(check, timeout: float, every: float = 5.0):
    """Retry `check` until it stops raising AssertionError; the cluster forms by itself, in its own time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(every)


def agent_status(spec, number: int) -> dict:
    import json
    return json.loads(node_sh(spec, number, "clusteros-node status --json || true"))


def test_every_node_lists_three_live_members(running):
    def check():
        for number in (1, 2, 3):
            members = [m["name"] for m in agent_status(running, number)["members"] if m["live"]]
            assert members == ["node1", "node2", "node3"], (number, members)
    eventually(check, 180)


def test_wireguard_mesh_has_two_peers_with_recent_handshakes(running):
    def check():
        for number in (1, 2, 3):
            dump = node_sh(running, number, "sudo wg show wg0 dump").splitlines()[1:]
            assert len(dump) == 2, (number, dump)
            now = int(node_sh(running, number, "date +%s"))
            for peer in dump:
                handshake = int(peer.split("\t")[4])
                assert handshake and now - handshake < 120, (number, peer)
    eventually(check, 180)
    for number, other in ((1, "10.99.0.2"), (2, "10.99.0.3"), (3, "10.99.0.1")):
        node_sh(running, number, f"ping -c 1 -W 5 {other}")


def test_sinfo_shows_three_idle_nodes_and_srun_spans_them(running):
    def idle():
        lines = node_sh(running, 1, "sinfo --noheader --Node --format='%N %t'").splitlines()
        assert sorted(lines) == ["node1 idle", "node2 idle", "node3 idle"], lines
    eventually(idle, 300)
    names = node_sh(running, 1, "srun -N3 hostname", timeout=120).split()
    assert sorted(names) == ["node1", "node2", "node3"]


def standin_record(spec, number: int) -> dict:
    """What the K3s stand-in (test/e2e/k3s_standin.py) on that node was started with, and saw."""
    import json
    return json.loads(node_sh(spec, number, "cat /run/k3s-standin.json"))


def test_k3s_runs_in_each_role_and_the_agents_join_the_server_over_wg0(running):
    statuses = {number: agent_status(running, number) for number in (1, 2, 3)}
    controller = next(n for n, s in statuses.items() if s["role"] == "controller")
    server_ip = statuses[controller]["wg_address"]
    workers = {n: s["wg_address"] for n, s in statuses.items() if n != controller}

    def check():
        for number in (1, 2, 3):
            assert agent_status(running, number)["k3s"] == "active", number
        server = standin_record(running, controller)
        assert server["mode"] == "server" and server["argv"][server["argv"].index("--node-ip") + 1] == server_ip
        # Each agent came in from its own wg0 address, with the token the server derived on its own.
        assert sorted(server["agents"]) == sorted(workers.values()), server
        for number, wg_ip in workers.items():
            agent = standin_record(running, number)
            assert agent["mode"] == "agent" and agent["answer"] == "welcome", (number, agent)
            argv = agent["argv"]
            assert argv[argv.index("--server") + 1] == f"https://{server_ip}:6443"
            assert argv[argv.index("--node-ip") + 1] == wg_ip and argv[argv.index("--flannel-iface") + 1] == "wg0"
    eventually(check, 180)
    out = node_sh(running, controller, "clusteros-node status")
    assert "k3s: active" in out


def test_a_forged_announcement_is_not_a_member(running):
    forge = ("import json,socket,time,hmac,hashlib;"
             "p=json.dumps({'cluster':'democluster','name':'intruder','index':9,'lan_ip':'10.42.0.99',"
             "'wg_ip':'10.99.0.9','wg_pubkey':'x','wg_port':51820,'cpus':1,'memory_mb':1,'boot_id':'b',"
             "'ts':time.time(),'nonce':'00'}).encode();"
             "k=b'wrong key'*4;"
             "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1);"
             "[s.sendto(b'COS1'+hmac.new(k,p,hashlib.sha256).digest()+p,('10.42.0.255',7946)) for _ in range(3)]")
    node_sh(running, 3, f'python3 -c "{forge}"')
    time.sleep(5)
    for number in (1, 2):
        status = agent_status(running, number)
        assert "intruder" not in [m["name"] for m in status["members"]]
        assert status["dropped_packets"] >= 1
    assert "dropped a packet from 10.42.0.13: bad MAC" in node_sh(running, 1, "sudo journalctl -u node-agent --no-pager")


def test_a_node_powered_off_goes_down_in_sinfo_and_returns_to_idle(running):
    node3 = [cluster.VMNode(**n) for n in cluster.load_state()["nodes"]][2]
    assert cluster.machine(node3).powerdown(timeout=240), "node3 did not shut down on ACPI power-down"

    def down():
        state = node_sh(running, 1, "sinfo --noheader --Node --nodes=node3 --format='%t'")
        assert state.startswith("down") or state in ("idle*", "unk*"), state
        assert state.startswith("down"), state
    eventually(down, 240)
    doit("test_vm", timeout=900)

    def idle():
        assert node_sh(running, 1, "sinfo --noheader --Node --nodes=node3 --format='%t'") == "idle"
    eventually(idle, 300)


def test_second_test_vm_restarts_nothing(running):
    before = pids()
    out = doit("test_vm")
    assert "already running on this image: node1, node2, node3" in out.stderr
    assert pids() == before


def test_vm_info_names_ports_pids_and_logs(running):
    out = doit("vm_info").stdout
    for needle in ("127.0.0.1:2223", "127.0.0.1:5902", "serial log:", "overlay.qcow2", "qmp.sock"):
        assert needle in out


def test_a_killed_node_shows_down_with_its_log_and_comes_back(running, spec):
    victim = pids()["node2"]
    os.kill(victim, signal.SIGKILL)
    time.sleep(1)
    out = doit("vm_status", check=False)
    assert out.returncode != 0
    assert "node2 is down. Last lines of" in out.stdout
    assert "serial.log" in out.stdout
    again = doit("test_vm", timeout=900)
    assert "node2: QEMU had died" in again.stderr
    assert "already running on this image: node1, node3" in again.stderr
    assert pids()["node2"] not in (None, victim)


def test_shell_runs_one_command_and_returns_its_status(running):
    from clusteros.cli import main
    assert main(["shell", "1", "--", "true"]) == 0
    assert main(["shell", "1", "--", "sh", "-c", "exit 7"]) == 7
    assert main(["shell", "1", "--", "sh", "-c", "echo 'two words'; test -n \"$0\""]) == 0
    assert "node2" in doit("vm_shell", "node=2", "cmd=hostname").stdout


def test_stop_then_clean_leaves_no_process_socket_or_overlay(running):
    qemu_pids = list(pids().values())
    doit("vm_stop")
    for pid in qemu_pids:
        assert not os.path.exists(f"/proc/{pid}/cmdline") or b"qemu" not in open(f"/proc/{pid}/cmdline", "rb").read()
    assert not list((DIST / "vm").rglob("*.sock")) and not list((DIST / "vm").rglob("*.pid"))
    assert list((DIST / "vm").rglob("overlay.qcow2")), "vm_stop keeps the overlays"
    doit("vm_clean")
    assert not (DIST / "vm").exists()
