"""Who is in the cluster, who is alive, and who leads."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from clusteros_node import addressing

# A member is live while its announcements keep arriving. Generous, because a TCG guest or a
# node busy starting k3s can stall for several seconds, and a false "down" moves the controller.
LIVE_SECONDS = 20.0


@dataclass
class Member:
    name: str
    index: int | None
    lan_ip: str
    wg_ip: str
    wg_pubkey: str
    wg_port: int
    cpus: int
    memory_mb: int
    boot_id: str
    last_seen: float
    slurm_nodes: tuple[str, ...] = ()

    def live(self, now: float) -> bool:
        return now - self.last_seen <= LIVE_SECONDS


FIELDS = ("name", "index", "lan_ip", "wg_ip", "wg_pubkey", "wg_port", "cpus", "memory_mb", "boot_id")


class Membership:
    def __init__(self, known: dict[str, dict] | None = None):
        self.members: dict[str, Member] = {}
        # Every node ever seen, so a node that goes down stays in slurm.conf (and shows DOWN).
        self.known: dict[str, dict] = dict(known or {})

    def update(self, payload: dict, now: float) -> bool:
        """Record an announcement. True if something slurm.conf or the mesh cares about changed."""
        member = Member(**{k: payload[k] for k in FIELDS}, last_seen=now,
                        slurm_nodes=tuple(payload.get("slurm_nodes", ())))
        previous = self.members.get(member.name)
        self.members[member.name] = member
        record = {"cpus": member.cpus, "memory_mb": member.memory_mb, "wg_ip": member.wg_ip}
        changed = self.known.get(member.name) != record
        self.known[member.name] = record
        return changed or previous is None or previous.wg_pubkey != member.wg_pubkey

    def live(self, now: float) -> list[Member]:
        return sorted((m for m in self.members.values() if m.live(now)), key=lambda m: m.name)

    def mesh_peers(self, me: str) -> dict[str, dict]:
        """wg0 peers: every member seen since boot, live or not (public key -> name, endpoint, address).

        A peer that is down costs nothing, and keeping it means a missed announcement never
        tears down a working tunnel under a running job. A member that comes back with a new
        key replaces its old entry, because members are kept by name.
        """
        return {m.wg_pubkey: {"name": m.name, "endpoint": f"{m.lan_ip}:{m.wg_port}", "allowed_ip": f"{m.wg_ip}/32"}
                for m in sorted(self.members.values(), key=lambda m: m.name)
                if m.name != me and m.wg_pubkey and m.lan_ip}


def controller(spec: dict, live_names: list[str]) -> str | None:
    """The spec's controllers first (the first live one); otherwise the lowest-named live node."""
    chosen = sorted(n["name"] for n in spec["nodes"] if n["role"] == "controller")
    for name in chosen:
        if name in live_names:
            return name
    if chosen:
        return chosen[0]
    return min(live_names) if live_names else None


def wg_address(spec: dict, index: int | None, name: str) -> str:
    """Stable wg0 address from the address plan; nodes unknown to the spec hash their name above it."""
    subnet = spec["network"]["wireguard"]["subnet"]
    if index is not None:
        return addressing.wg_address(subnet, index)
    return addressing.wg_address(subnet, addressing.MAX_INDEXED + 1 + zlib.crc32(name.encode()) % 100)
