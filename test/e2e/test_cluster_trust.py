"""A cluster only its owner can join, on the running 3-node cluster (booted once, for test_cluster too).

What a member, a stranger and a clock can and cannot do (docs/security.md): a rotation reaches
every member; a member cannot take another's name; a flood of signed malformed messages changes
nothing; a clock step moves no role; no token shows in a command line; a machine without the
credential (netbooted from node1) waits for the owner's approval, and joins once given it; once
the rotation's grace is over, the old secret is refused. The last test stops and cleans the
cluster. The tests run in this order and depend on it.

The stranger starts netbooting with the module: its boot to the point where it asks (a minute
and more of emulated CPU, much of it waiting on one core) runs while the members' tests do, and
it sees their rotation, flood and clock steps from the LAN as a machine beside a rack would.
"""

import json
import os
import subprocess
import time
from concurrent.futures import Future

import pytest

from clusteros import accel, credentials
from clusteros.cli import main as clusteros
from clusteros.vm import cluster as lifecycle
from clusteros.vm import qemu
from clusteros.vm.layout import layout
from clusteros_node import k3s
from clusteros_node.agent import ROTATION_GRACE, TICK
from clusteros_node.registry import LIVE_SECONDS

from .conftest import DIST, agent_status, doit, forget_everywhere, in_background, live_member, pids, statuses, untouched
from .test_cluster import payload_for, send
from .test_cluster_compute import cpu_count

pytestmark = pytest.mark.e2e


def controller_of(running) -> str:
    seen = {s["controller"] for s in statuses(running).values()}
    assert len(seen) == 1 and None not in seen, seen
    return seen.pop()


# -- rotation (first: changes the secret; its grace runs out while the stranger and the rest run) ------

ROTATED: dict[str, float | int] = {}   # when the rotation was handed on, and the generation before it


def test_a_rotation_reaches_every_member(running, spec):
    before = credentials.generation(spec)
    assert clusteros(["rotate"]) == 0
    ROTATED.update(at=time.monotonic(), before=before)
    new = credentials.generation(spec)
    assert new == before + 1
    running.retry(lambda: _all_at(running, new), 60)
    names = running["node1"].wait_until_succeeds("srun -N3 hostname", timeout=150).split()
    assert sorted(names) == ["node1", "node2", "node3"], "munge keys changed everywhere"


def _all_at(running, generation: int) -> None:
    for node in running:
        assert agent_status(node)["credential"]["generation"] == generation, node.name


# -- a stranger, netbooting from the module's start (its test is below the members') --------

def pxe_set_serving() -> Future:
    """node1 serving the PXE set (`doit pxe`, then `clusteros serve-pxe --boot ram`): started by
    test_cluster_over_wifi.py, so that node1 takes the set (a 275 MB transfer, ~25 s of its CPU)
    while that module's WiFi node boots, or here."""
    return in_background("pxe-set", _serve_pxe)


def _serve_pxe() -> None:
    doit("pxe")
    assert clusteros(["serve-pxe", "--boot", "ram"]) == 0   # through node1, the default member


@pytest.fixture(scope="module", autouse=True)
def netbooting(running, spec):
    """A fourth machine, with an empty disk and no credential (no fw_cfg): it netboots from node1,
    which serves the PXE set (`clusteros serve-pxe --boot ram`: dnsmasq, TFTP, HTTP), and runs the
    image from RAM. The machine of a rack that nothing was installed on yet. Started first (see
    the module's docstring); `stranger` takes it over."""
    pxe_set_serving().result()
    vm = layout(spec, 4)[3]
    machine = lifecycle.machine(vm)
    machine.directory.mkdir(parents=True, exist_ok=True)
    disk = machine.directory / "empty.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4G"], check=True)
    acc = accel.choose("auto")
    # Bigger than the test nodes (1 GiB, and 1 CPU each on 2 cores: vm.cpus auto): a rack is seldom
    # all alike, and a step's cpuset can be smaller than this node (checked once it is a member).
    machine.launch(qemu.netboot_argv(vm, machine.directory, disk, acc, lifecycle.switch().sock, memory=2048, cpus=2))
    yield machine, lifecycle.node_handle(spec, vm, acc.scale(1.0)), disk
    machine.stop(0)   # already stopped unless the stranger's test never ran


@pytest.fixture
def stranger(running, netbooting):
    machine, handle, disk = netbooting
    yield handle
    machine.stop(0)   # it runs from RAM: nothing to keep, no ACPI power-down to wait for
    assert untouched(disk), "running from RAM, it wrote nothing to its disk"
    forget_everywhere(running, "node4")
    assert clusteros(["serve-pxe", "--stop"]) == 0
    os.remove(disk)


# -- members ---------------------------------------------------------------------------

def test_a_member_announcing_node1s_name_and_key_changes_nothing(running):
    node1_key = agent_status(running["node2"])  # what node2 holds for node1, before
    before = {m["name"]: (m["lan_ip"], m["wg_ip"]) for m in node1_key["members"]}
    key = running["node3"].succeed("sudo wg show wg0 allowed-ips | awk '$2 == \"10.99.0.1/32\" {print $1}'").strip()
    assert key, "node3 knows node1's key"
    for lan_ip in ("10.42.0.11", "10.42.0.13"):   # node1's address, spoken from node3; and node3's own
        fake = payload_for("node1", 1, lan_ip, "10.99.0.1", wg_pubkey=key)
        send(running["node3"], f"messages.encode_announcement({fake!r}, cred.generation, cred.announce_key)")
    time.sleep(5)
    for name in ("node1", "node2"):
        status = agent_status(running[name])
        assert {m["name"]: (m["lan_ip"], m["wg_ip"]) for m in status["members"]} == before
        assert status["refused_packets"] >= (1 if name == "node2" else 0)
    assert "10.42.0.11:51820" in running["node2"].succeed("sudo wg show wg0 endpoints")


def test_a_flood_of_signed_malformed_messages_leaves_every_agent_running_and_slurm_working(running):
    restarts = {n.name: n.succeed("systemctl show node-agent -p NRestarts --value").strip() for n in running}
    odd = "[None, '', 'x' * 3000, -1, 2**70, 1.5, [], {}, True, '0.0.0.0/0', 'a\\\\nPrologSlurmctld=/bin/sh']"
    expression = (f"[messages.encode_announcement(dict(base, **{{key: value}}), cred.generation, cred.announce_key) "
                  f"for key in base for value in {odd}]")
    base = payload_for("node3", 3, "10.42.0.13", "10.99.0.3")
    send(running["node3"], f"(lambda base: {expression})({base!r})", count=60)   # ~9000 signed packets
    for node in running:
        node.wait_for_unit("node-agent.service")
        assert node.succeed("systemctl show node-agent -p NRestarts --value").strip() == restarts[node.name]
    names = running["node1"].wait_until_succeeds("srun -N3 hostname", timeout=120).split()
    assert sorted(names) == ["node1", "node2", "node3"]
    assert "dropped a packet from 10.42.0.13" in running["node1"].succeed("sudo journalctl -u node-agent --no-pager")


# -- clocks -------------------------------------------------------------------------------

def test_a_clock_step_on_the_controller_moves_no_role_and_a_wrong_clock_is_put_right(running):
    """Both steps at once: the worker's wait for chrony overlaps the controller's time stepped ahead."""
    leader = controller_of(running)
    worker = next(node for node in running if node.name != leader)
    stepped = time.monotonic()
    running[leader].succeed("sudo date -s '+30 seconds' >/dev/null")
    worker.succeed("sudo date -s '-100 seconds' >/dev/null")

    def in_step() -> None:
        theirs, ours = int(running[leader].succeed("date +%s")), int(worker.succeed("date +%s"))
        assert abs(theirs - ours) <= 3, f"{worker.name} is {ours - theirs}s off the controller"
    running.retry(in_step, 45)
    # Past the liveness timeout (and two ticks): had it been measured by the wall clock, a stepped
    # node's peers would be out of date by now (liveness is monotonic, so everyone still counts as live).
    time.sleep(max(0.0, LIVE_SECONDS + 2 * TICK - (time.monotonic() - stepped)))
    assert controller_of(running) == leader
    for node in running:
        live = sorted(m["name"] for m in agent_status(node)["members"] if m["live"])
        assert live == ["node1", "node2", "node3"], f"{node.name} sees only {live} live"


# -- secrets on nodes -----------------------------------------------------------------------

def test_no_token_or_secret_shows_in_a_command_line_or_a_world_readable_file(running, spec):
    secret = credentials.secret_bytes(spec, credentials.generation(spec))
    token = k3s.token(secret)
    for node in running:
        args = node.succeed("ps -eo args")
        assert token not in args and secret.hex() not in args
        assert token not in node.succeed("systemctl show clusteros-k3s.service -p Description -p ExecStart")
        assert token not in node.succeed("cat /run/clusteros/status.json")
        node.fail("cat /var/lib/clusteros/k3s/token")   # 0600: not for the login user
        assert node.succeed("sudo stat -c %a /var/lib/clusteros/k3s/token").strip() == "600"


# -- the stranger asks, and joins once approved ---------------------------------------------

def test_a_machine_without_the_credential_waits_and_joins_only_once_approved(running, stranger):
    """Netbooted from node1 (see `stranger`), it asks to join and shows its fingerprint on its console."""
    stranger.wait_for_console_text(r"running democluster from RAM", timeout=400)
    assert stranger.wait_for_console_text(r"loading \(compressed\) [1-9]\d* of \d+ MiB", timeout=1), \
        "the RAM load showed its progress"
    assert "dnsmasq-dhcp" in running["node1"].succeed("sudo journalctl -u clusteros-pxe --no-pager"), "node1 served it"
    match = stranger.wait_for_console_text(r"clusteros-node approve (\w{4}-\w{4}-\w{4})", timeout=150)
    fingerprint = match.group(1)
    node1 = running["node1"]
    running.retry(lambda: _asking(agent_status(node1), fingerprint), 30)
    assert "node4" not in [m["name"] for m in agent_status(node1)["members"]], "no member before approval"
    refused = stranger.execute("true")   # no key for admin: the image has none, the credential brings it
    assert refused.status == 255 and "Permission denied (publickey)" in refused.stderr, refused

    assert clusteros(["approve", fingerprint]) == 0       # from the build host, through node1
    stranger.wait_for_ssh(timeout=90)
    members = lambda: live_member(agent_status(node1), "node4")   # noqa: E731
    running.retry(members, 60)
    try:
        node1.wait_until_succeeds("srun -w node4 hostname | grep -qx node4", timeout=90)
    except Exception as failure:
        raise AssertionError(f"{failure}\n--- what node1 knows\n{_slurm_story(node1)}") from failure
    peers = stranger.succeed("sudo wg show wg0 peers").split()
    assert len(peers) == 3, "node4 is in the mesh with all three"
    for wanted in (1, 2):   # node4 has 2 CPUs: a step gets exactly the ones it asked for
        seen = node1.succeed(f"srun -w node4 -c {wanted} grep Cpus_allowed_list /proc/self/status")
        assert cpu_count(seen.split(":", 1)[1].strip()) == wanted, f"srun -c {wanted} on node4: {seen.strip()}"
    assert json.loads(stranger.succeed("clusteros-node status --json"))["credential"]["generation"] >= 1


def _slurm_story(node) -> str:
    return node.execute("clusteros-node status; grep -H NodeName /etc/slurm/slurm.conf /run/slurm/conf/slurm.conf;"
                        " scontrol show node node4; sudo journalctl -u slurmctld -u slurmd -n 40 --no-pager").stdout


def _asking(status: dict, fingerprint: str) -> None:
    assert fingerprint in [p["fingerprint"] for p in status["pending"]], status["pending"]


# -- the rotation's grace ------------------------------------------------------------

def test_once_the_rotation_grace_is_over_the_old_secret_is_refused(running):
    assert ROTATED, "runs after test_a_rotation_reaches_every_member"
    before = ROTATED["before"]
    time.sleep(max(0.0, ROTATION_GRACE + 10 - (time.monotonic() - ROTATED["at"])))
    old = payload_for("intruder", 9, "10.42.0.13", "10.99.0.9", generation=before)
    send(running["node3"], f"messages.encode_announcement({old!r}, {before}, cred.announce_key)")
    refused = f"credential generation {before}, not one this node holds"
    running["node1"].wait_until_succeeds(f"sudo journalctl -u node-agent --no-pager | grep -qF '{refused}'",
                                         timeout=30)
    assert "intruder" not in [m["name"] for m in agent_status(running["node1"])["members"]]


def test_stop_then_clean_leaves_no_process_socket_or_overlay(running):
    qemu_pids = list(pids().values())
    out = doit("vm_stop")
    assert [line for line in out.stdout.splitlines() if line.startswith("node")] == [
        "node1: powered down", "node2: powered down", "node3: powered down"], "ACPI, not a kill"
    for pid in qemu_pids:
        assert not os.path.exists(f"/proc/{pid}/cmdline") or b"qemu" not in open(f"/proc/{pid}/cmdline", "rb").read()
    assert not list((DIST / "vm").rglob("*.sock")) and not list((DIST / "vm").rglob("*.pid"))
    assert list((DIST / "vm").rglob("overlay.qcow2")), "vm_stop keeps the overlays"
    assert not [p for p in (DIST / "vm").rglob("*") if p.name in ("credential.json", "ssh-keys")], \
        "QEMU read the credential at start: no copy stays beside it"
    doit("vm_clean")
    assert not (DIST / "vm").exists()
