"""The QEMU test cluster's lifecycle: up, stop, clean, and handles on its running nodes.

Everything the running cluster owns lives under dist/vm/ (0700): the switch's
socket directory and pid file, and one directory per node (thin qcow2 overlay
on the image, QMP socket, pid file, serial log, QEMU's own log, UEFI
variables). dist/vm/cluster.json records which image the nodes run, so a
second `up` with the same image restarts nothing, and a rebuilt image
restarts every node on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path

from clusteros import accel as accel_mod
from clusteros import credentials, paths, runner, secrets
from clusteros.atomic import write_json
from clusteros.errors import ClusterOSError, UsageError
from clusteros.vm import ports, qemu
from clusteros.vm.layout import VMNode, layout
from clusteros.vm.machine import Machine
from clusteros.vm.node import Node
from clusteros.vm.ssh import SSHTarget
from clusteros.vm.switch import Switch

PROGRESS_SECONDS = 10
STOP_TIMEOUT = 30.0


class ClusterError(ClusterOSError):
    pass


# --------------------------------------------------------------------------
# Where things are


def vm_dir() -> Path:
    directory = paths.vm_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def machine(node: VMNode) -> Machine:
    return Machine(node.name, (paths.vm_dir() / node.name).resolve(), stop_timeout=STOP_TIMEOUT)


def switch() -> Switch:
    return Switch(paths.vm_dir() / "lan")


def state_file() -> Path:
    return paths.vm_dir() / "cluster.json"


def load_state() -> dict | None:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None


def scale_of(state: dict | None) -> float:
    return accel_mod.Accel(state["accel"], "").scale(1.0) if state else 1.0


def node_handle(spec: dict, node: VMNode, scale: float | None = None) -> Node:
    m = machine(node)
    ssh = SSHTarget(node.ssh_port, spec["image"]["users"][0]["name"], secrets.test_key_path(spec),
                    control_dir=m.directory)
    return Node(node.name, m, ssh, scale if scale is not None else scale_of(load_state()))


def running_nodes(spec: dict) -> list[Node]:
    """Handles on the nodes of the running test cluster, in order."""
    state = load_state()
    if not state:
        raise ClusterError("no test cluster is running", fix="start one with `doit test_vm`")
    return [node_handle(spec, VMNode(**n), scale_of(state)) for n in state["nodes"]]


def current_count(spec: dict) -> int:
    state = load_state()
    return len(state["nodes"]) if state else spec["vm"]["nodes"]


# --------------------------------------------------------------------------
# Before starting


def clear_leftovers(nodes: list[VMNode]) -> list[str]:
    """Remove what a crash left (dead pid files, stale sockets) and say what it was."""
    notes = []
    for node in nodes:
        m = machine(node)
        if m.pid_file.exists() and not m.is_alive():
            notes.append(f"{node.name}: QEMU had died (stale pid file); restarting it")
            m.remove_runtime_files()
        elif m.qmp_socket.exists() and not m.is_alive():
            notes.append(f"{node.name}: removed a stale QMP socket")
            m.remove_runtime_files()
    sw = switch()
    if sw.pid_file.exists() and not sw.pid():
        notes.append("LAN switch had died; restarting it")
        sw.stop()
    return notes


def check_ports(nodes: list[VMNode]) -> None:
    """Each node's SSH forward must be free."""
    problems = [f"  {node.name}: {line}" for node in nodes for line in ports.taken({"SSH": node.ssh_port})]
    if problems:
        raise UsageError("ports the test cluster needs are in use:\n" + "\n".join(problems),
                         fix="stop that program, or move vm.ssh_base_port in cluster.yaml")


def read_manifest(manifest: Path) -> dict:
    try:
        record = json.loads(manifest.read_text())
        record["outputs"]["qcow2"]["sha256"]
        return record
    except (OSError, ValueError, KeyError):
        raise UsageError(f"{manifest} is missing or unreadable", fix="build the image first with `doit image`") \
            from None


# --------------------------------------------------------------------------
# The lifecycle


def up(spec: dict, qcow2: Path, manifest: Path, count: int) -> list[VMNode]:
    """Bring the cluster to `count` nodes running `qcow2`, reachable over SSH."""
    nodes = layout(spec, count)
    record = read_manifest(manifest)
    image_id = record["outputs"]["qcow2"]["sha256"]
    boot = qemu.boot_of(spec, record, manifest.parent)
    acc = accel_mod.choose(spec["vm"]["accel"])
    runner.say("test_vm", f"accelerator: {acc.name.upper()} ({acc.reason}); {boot.describe()}")
    for note in clear_leftovers(nodes):
        runner.say("test_vm", note)
    _stop_what_does_not_belong(spec, nodes, image_id, boot)
    to_start = [n for n in nodes if not machine(n).is_alive()]
    if running := [n.name for n in nodes if n not in to_start]:
        runner.say("test_vm", f"already running on this image: {', '.join(running)}")
    check_ports(to_start)
    write_json(state_file(), {"image": str(qcow2.resolve()), "image_sha256": image_id, "accel": acc.name,
                              "accel_reason": acc.reason, "boot": boot.describe(), "screen": not boot.direct,
                              "nodes": [asdict(n) for n in nodes]}, mode=0o600)
    if to_start:
        _start(spec, to_start, qcow2, acc, boot)
        wait_for_ssh(spec, to_start, acc.scale(spec["vm"]["boot_timeout"]))
    return nodes


def _stop_what_does_not_belong(spec: dict, nodes: list[VMNode], image_id: str, boot: qemu.Boot) -> None:
    """Nodes on an older image or another way of booting all restart; a node given other CPUs or
    memory restarts; nodes beyond `count` stop."""
    state = load_state()
    if state and (state["image_sha256"] != image_id or state.get("boot") != boot.describe()):
        runner.say("test_vm", "the image or the way it boots changed since the nodes started: "
                              "restarting every node")
        stop(spec)
        remove_overlays()
        return
    wanted = {n.name: n for n in nodes}
    for was in [VMNode(**n) for n in (state or {}).get("nodes", [])]:
        now = wanted.get(was.name)
        if now is None:
            runner.say("test_vm", f"{was.name}: not in a {len(nodes)}-node cluster; stopping it")
        elif (was.cpus, was.memory) != (now.cpus, now.memory) and machine(was).is_alive():
            # vm.cpus auto gives a node more CPUs in a smaller cluster: a cluster is all of one size.
            runner.say("test_vm", f"{was.name}: restarting with {now.cpus} CPUs and {now.memory} MiB "
                                  f"(running with {was.cpus} and {was.memory})")
        else:
            continue
        machine(was).stop(scale_of(state) * STOP_TIMEOUT)


@contextlib.contextmanager
def credential_files(spec: dict, directory: Path):
    """The node's credential and its SSH keys, as files (0600) for QEMU to read at start, then gone.

    QEMU hands them to the guest through fw_cfg, where systemd imports them as system
    credentials (/run/credentials/@system/): the image itself holds neither.
    """
    files = {"clusteros-credential": directory / "credential.json", "clusteros-ssh-keys": directory / "ssh-keys"}
    contents = {"clusteros-credential": credentials.ensure_bundle(spec).read_bytes(),
                "clusteros-ssh-keys": credentials.ssh_keys_text(spec).encode()}
    try:
        for name, path in files.items():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(contents[name])
        yield files
    finally:
        for path in files.values():
            path.unlink(missing_ok=True)


def _start(spec: dict, nodes: list[VMNode], qcow2: Path, acc: accel_mod.Accel, boot: qemu.Boot) -> None:
    vm_dir()
    sw = switch()
    sw.ensure_running()
    for node in nodes:
        m = machine(node)
        overlay = m.directory / "overlay.qcow2"
        if not overlay.exists():
            m.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(m.directory, 0o700)
            runner.run(f"vm-{node.name}", ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                                           "-b", qcow2.resolve(), overlay], log=m.directory / "overlay.log",
                       timeout=60)
        with credential_files(spec, m.directory) as handed:
            pid = m.launch(qemu.node_argv(node, m.directory, overlay, acc, boot, sw.sock) + qemu.fw_cfg_args(handed))
        runner.say("test_vm", f"{node.name}: started (pid {pid}, QMP ok), SSH on 127.0.0.1:{node.ssh_port}")


def wait_for_ssh(spec: dict, nodes: list[VMNode], timeout: float) -> None:
    """Wait for SSH on every node at once, with a progress line every few seconds."""
    started = time.monotonic()
    ready: dict[str, float] = {}
    failed: dict[str, ClusterOSError | AssertionError] = {}

    def wait(node: VMNode) -> None:
        try:
            node_handle(spec, node, scale=1.0).wait_for_ssh(timeout)
            ready[node.name] = time.monotonic() - started
        except (ClusterOSError, AssertionError) as exc:
            failed[node.name] = exc

    threads = [threading.Thread(target=wait, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=PROGRESS_SECONDS / len(threads))
        parts = [f"{n.name} {'up %.0fs' % ready[n.name] if n.name in ready else 'failed' if n.name in failed else 'booting'}"
                 for n in nodes]
        runner.say("test_vm", f"waiting for SSH ({time.monotonic() - started:.0f}s/{timeout:.0f}s): " + ", ".join(parts))
    if failed:
        name = next(iter(failed))
        m = machine(next(n for n in nodes if n.name == name))
        tail = "\n".join(f"    {line}" for line in m.serial_tail())
        raise ClusterError(f"{name}: no SSH after {timeout:.0f}s ({str(failed[name]).splitlines()[0]})\n"
                           f"  serial log: {m.serial_log}\n  QEMU log: {m.log}\n"
                           f"  last lines of the serial log:\n{tail}",
                           fix="read the serial log; `doit test_vm` again restarts what is down")


def stop(spec: dict) -> list[str]:
    """Power every node down (in parallel), the storage node last, then stop the switch. Overlays stay.

    The storage node goes last because the others mount /home from it, hard: a member whose
    server is gone first waits out its stop timeouts on the mount and on every process with a
    file open there (measured: 80 s more than the 7 s a node takes to power down)."""
    state = load_state()
    nodes = [VMNode(**n) for n in state["nodes"]] if state else []
    outcomes: dict[str, str] = {}

    def stop_one(node: VMNode) -> None:
        m = machine(node)
        outcomes[node.name] = m.stop(scale_of(state) * STOP_TIMEOUT) if m.is_alive() else "was not running"
        m.remove_runtime_files()

    for wave in stop_order(spec, nodes):
        threads = [threading.Thread(target=stop_one, args=(n,)) for n in wave]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    switch().stop()
    return [f"{name}: {how}" for name, how in sorted(outcomes.items())]


def stop_order(spec: dict, nodes: list[VMNode]) -> list[list[VMNode]]:
    """Waves of nodes to stop together: the members, then the node that serves their /home."""
    slurm = spec["services"]["slurm"]
    storage = slurm.get("storage_node") if slurm["enabled"] else None
    waves = [[n for n in nodes if n.name != storage], [n for n in nodes if n.name == storage]]
    return [wave for wave in waves if wave]


def remove_overlays() -> None:
    for entry in paths.vm_dir().glob("*/overlay.qcow2"):
        entry.unlink()


def clean(spec: dict) -> list[str]:
    notes = stop(spec)
    if paths.vm_dir().exists():
        shutil.rmtree(paths.vm_dir())
        notes.append(f"removed {paths.vm_dir()}")
    return notes


def shell(spec: dict, number: int, command: list[str]) -> int:
    """Log in to node `number`, or run one command there; returns its exit status."""
    nodes = layout(spec, max(number, current_count(spec)))
    if not 1 <= number <= len(nodes):
        raise UsageError(f"node {number}: the test cluster has nodes 1 to {len(nodes)}",
                         fix="give one of those numbers, or start more nodes with `doit test_vm --nodes N`")
    handle = node_handle(spec, nodes[number - 1])
    if not handle.machine.is_alive():
        raise ClusterError(f"{handle.name} is not running", fix="start the cluster with `doit test_vm`")
    line = shlex.join(command) if command else None
    return subprocess.call(handle.ssh.argv(line, interactive=not command))
