"""The QEMU test cluster: N nodes on one VDE switch LAN, each with SSH on 127.0.0.1.

Everything the running cluster owns lives under dist/vm/: the switch's socket
directory and pid file, and one directory per node (thin qcow2 overlay on the
image, QMP socket, pid file, serial log, QEMU's own log, UEFI variables).
dist/vm/cluster.json records which image the nodes run, so a second `up` with
the same image restarts nothing, and a rebuilt image restarts every node on it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clusteros import accel as accel_mod
from clusteros import paths, runner, secrets
from clusteros.atomic import write_json
from clusteros.errors import ClusterOSError, UsageError
from clusteros.spec import node_mac
from clusteros.vm.machine import Machine, pid_from_file

OVMF_CODE = [Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_CODE.fd"),
             Path("/usr/share/ovmf/OVMF.fd"), Path("/usr/share/qemu/OVMF.fd")]
SSH_POLL_SECONDS = 3
PROGRESS_SECONDS = 10
STOP_TIMEOUT = 30.0


class ClusterError(ClusterOSError):
    pass


@dataclass(frozen=True)
class VMNode:
    index: int
    name: str
    lan_mac: str
    uplink_mac: str
    lan_address: str
    ssh_port: int
    vnc_port: int
    cpus: int
    memory: int


def layout(spec: dict, count: int) -> list[VMNode]:
    """The VMs for `count` nodes: spec nodes first, then node<i> of the cluster's MAC range."""
    vm, name = spec["vm"], spec["cluster"]["name"]
    listed = {n["index"]: n for n in spec["nodes"]}
    prefix = spec["node_naming"]["prefix"]
    subnet_base = spec["nodes"][0]["address"].rsplit(".", 1)[0]
    nodes = []
    for i in range(1, count + 1):
        node = listed.get(i, {})
        mac = node.get("mac") or node_mac(name, i)
        nodes.append(VMNode(
            index=i,
            name=node.get("name") or f"{prefix}{i}",
            lan_mac=mac,
            # Same cluster bytes in another locally administered range: never collides with the LAN.
            uplink_mac="52:54:01" + node_mac(name, i)[8:],
            lan_address=node.get("address") or f"{subnet_base}.{10 + i}",
            ssh_port=vm["ssh_base_port"] + i - 1,
            vnc_port=vm["vnc_base_port"] + i - 1,
            cpus=node.get("cpus") or vm["cpus"],
            memory=node.get("memory") or vm["memory"],
        ))
    return nodes


def vm_count(spec: dict, override: str | int | None) -> int:
    if override in (None, ""):
        return spec["vm"]["nodes"]
    try:
        count = int(override)
    except ValueError:
        raise UsageError(f"nodes={override!r}: give a number of nodes, e.g. `doit test_vm nodes=5`") from None
    if not 1 <= count <= 16:
        raise UsageError(f"nodes={count}: the test cluster has 1 to 16 nodes")
    if spec["node_naming"]["listed"] and count > len(spec["nodes"]):
        raise UsageError(f"nodes={count}: cluster.yaml lists {len(spec['nodes'])} nodes; list more to run more")
    return count


# --------------------------------------------------------------------------
# Files and processes


def machine(node: VMNode) -> Machine:
    return Machine(node.name, (paths.vm_dir() / node.name).resolve())


def state_file() -> Path:
    return paths.vm_dir() / "cluster.json"


def load_state() -> dict | None:
    try:
        return json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None


class Switch:
    """vde_switch: the cluster LAN, unprivileged, over a unix socket directory."""

    def __init__(self, directory: Path):
        self.directory = directory.resolve()
        self.sock = self.directory / "switch"
        self.pid_file = self.directory / "switch.pid"

    def pid(self) -> int | None:
        return pid_from_file(self.pid_file, str(self.sock).encode())

    def ensure_running(self) -> None:
        if self.pid():
            return
        self.stop()
        self.directory.mkdir(parents=True, exist_ok=True)
        runner.run("vm-switch", ["vde_switch", "--sock", self.sock, "--daemon", "--pidfile", self.pid_file],
                   log=self.directory / "switch.log")
        deadline = time.monotonic() + 5
        while not (self.sock / "ctl").exists():
            if time.monotonic() > deadline:
                raise ClusterError(f"vde_switch did not create {self.sock}; see {self.directory / 'switch.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while self.pid() and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.sock, ignore_errors=True)
        self.pid_file.unlink(missing_ok=True)


def switch() -> Switch:
    return Switch(paths.vm_dir() / "lan")


def ovmf_code() -> Path:
    for path in OVMF_CODE:
        if path.exists():
            return path
    raise ClusterError("vm.firmware is uefi but no OVMF firmware was found in "
                       + ", ".join(map(str, OVMF_CODE)) + "\n  fix: apt-get install ovmf")


def qemu_argv(node: VMNode, m: Machine, overlay: Path, acc: accel_mod.Accel, firmware: str, lan_sock: Path) -> list[str]:
    argv = ["qemu-system-x86_64", "-name", f"{node.name},process=clusteros-{node.name}",
            "-machine", "q35", *acc.qemu_args, "-smp", str(node.cpus), "-m", str(node.memory),
            "-drive", f"file={overlay},if=virtio,format=qcow2,discard=unmap",
            "-netdev", f"vde,id=lan,sock={lan_sock}",
            "-device", f"virtio-net-pci,netdev=lan,mac={node.lan_mac}",
            "-netdev", f"user,id=uplink,hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=uplink,mac={node.uplink_mac}",
            "-device", "virtio-rng-pci",
            "-vga", "std", "-display", "none", "-vnc", f"127.0.0.1:{node.vnc_port - 5900}",
            "-monitor", "none"]
    if firmware == "uefi":
        code = ovmf_code()
        vars_file = m.directory / "OVMF_VARS.fd"
        if not vars_file.exists():
            shutil.copyfile(code.with_name(code.name.replace("CODE", "VARS")), vars_file)
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,file={vars_file}"]
    return argv


# --------------------------------------------------------------------------
# Ports and leftovers


def port_owner(port: int) -> str | None:
    """Who listens on 127.0.0.1:port (or any address), or None if the port is free."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
        return None
    except OSError:
        pass
    finally:
        probe.close()
    return _listener_process(port) or "another program"


def _listener_process(port: int) -> str | None:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = (pid_dir / "comm").read_text().strip()
                    return f"{name} (pid {pid_dir.name})"
        except OSError:
            continue
    return None


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
    problems = []
    for node in nodes:
        for what, port in (("SSH", node.ssh_port), ("VNC", node.vnc_port)):
            owner = port_owner(port)
            if owner:
                problems.append(f"  {node.name}: {what} port {port} is taken by {owner}")
    if problems:
        raise UsageError("ports the test cluster needs are in use:\n" + "\n".join(problems)
                         + "\n  fix: stop that program, or move vm.ssh_base_port / vm.vnc_base_port in cluster.yaml")


# --------------------------------------------------------------------------
# SSH


def ssh_argv(spec: dict, node: VMNode, command: list[str] | None = None, *, interactive: bool = False,
             connect_timeout: int = 10) -> list[str]:
    key = secrets.test_key_path(spec)
    user = spec["image"]["users"][0]["name"]
    argv = ["ssh", "-i", str(key), "-p", str(node.ssh_port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={connect_timeout}", "-o", "IdentitiesOnly=yes"]
    if not interactive:
        argv += ["-o", "BatchMode=yes"]
    argv.append(f"{user}@127.0.0.1")
    if command:
        # ssh hands the remote shell one string: quote each word so argv arrives as given.
        argv += ["--", shlex.join(command)]
    return argv


def ssh_run(spec: dict, node: VMNode, command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run one command on a node; output captured. (Polling, so not logged line by line.)"""
    try:
        return subprocess.run(ssh_argv(spec, node, command), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], 255, "", f"ssh timed out after {timeout:.0f}s")


def shell(spec: dict, number: int, command: list[str]) -> int:
    nodes = layout(spec, max(number, current_count(spec)))
    if not 1 <= number <= len(nodes):
        raise UsageError(f"node {number}: the test cluster has nodes 1 to {len(nodes)}")
    node = nodes[number - 1]
    if not machine(node).is_alive():
        raise ClusterError(f"{node.name} is not running: start the cluster with `doit test_vm`")
    argv = ssh_argv(spec, node, command or None, interactive=not command)
    if not command:
        argv.insert(1, "-t")
    return subprocess.call(argv)


def current_count(spec: dict) -> int:
    state = load_state()
    return len(state["nodes"]) if state else spec["vm"]["nodes"]


# --------------------------------------------------------------------------
# The lifecycle


def image_identity(qcow2: Path, manifest: Path) -> str:
    try:
        return json.loads(manifest.read_text())["outputs"]["qcow2"]["sha256"]
    except (OSError, ValueError, KeyError):
        raise UsageError(f"{manifest} is missing or unreadable: build the image first with `doit image`") from None


def up(spec: dict, qcow2: Path, manifest: Path, count: int) -> list[VMNode]:
    """Bring the cluster to `count` nodes running `qcow2`, reachable over SSH."""
    nodes = layout(spec, count)
    image_id = image_identity(qcow2, manifest)
    acc = accel_mod.choose(spec["vm"]["accel"])
    runner.say("test_vm", f"accelerator: {acc.name.upper()} ({acc.reason})")
    for note in clear_leftovers(nodes):
        runner.say("test_vm", note)

    state = load_state()
    if state and (state["image_sha256"] != image_id or state["firmware"] != spec["vm"]["firmware"]):
        runner.say("test_vm", "the image changed since the nodes started: restarting every node on the new one")
        stop(spec)
        remove_overlays()
        state = None
    wanted = {n.name for n in nodes}
    if state:
        for extra in [n for n in state["nodes"] if n["name"] not in wanted]:
            runner.say("test_vm", f"{extra['name']}: not in a {count}-node cluster; stopping it")
            machine(VMNode(**extra)).stop(acc.scale(STOP_TIMEOUT))
    to_start = [n for n in nodes if not machine(n).is_alive()]
    running = [n.name for n in nodes if n not in to_start]
    if running:
        runner.say("test_vm", f"already running on this image: {', '.join(running)}")
    check_ports(to_start)

    write_json(state_file(), {"image": str(qcow2.resolve()), "image_sha256": image_id, "accel": acc.name,
                              "accel_reason": acc.reason, "firmware": spec["vm"]["firmware"],
                              "nodes": [asdict(n) for n in nodes]})
    if to_start:
        sw = switch()
        sw.ensure_running()
        for node in to_start:
            m = machine(node)
            overlay = m.directory / "overlay.qcow2"
            if not overlay.exists():
                m.directory.mkdir(parents=True, exist_ok=True)
                runner.run(f"vm-{node.name}", ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                                               "-b", qcow2.resolve(), overlay], log=m.directory / "overlay.log")
            m.serial_log.unlink(missing_ok=True)
            pid = m.launch(qemu_argv(node, m, overlay, acc, spec["vm"]["firmware"], sw.sock))
            runner.say("test_vm", f"{node.name}: started (pid {pid}, QMP ok), SSH on 127.0.0.1:{node.ssh_port}")
        wait_for_ssh(spec, to_start, acc.scale(spec["vm"]["boot_timeout"]))
    return nodes


def wait_for_ssh(spec: dict, nodes: list[VMNode], timeout: float) -> None:
    started = time.monotonic()
    ready: dict[str, float] = {}
    failed: dict[str, str] = {}
    lock = threading.Lock()

    def poll(node: VMNode) -> None:
        m = machine(node)
        while time.monotonic() - started < timeout:
            if not m.is_alive():
                with lock:
                    failed[node.name] = "QEMU exited"
                return
            if ssh_run(spec, node, ["true"], timeout=30).returncode == 0:
                with lock:
                    ready[node.name] = time.monotonic() - started
                return
            time.sleep(SSH_POLL_SECONDS)
        with lock:
            failed[node.name] = f"no SSH after {timeout:.0f}s"

    threads = [threading.Thread(target=poll, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=PROGRESS_SECONDS / len(threads))
        with lock:
            parts = [f"{n.name} {'up %.0fs' % ready[n.name] if n.name in ready else failed.get(n.name, 'booting')}"
                     for n in nodes]
        runner.say("test_vm", f"waiting for SSH ({time.monotonic() - started:.0f}s/{timeout:.0f}s): " + ", ".join(parts))
    if failed:
        name, why = next(iter(failed.items()))
        node = next(n for n in nodes if n.name == name)
        m = machine(node)
        tail = "\n".join(f"    {line}" for line in m.serial_tail())
        raise ClusterError(f"{name}: {why}.\n  serial log: {m.serial_log}\n  QEMU log: {m.log}\n"
                           f"  last lines of the serial log:\n{tail}")


@dataclass
class NodeStatus:
    node: VMNode
    state: str
    ssh: bool
    agent: str
    pid: int | None


def status(spec: dict) -> tuple[list[NodeStatus], dict | None]:
    state = load_state()
    if not state:
        return [], None
    nodes = [VMNode(**n) for n in state["nodes"]]
    results: list[NodeStatus | None] = [None] * len(nodes)

    def check(i: int, node: VMNode) -> None:
        m = machine(node)
        run_state = m.run_state()
        ssh_ok, agent = False, "-"
        if run_state == "running":
            out = ssh_run(spec, node, ["systemctl", "is-active", "node-agent.service"], timeout=20)
            ssh_ok = out.returncode in (0, 3, 4)   # 3/4: reachable, unit inactive or missing
            agent = out.stdout.strip() or "-" if ssh_ok else "-"
        results[i] = NodeStatus(node, run_state, ssh_ok, agent, m.pid())

    threads = [threading.Thread(target=check, args=(i, n)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r], state


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def status_report(spec: dict) -> tuple[str, bool]:
    """The status table, and whether every node is running and reachable."""
    results, state = status(spec)
    if state is None:
        return "no test cluster: start one with `doit test_vm`", False
    rows = [[r.node.name, r.state, "yes" if r.ssh else "no", r.agent, state["accel"], r.node.ssh_port,
             r.node.vnc_port, r.node.lan_address, r.pid or "-"] for r in results]
    text = format_table(["node", "state", "ssh", "node-agent", "accel", "ssh port", "vnc port", "lan address", "pid"],
                        rows)
    for r in results:
        if r.state != "running":
            m = machine(r.node)
            tail = "\n".join(f"    {line}" for line in m.serial_tail(10))
            text += f"\n\n{r.node.name} is {r.state}. Last lines of {m.serial_log}:\n{tail}"
    return text, all(r.state == "running" and r.ssh for r in results)


def info_report(spec: dict) -> str:
    state = load_state()
    if state is None:
        return "no test cluster: start one with `doit test_vm`"
    rows = []
    for n in state["nodes"]:
        node = VMNode(**n)
        m = machine(node)
        rows.append([node.name, m.pid() or "-", node.lan_mac, node.uplink_mac,
                     f"127.0.0.1:{node.ssh_port}", f"127.0.0.1:{node.vnc_port}"])
    text = format_table(["node", "pid", "lan mac", "uplink mac", "ssh", "vnc"], rows)
    text += f"\n\nimage: {state['image']}\naccel: {state['accel']} ({state['accel_reason']})\n"
    for n in state["nodes"]:
        m = machine(VMNode(**n))
        text += (f"\n{n['name']}:\n  overlay: {m.directory / 'overlay.qcow2'}\n  serial log: {m.serial_log}"
                 f"\n  QEMU log: {m.log}\n  QMP: {m.qmp_socket}\n  shell: clusteros shell {n['index']}")
    return text


def stop(spec: dict) -> list[str]:
    """Power every node down (in parallel), then stop the switch. Overlays stay."""
    state = load_state()
    acc_timeout = STOP_TIMEOUT * (accel_mod.TCG_SLOWDOWN if state and state.get("accel") == "tcg" else 1)
    nodes = [VMNode(**n) for n in state["nodes"]] if state else []
    outcomes: dict[str, str] = {}

    def stop_one(node: VMNode) -> None:
        m = machine(node)
        outcomes[node.name] = m.stop(acc_timeout) if m.is_alive() else "was not running"
        m.remove_runtime_files()

    threads = [threading.Thread(target=stop_one, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    switch().stop()
    return [f"{name}: {how}" for name, how in sorted(outcomes.items())]


def remove_overlays() -> None:
    for entry in paths.vm_dir().glob("*/overlay.qcow2"):
        entry.unlink()


def clean(spec: dict) -> list[str]:
    notes = stop(spec)
    if paths.vm_dir().exists():
        shutil.rmtree(paths.vm_dir())
        notes.append(f"removed {paths.vm_dir()}")
    return notes
