"""What `doit vm_status` and `doit vm_info` print about the running test cluster."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from clusteros.vm import cluster, qemu
from clusteros.vm.layout import VMNode

NO_CLUSTER = "no test cluster: start one with `doit test_vm`"


@dataclass
class NodeStatus:
    node: VMNode
    state: str
    ssh: bool
    agent: str
    pid: int | None


def _node_status(spec: dict, node: VMNode) -> NodeStatus:
    handle = cluster.node_handle(spec, node)
    run_state = handle.machine.run_state()
    ssh_ok, agent = False, "-"
    if run_state == "running":
        result = handle.execute("systemctl is-active node-agent.service", timeout=20)
        ssh_ok = result.status in (0, 3, 4)   # 3/4: reachable, unit inactive or missing
        agent = (result.stdout.strip() or "-") if ssh_ok else "-"
    return NodeStatus(node, run_state, ssh_ok, agent, handle.machine.pid())


def _vnc(state: dict, node: VMNode) -> str:
    """Booted through firmware, a node has a screen, on VNC at a socket in its own 0700 folder; booted
    directly, its console is the serial log."""
    return str(cluster.machine(node).directory / qemu.VNC_SOCKET) if state.get("screen") else "-"


def status(spec: dict) -> tuple[list[NodeStatus], dict | None]:
    """Every node's state, asked in parallel (a node that does not answer costs its timeout once)."""
    state = cluster.load_state()
    if not state:
        return [], None
    nodes = [VMNode(**n) for n in state["nodes"]]
    results: list[NodeStatus | None] = [None] * len(nodes)

    def check(i: int, node: VMNode) -> None:
        results[i] = _node_status(spec, node)

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
        return NO_CLUSTER, False
    rows = [[r.node.name, r.state, "yes" if r.ssh else "no", r.agent, state["accel"], r.node.ssh_port,
             _vnc(state, r.node), r.node.lan_address, r.pid or "-"] for r in results]
    text = format_table(["node", "state", "ssh", "node-agent", "accel", "ssh port", "vnc", "lan address", "pid"],
                        rows)
    for r in results:
        if r.state != "running":
            m = cluster.machine(r.node)
            tail = "\n".join(f"    {line}" for line in m.serial_tail(10))
            text += f"\n\n{r.node.name} is {r.state}. Last lines of {m.serial_log}:\n{tail}"
    return text, all(r.state == "running" and r.ssh for r in results)


def info_report(spec: dict) -> str:
    state = cluster.load_state()
    if state is None:
        return NO_CLUSTER
    nodes = [VMNode(**n) for n in state["nodes"]]
    rows = [[n.name, cluster.machine(n).pid() or "-", n.lan_mac, n.uplink_mac, f"127.0.0.1:{n.ssh_port}",
             _vnc(state, n)] for n in nodes]
    text = format_table(["node", "pid", "lan mac", "uplink mac", "ssh", "vnc"], rows)
    text += (f"\n\nimage: {state['image']}\naccel: {state['accel']} ({state['accel_reason']})\n"
             f"boot: {state['boot']}\n")
    for n in nodes:
        m = cluster.machine(n)
        text += (f"\n{n.name}:\n  overlay: {m.directory / 'overlay.qcow2'}\n  serial log: {m.serial_log}"
                 f"\n  QEMU log: {m.log}\n  QMP: {m.qmp_socket}\n  shell: clusteros shell {n.index}")
    return text
