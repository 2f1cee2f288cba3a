"""The members a node knows: who is bound to which key and addresses, who is live, what to forget.

A node's name belongs to the WireGuard key it was first seen with (or the key the owner
approved): from then on, another key claiming that name, that key claiming another name,
or anyone claiming a wg0 address another name holds, is refused. An announcement must
come from the LAN address it names, and its sequence number must move forward: a replay
or an echo is refused too. Bindings and sequence numbers survive restarts (the caller
saves `state()`), departed members are forgotten after PRUNE_AFTER, and the table never
holds more than MAX_MEMBERS names.

Liveness is judged on a monotonic clock, never on the senders' timestamps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from clusteros_node.validate import Announcement

LIVE_SECONDS = 20.0                 # a member is live while it was heard this recently
PRUNE_AFTER = 7 * 24 * 3600.0       # a member not heard for a week is forgotten
MAX_MEMBERS = 128


class Refused(Exception):
    """An announcement that is well formed but claims what another member holds, or repeats itself."""


class AddressConflict(Refused):
    """Two names claim one wg0 address (machines the spec does not index pick theirs; two may pick alike)."""

    def __init__(self, holder: str, claimant: Announcement):
        self.holder, self.claimant = holder, claimant
        super().__init__(f"{claimant.name} claims {claimant.wg_ip}, which {holder} holds")


@dataclass(frozen=True)
class Binding:
    wg_pubkey: str
    wg_ip: str
    lan_ip: str
    wg_port: int
    seq: int                # the last sequence number accepted from this name
    seen: float             # wall-clock time it was last heard (for pruning across restarts)
    cpus: int = 1           # what it last said it has (slurm.conf lists members that are down too)
    memory_mb: int = 1


@dataclass
class Member:
    last: Announcement
    heard: float            # monotonic time it was last heard

    @property
    def name(self) -> str:
        return self.last.name


class Registry:
    def __init__(self, saved: dict | None = None, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.clock, self.wall = clock, wall
        self.bindings: dict[str, Binding] = {}
        for name, fields in (saved or {}).items():
            try:
                self.bindings[name] = Binding(**fields)
            except TypeError:
                continue   # a file from an older version: its members are learned again
        self.members: dict[str, Member] = {}

    # -- admitting announcements --------------------------------------------

    def accept(self, a: Announcement, sender: str) -> bool:
        """Record an announcement heard from `sender`; True if the mesh or slurm.conf must change."""
        if sender != a.lan_ip:
            raise Refused(f"{a.name} says it is at {a.lan_ip} but spoke from {sender}")
        self._check_binding(a)
        bound = self.bindings.get(a.name)
        if bound is not None and a.seq <= bound.seq:
            raise Refused(f"{a.name}: sequence {a.seq} is not after {bound.seq} (a replay)")
        if bound is None and len(self.bindings) >= MAX_MEMBERS:
            raise Refused(f"{a.name}: the member table is full ({MAX_MEMBERS})")
        previous = self.members.get(a.name)
        self.record(a)
        return (previous is None or bound is None or bound.lan_ip != a.lan_ip
                or (bound.cpus, bound.memory_mb) != (a.cpus, a.memory_mb))

    def record(self, a: Announcement) -> None:
        """Take `a` as heard now, unchecked: for this node's own announcement (and after the checks)."""
        self.bindings[a.name] = Binding(a.wg_pubkey, a.wg_ip, a.lan_ip, a.wg_port, a.seq, self.wall(),
                                        a.cpus, a.memory_mb)
        self.members[a.name] = Member(a, self.clock())

    def _check_binding(self, a: Announcement) -> None:
        bound = self.bindings.get(a.name)
        if bound is not None and bound.wg_pubkey != a.wg_pubkey:
            raise Refused(f"{a.name} is bound to another WireGuard key (forget it first to re-admit it)")
        live = self.members.get(a.name)
        if bound is not None and bound.lan_ip != a.lan_ip and live and self.clock() - live.heard <= LIVE_SECONDS:
            # A member may come back at another address (DHCP); while it is heard at its own, a second
            # voice with its name and key elsewhere is a clone or an impostor.
            raise Refused(f"{a.name} speaks from {bound.lan_ip}: not also from {a.lan_ip}")
        for name, other in self.bindings.items():
            if name == a.name:
                continue
            if other.wg_pubkey == a.wg_pubkey:
                raise Refused(f"{a.name} presents {name}'s WireGuard key")
            if other.wg_ip == a.wg_ip:
                raise AddressConflict(name, a)

    def bind(self, name: str, wg_pubkey: str, wg_ip: str, lan_ip: str, wg_port: int) -> None:
        """Bind a name the owner approved to its key and addresses (replacing any earlier binding)."""
        for other, held in list(self.bindings.items()):
            if other != name and (held.wg_pubkey == wg_pubkey or held.wg_ip == wg_ip):
                raise Refused(f"{wg_ip} or that key is held by {other}")
        self.bindings[name] = Binding(wg_pubkey, wg_ip, lan_ip, wg_port, -1, self.wall())
        self.members.pop(name, None)

    def forget(self, name: str) -> bool:
        self.members.pop(name, None)
        return self.bindings.pop(name, None) is not None

    # -- what is known ------------------------------------------------------

    def live(self) -> list[Member]:
        now = self.clock()
        return sorted((m for m in self.members.values() if now - m.heard <= LIVE_SECONDS), key=lambda m: m.name)

    def silent_for(self) -> dict[str, float]:
        now = self.clock()
        return {name: now - m.heard for name, m in self.members.items()}

    def taken_wg_ips(self) -> set[str]:
        return {b.wg_ip for b in self.bindings.values()}

    def prune(self) -> list[str]:
        """Forget members not heard for PRUNE_AFTER; returns their names."""
        cutoff = self.wall() - PRUNE_AFTER
        gone = [name for name, b in self.bindings.items() if b.seen < cutoff and name not in self.members]
        gone += [name for name, m in self.members.items() if self.clock() - m.heard > PRUNE_AFTER]
        for name in set(gone):
            self.forget(name)
        return sorted(set(gone))

    def state(self) -> dict:
        """What survives a restart: the bindings, with each name's last sequence number."""
        return {name: vars(b) for name, b in sorted(self.bindings.items())}
