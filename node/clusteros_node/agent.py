"""The node-agent daemon of a member: announce, listen, and keep the node's part of the cluster in shape.

A thread broadcasts a signed announcement on the cluster LAN every TICK seconds, so a
slow step (systemctl waiting on a unit) never makes the node look dead. The main loop
takes what arrives (a bounded number of packets per tick, and a bounded rate per
sender, so a flood cannot starve the rest) and every TICK reconciles: wg0 peers with
the members, the controller (clusteros_node.election), SLURM, K3s and the clock with
the node's role; in a virtual machine it also gives the host back the node's cold page
cache (clusteros_node.hostmemory). Each step stands alone: one failing is logged and
retried next tick. Nothing a packet carries can stop the agent: every message is checked field by field
(clusteros_node.validate) and against what members hold (clusteros_node.registry), and
an error while handling one drops that message, with a log line.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from clusteros_node import addressing, control, election, enroll, firewall, hostmemory, messages, slurm, system, timesync
from clusteros_node import transfer
from clusteros_node import accounting as accounting_mod
from clusteros_node import credential as credential_mod
from clusteros_node import wifi
from clusteros_node import home as home_mod
from clusteros_node import k3s as k3s_mod
from clusteros_node import validate, wireguard
from clusteros_node.identity import Identity
from clusteros_node.places import Places
from clusteros_node.ratelimit import Limiter, Throttled
from clusteros_node.registry import AddressConflict, Refused, Registry

PORT = 7946
TICK = 2.0
SETTLE = 3 * TICK              # listen this long before choosing a controller
MAX_PER_TICK = 512             # packets taken between two reconciliations
# Its own packets it knows again by content, from the last this many it sent: the loop that reads
# them can be held for tens of seconds (a role's start under emulation) while the announce thread
# sends one every tick, and one it no longer knew would be logged as a clone of it.
SENT_KEPT = 64
SENDER_RATE, SENDER_BURST = 10.0, 40.0
ROTATION_GRACE = 60.0          # the previous credential's announcements are taken this long after a rotation
SUPERSEDED_AFTER = 60.0        # hearing only a newer generation for this long: this node's credential was replaced
NEWER_HEARD_WITHIN = 10.0      # ...and hearing it still: one old or forged header is not a cluster that moved on
PRUNE_EVERY = 3600.0
SAVE_EVERY = 10.0
# A node in shape is checked every CHECK_STEADY_EVERY ticks, not every tick (see Agent._tick).
CHECK_STEADY_EVERY = 5


def log(message: str) -> None:
    print(message, flush=True)


class Sequence:
    """Announcement numbers that only go up, across restarts: a block is written to disk before use."""

    BLOCK = 1_000_000

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        try:
            stored = int(path.read_text())
        except (OSError, ValueError):
            stored = 0
        self.next, self.limit = stored + 1, stored
        self._reserve()

    def _reserve(self) -> None:
        self.limit += self.BLOCK
        system.write_if_changed(self.path, f"{self.limit}\n".encode(), mode=0o600)

    def take(self) -> int:
        with self.lock:
            if self.next > self.limit:
                self._reserve()
            self.next += 1
            return self.next - 1


class Agent:
    def __init__(self, spec: dict, me: Identity, credential: credential_mod.Credential, places: Places,
                 apply_system: bool = True):
        self.spec, self.me, self.credential, self.places, self.apply_system = spec, me, credential, places, apply_system
        self.cluster = spec["cluster"]["name"]
        self.lock = threading.RLock()
        self.retiring: dict[int, tuple[bytes, float]] = {}
        self.wg_pubkey = self._keypair()
        self.wg_ip = self._wg_address()
        self.wg_prefix = int(spec["network"]["wireguard"]["subnet"].split("/")[1])
        self.wg_port = spec["network"]["wireguard"]["port"]
        self.registry = Registry(self._load_json("members.json"))
        self.sequence = Sequence(places.lib / "announce-seq")
        self.limiter, self.noisy = Limiter(SENDER_RATE, SENDER_BURST), Throttled(60.0)
        self.pending, self.approvals = enroll.Pending(), enroll.Approvals()
        self.slurm = slurm.Slurm(pushed_file=places.lib / "slurm-pushed.conf")
        self.k3s = k3s_mod.K3s(spec["services"]["k3s"]["enabled"])
        self.home = home_mod.Home()
        self.accounting = accounting_mod.Accounting(reached_file=places.lib / "slurmdbd-reached")
        self.host_memory = hostmemory.HostMemory(time.monotonic())
        self.listening_since = time.monotonic()   # run() sets it again once the socket is open
        self.boot_id = _read(Path("/proc/sys/kernel/random/boot_id")) or "00000000-0000-0000-0000-000000000000"
        self.controller: str | None = None
        self.errors: dict[str, str] = {}
        self.counts = {"dropped": 0, "rate_limited": 0, "refused": 0}
        self.newer_generation = 0          # the highest generation heard above this node's (headers: unchecked)
        self.newer_heard = 0.0
        self.last_accepted = time.monotonic()
        self.last_saved = self.last_pruned = 0.0
        self.outbox: list[bytes] = []        # unsigned messages (offers) for the announce thread to send
        self.sent: deque[bytes] = deque(maxlen=SENT_KEPT)   # looped back to it: dropped unopened
        # Members this node was to hand its newer generation to and has not reached yet (name -> the
        # WireGuard key it was bound to then), and whether a round of handing on is under way.
        self.behind: dict[str, str] = {}
        self.handing_on = False
        # What the node stood on when a whole reconciliation last found it in shape (None: it did
        # not), how many ticks have passed it by since, and the steps that poll (retry next tick).
        self.steady_on: tuple | None = None
        self.passed_by = 0
        self.polling: set[str] = set()
        self.failed: set[str] = set()      # the steps that failed in the last reconciliation
        self.unfinished: dict[str, Callable[[], None]] = {}   # steps done once that failed: tried every tick
        self.server: transfer.Server | None = None   # the credential service, on wg0's address

    # -- who this node is ---------------------------------------------------

    def _keypair(self) -> str:
        if self.apply_system:
            return wireguard.ensure_keypair(self.places.lib / "wireguard")
        import base64   # --no-system (the rack test): no WireGuard, a stand-in key to be bound to
        key = self.places.lib / "wg-standin.pub"
        if not key.exists():
            system.write_if_changed(key, base64.b64encode(os.urandom(32)) + b"\n")
        return key.read_text().strip()

    def _wg_address(self) -> str | None:
        """Node i's plan address; otherwise the one an approval gave it or it claimed (kept on disk)."""
        if self.me.index is not None:
            return addressing.wg_address(self.spec["network"]["wireguard"]["subnet"], self.me.index)
        return _read(self.places.lib / "wg-address")

    def _claim_wg_address(self, taken: set[str]) -> None:
        self.wg_ip = addressing.free_wg_address(self.spec["network"]["wireguard"]["subnet"], taken)
        system.write_if_changed(self.places.lib / "wg-address", f"{self.wg_ip}\n".encode())
        log(f"wg0: this node takes {self.wg_ip}")
        self._until_done("wg0", self._wg_interface)
        self._serve_credentials()

    @property
    def lan_ip(self) -> str:
        return self.me.address.split("/")[0] if self.me.address else ""

    def keys(self) -> dict[int, bytes]:
        now = time.monotonic()
        self.retiring = {g: (k, until) for g, (k, until) in self.retiring.items() if until > now}
        return {self.credential.generation: self.credential.announce_key} | {g: k for g, (k, _) in self.retiring.items()}

    # -- what this node says ------------------------------------------------

    def payload(self) -> dict:
        return {"cluster": self.cluster, "generation": self.credential.generation, "name": self.me.name,
                "index": self.me.index, "lan_ip": self.lan_ip, "wg_ip": self.wg_ip, "wg_pubkey": self.wg_pubkey,
                "wg_port": self.wg_port, "cpus": os.cpu_count() or 1,
                "memory_mb": system.read_every("memory", system.memory_mb, ticks=15),
                "boot_id": self.boot_id, "seq": self.sequence.take(), "controller": self.controller,
                "slurm_nodes": list(self.slurm_nodes())}

    def announcement(self) -> bytes:
        return messages.encode_announcement(self.payload(), self.credential.generation, self.credential.announce_key)

    def slurm_nodes(self) -> tuple[str, ...]:
        return tuple(sorted(self.registry.bindings)) if self.controller == self.me.name else ()

    # -- what it hears ------------------------------------------------------

    def receive(self, packet: bytes, sender: str) -> None:
        """Handle one packet. Nothing it holds can raise past here."""
        if sender == self.lan_ip and packet in self.sent:
            return   # its own broadcast, looped back: not worth a MAC check (another machine on its address is)
        if not self.limiter.allow(sender):
            self.counts["rate_limited"] += 1
            return
        try:
            with self.lock:
                kind = messages.kind_of(packet)
                if kind == messages.ANNOUNCE:
                    self._heard_announcement(packet, sender)
                elif kind == messages.ENROLL:
                    self._heard_request(packet)
        except (messages.Rejected, validate.Invalid, Refused) as why:
            self._dropped(sender, why)
        except Exception as why:   # noqa: BLE001 - a bug must cost one message, never the agent
            self._dropped(sender, f"unexpected {type(why).__name__}: {why}")

    def _heard_announcement(self, packet: bytes, sender: str) -> None:
        generation = messages.generation_of(packet)
        if generation > self.credential.generation and self._bound_elsewhere(sender):
            self.newer_generation, self.newer_heard = max(self.newer_generation, generation), time.monotonic()
        a = validate.announcement(messages.open_announcement(packet, self.keys()), self.spec)
        if a.name == self.me.name:   # (its own broadcast never gets here: receive() drops it first)
            raise Refused(f"{sender} claims this node's name")   # a copy of it, or a clone on its address
        try:
            changed = self.registry.accept(a, sender)
        except AddressConflict as conflict:
            self._settle_conflict(conflict)
            raise
        self.last_accepted = time.monotonic()
        if generation == self.credential.generation:
            self.behind.pop(a.name, None)
        if changed:
            self.pending.drop(a.wg_pubkey)   # approved on another member: no longer asking
            log(f"member {a.name} at {a.lan_ip} (wg {a.wg_ip})")

    def _bound_elsewhere(self, sender: str) -> bool:
        """`sender` is the LAN address of another member this node is bound to. Only theirs can say the
        cluster moved on: a generation in a header is unchecked without that generation's key."""
        return any(b.lan_ip == sender for name, b in self.registry.bindings.items() if name != self.me.name)

    def _settle_conflict(self, conflict: AddressConflict) -> None:
        """Two machines picked one wg0 address: the one with the lower key keeps it."""
        if conflict.holder == self.me.name and self.me.index is None and conflict.claimant.wg_pubkey < self.wg_pubkey:
            log(f"wg0: {conflict.claimant.name} claims {self.wg_ip} too and wins the tie; choosing another")
            self._claim_wg_address(self.registry.taken_wg_ips() | {self.wg_ip})

    def _heard_request(self, packet: bytes) -> None:
        req = enroll.request(messages.open_unsigned(packet), self.spec)
        if req.wg_pubkey in self.approvals.by_key:
            return
        if req.wg_pubkey not in self.pending.requests:
            log(f"{req.name} at {req.lan_ip} asks to join, key fingerprint {req.fingerprint}: "
                f"approve it with `clusteros-node approve {req.fingerprint}`")
        self.pending.heard(req)

    def _dropped(self, sender: str, why) -> None:
        self.counts["refused" if isinstance(why, Refused) else "dropped"] += 1
        # Once a minute per sender and kind of fault (its exception type: a handful, whatever a
        # sender sends): a flood adds no lines, and a refused packet does not hide a forged one.
        if self.noisy.due(f"{sender} {type(why).__name__}"):
            log(f"dropped a packet from {sender}: {why}")

    # -- keeping the node in shape --------------------------------------------

    def reconcile(self) -> None:
        with self.lock:
            for name, work in list(self.unfinished.items()):
                self._until_done(name, work)
            self._record_self()
            if self.wg_ip is None and self._settled():
                self._claim_wg_address(self.registry.taken_wg_ips())
            self._step("wireguard", self._mesh)
            self._housekeeping()
            self._step("hand-on", self._hand_on_behind)
            if not self._settled() or self.wg_ip is None:
                return
            self._elect()
            self._roles()
            self._offer_approvals()

    def _settled(self) -> bool:
        return time.monotonic() - self.listening_since >= SETTLE

    def listen(self, interface: str | None) -> socket.socket:
        """The socket the agent hears its peers on. Settling and forming count from here, not from
        the agent's start: under emulation a start takes seconds (12 s, seen on a rebooted node), and a
        node that used them up chose a controller before it heard anyone: itself, beside the
        controller the others had taken meanwhile, two slurmctlds for 40 s."""
        sock = open_socket(interface)
        self.listening_since = time.monotonic()
        return sock

    def _record_self(self) -> None:
        if self.wg_ip is None or not self.lan_ip:
            return
        payload = self.payload()
        self.registry.record(validate.announcement(payload, self.spec))

    def _elect(self) -> None:
        live = self.registry.live()
        view = election.View(
            live=frozenset(m.name for m in live), follows={m.name: m.last.controller for m in live},
            current=self.controller, silent_for=self.registry.silent_for(),
            marked=tuple(n["name"] for n in self.spec["nodes"] if n["role"] == "controller"),
            listed=tuple(n["name"] for n in self.spec["nodes"]), up_for=time.monotonic() - self.listening_since)
        chosen = election.choose(view, grace=float(self.spec["cluster"]["controller_grace"]))
        if chosen != self.controller:
            log(f"controller: {chosen}")
            self.controller = chosen

    def _roles(self) -> None:
        leader = self.registry.bindings.get(self.controller) if self.controller else None
        if leader is None:
            return
        role = "controller" if self.controller == self.me.name else "worker"
        if not self.apply_system:
            return
        slurm_spec = self.spec["services"]["slurm"]
        if slurm_spec["enabled"]:
            if slurm_spec["shared_home"]:
                self._step("home", self._home)
            if slurm_spec["accounting"] and self.me.name == slurm_spec["storage_node"]:
                self._step("accounting", self._accounting)
            self._step("slurm", lambda: self._slurm(role, leader.wg_ip))
        self._step("k3s", lambda: self.k3s.ensure(role, self.credential.secret, self.wg_ip, leader.wg_ip))
        self._step("time", lambda: timesync.ensure(role, leader.wg_ip))

    def _storage_wg_ip(self) -> str:
        """The storage node is one the spec lists, so its wg0 address is fixed by its index."""
        name = self.spec["services"]["slurm"]["storage_node"]
        index = next(n["index"] for n in self.spec["nodes"] if n["name"] == name)
        return addressing.wg_address(self.spec["network"]["wireguard"]["subnet"], index)

    def _home(self) -> None:
        storage = self.spec["services"]["slurm"]["storage_node"]
        if self.me.name == storage:
            self.home.as_server(self.spec["network"]["wireguard"]["subnet"])
        elif storage in {m.name for m in self.registry.live()}:   # mounted once there is a way to it
            self.home.as_client(self._storage_wg_ip())

    def _accounting(self) -> None:
        slurm.ensure_munge(self.credential.secret)
        self.accounting.ensure()

    def _slurm(self, role: str, controller_ip: str) -> None:
        slurm.ensure_munge(self.credential.secret)
        if role == "controller":
            slurm_spec = self.spec["services"]["slurm"]
            nodes = {name: {"wg_ip": b.wg_ip, "cpus": b.cpus, "memory_mb": b.memory_mb}
                     for name, b in self.registry.bindings.items()}
            dbd = self._storage_wg_ip() if slurm_spec["accounting"] else None
            if dbd is not None and not self.accounting.reachable(dbd):
                dbd = None   # slurmctld with a database it never reached, and no saved state, exits
                self.polling.add("accounting")
            self.slurm.as_controller(slurm.render_conf(self.cluster, self.me.name, controller_ip, nodes,
                                                       slurm_spec["partitions"], accounting_host=dbd))
        else:
            leader = self.registry.members.get(self.controller)
            registered = leader is not None and self.me.name in leader.last.slurm_nodes
            self.slurm.as_worker(controller_ip, registered=registered)

    def _mesh(self) -> None:
        if not self.apply_system or self.wg_ip is None:
            return
        peers = {b.wg_pubkey: {"name": name, "endpoint": f"{b.lan_ip}:{b.wg_port}", "allowed_ip": f"{b.wg_ip}/32"}
                 for name, b in self.registry.bindings.items() if name != self.me.name and b.lan_ip}
        for change in wireguard.sync_peers(peers):
            log(f"wg0: {change}")

    def _serve_credentials(self) -> None:
        """The credential service (approved candidates fetch from it, a rotation is pushed to it) on
        this node's wg0 address; moved when the address is (one claimed after the start, as by a
        machine the spec does not list, or given up to a conflict)."""
        if not (self.wg_ip and self.apply_system) or (self.server and self.server.address == self.wg_ip):
            return
        if self.server:
            self.server.close()
            self.server = None
        self._until_done("credential service", lambda: setattr(self, "server", transfer.Server(
            self.wg_ip, enroll.CREDENTIAL_PORT, self.credential_for, self.pushed, log)))

    def _wg_interface(self) -> None:
        if self.apply_system and self.wg_ip is not None:
            wireguard.ensure_interface(self.wg_ip, self.wg_prefix, self.wg_port, self.places.lib / "wireguard")

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.newer_generation and now - self.newer_heard > SUPERSEDED_AFTER:
            self.newer_generation = 0   # not heard for a minute: no cluster that moved on
        if (self.newer_generation and now - self.last_accepted > SUPERSEDED_AFTER
                and now - self.newer_heard < NEWER_HEARD_WITHIN):
            system.write_if_changed(self.places.lib / "superseded", f"{self.credential.generation}\n".encode())
            log(f"credential: the cluster moved on to generation {self.newer_generation}; this node's "
                f"({self.credential.generation}) no longer counts: asking to join again")
            raise SystemExit(3)
        if now - self.last_pruned >= PRUNE_EVERY:
            self.last_pruned = now
            for name in self.registry.prune():
                log(f"forgot {name}: not heard for a week")
        if self.apply_system:
            self._step("host memory", lambda: self.host_memory.tick(now))

    def _save_members(self) -> None:
        """The member table, kept across restarts: the agent's own record, which changes with every
        announcement (their numbers), not a change of the node."""
        now = time.monotonic()
        if now - self.last_saved >= SAVE_EVERY:
            self.last_saved = now
            # Compact, as status.json: json's C encoder (indent= takes the Python one, 28 ms a save
            # under emulation); `python3 -m json.tool` shows it to people.
            system.write_if_changed(self.places.lib / "members.json",
                                    (json.dumps(self.registry.state()) + "\n").encode(), mode=0o600)

    def _until_done(self, name: str, work) -> None:
        """A step done once (wg0, the firewall, the credential service), tried again every tick until it is."""
        self._step(name, work)
        if name in self.errors:
            self.unfinished[name] = work
        else:
            self.unfinished.pop(name, None)

    def _step(self, name: str, work) -> None:
        try:
            work()
            self.errors.pop(name, None)
        except Exception as exc:  # noqa: BLE001 - one step's failure must not stop the agent
            self.failed.add(name)
            message = f"{type(exc).__name__}: {exc}"
            if self.errors.get(name) != message:
                log(f"{name}: {message} (retrying every {TICK:.0f}s)")
            self.errors[name] = message

    def _load_json(self, name: str) -> dict:
        try:
            data = json.loads((self.places.lib / name).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    # -- enrollment and rotation (from the control socket and wg0) -----------------

    def _offer_approvals(self) -> None:
        for approval in self.approvals.current():
            offer = {"cluster": self.cluster, "to": approval.request.wg_pubkey, "wg_ip": approval.wg_ip,
                     "server_pubkey": self.wg_pubkey, "server_endpoint": f"{self.lan_ip}:{self.wg_port}",
                     "server_wg_ip": self.wg_ip}
            self.outbox.append(messages.encode_unsigned(messages.OFFER, offer))

    def approve(self, fingerprint: str) -> str:
        with self.lock:
            req = self.pending.find(fingerprint)
            if req is None:
                raise ValueError(f"no machine asking to join has the fingerprint {fingerprint} "
                                 "(`clusteros-node status` lists those that do)")
            bound = self.registry.bindings.get(req.name)
            if bound is not None and bound.wg_pubkey != req.wg_pubkey:
                raise ValueError(f"{req.name} is bound to another key: if that machine is gone for good, "
                                 f"`clusteros-node forget {req.name}` first")
            wg_ip = bound.wg_ip if bound else self._address_for(req)
            self.registry.bind(req.name, req.wg_pubkey, wg_ip, req.lan_ip, req.wg_port)
            self.approvals.add(req, wg_ip)
            self.pending.drop(req.wg_pubkey)
        log(f"approved {req.name} ({req.fingerprint}): wg0 {wg_ip}")
        return f"approved {req.name} ({req.fingerprint}): it takes wg0 {wg_ip} and joins within a minute"

    def _address_for(self, req: enroll.Request) -> str:
        """A machine in the spec's MAC range takes its plan address; any other the lowest free one above them."""
        subnet = self.spec["network"]["wireguard"]["subnet"]
        if req.index is not None:
            return addressing.wg_address(subnet, req.index)
        return addressing.free_wg_address(subnet, self.registry.taken_wg_ips())

    def forget(self, name: str) -> str:
        with self.lock:
            if name == self.me.name or not self.registry.forget(name):
                raise ValueError(f"{name} is not a member this node knows (or is this node)")
            self.behind.pop(name, None)   # forgotten, even in a rotation's grace: never handed it
        log(f"forgot {name}, on request")
        return f"forgot {name}: a machine with that name can be approved (or join) again"

    def credential_for(self, peer: str) -> bytes | None:
        """The credential, for the wg0 address of a candidate this member approved (transfer.Server)."""
        with self.lock:
            approval = self.approvals.served_from(peer)
            if approval is None:
                return None
            self.approvals.done(approval.request.wg_pubkey)
            return self.credential.raw

    def rotate(self, raw: bytes, hand_on: bool = True) -> str:
        """Take a newer credential the owner signed; the member it was given to hands it on to the others.

        It hands it to the live members at once, and to every other member it knew then (by name
        and WireGuard key) as soon as it hears one while the previous generation's grace lasts:
        one missed, or out of reach for a moment, would be cut off for good. A machine it did not
        know then, or forgot since, is never handed it."""
        new = credential_mod.parse(raw, self.cluster, self.places.owner_key)
        with self.lock:
            if new.generation <= self.credential.generation:
                return f"already at generation {self.credential.generation}"
            old = self.credential
            self.retiring[old.generation] = (old.announce_key, time.monotonic() + ROTATION_GRACE)
            credential_mod.keep(new, self.places.lib / "credential.json")
            self.credential = new
            if self.newer_generation <= new.generation:
                self.newer_generation = 0
            self.behind = {name: b.wg_pubkey for name, b in self.registry.bindings.items()
                           if name != self.me.name} if hand_on else {}
            live = self._reachable(self.behind)
            self.handing_on = bool(live)   # no tick's round while the first one is under way
        log(f"credential: generation {new.generation} ({new.fingerprint}) replaces {old.generation}")
        if self.apply_system and new.wifi != old.wifi:
            device = wifi.follow(new, self.places, restart=True)
            log("credential: its WiFi network changed; "
                + (f"clusteros-wifi@{device} restarted" if device else "no WLAN device here"))
        reached = self._hand_on_round(live, raw) if live else []
        with self.lock:
            left = sorted(self.behind)
        said = f"generation {new.generation} here" + (f", and handed to {', '.join(reached)}" if reached else "")
        if left:
            said += (f"; not yet to {', '.join(left)}: handed on when heard, for the {ROTATION_GRACE:.0f} s "
                     "the previous generation still counts")
        return said

    def _reachable(self, members: dict[str, str]) -> dict[str, str]:
        """Of `members` (name -> WireGuard key), the live ones still bound to that key: name -> wg0 address."""
        live = {m.name for m in self.registry.live()}
        return {name: b.wg_ip for name, key in members.items()
                if name in live and (b := self.registry.bindings.get(name)) is not None and b.wg_pubkey == key}

    def _hand_on_behind(self) -> None:
        """Each tick: a round of handing the credential to the members still behind that are live
        now, in a thread of its own (one out of reach costs a connection timeout, which must not
        hold the tick)."""
        self.keys()   # drops the generations whose grace is over
        if not self.retiring:
            self.behind.clear()   # the grace is over: one still behind asks to join again
        if self.handing_on or not self.behind:
            return
        targets = self._reachable(self.behind)
        if targets:
            self.handing_on = True   # before the start: a quick round may end before start() returns
            try:
                threading.Thread(target=self._hand_on_round, args=(targets, self.credential.raw),
                                 name="hand-on", daemon=True).start()
            except RuntimeError:     # no thread to be had: the next tick tries again
                self.handing_on = False
                raise

    def _hand_on_round(self, targets: dict[str, str], raw: bytes) -> list[str]:
        """Push `raw` to every target at once; those that took it are no longer behind. Returns them."""
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                took = dict(zip(targets, pool.map(lambda t: self._push(*t, raw), targets.items())))
            reached = sorted(name for name, ok in took.items() if ok)
            if reached:
                log(f"credential: handed on to {', '.join(reached)}")
            with self.lock:
                if self.credential.raw == raw:   # not a generation a later rotation replaced meanwhile
                    for name in reached:
                        self.behind.pop(name, None)
            return reached
        finally:
            self.handing_on = False

    def _push(self, name: str, wg_ip: str, raw: bytes) -> bool:
        try:
            transfer.push(wg_ip, enroll.CREDENTIAL_PORT, raw, device=wireguard.INTERFACE if self.apply_system else None)
            return True
        except OSError as why:
            if self.noisy.due(f"push {name}"):
                log(f"credential: could not hand the new generation to {name}: {why} (tried again while the grace lasts)")
            return False

    def pushed(self, raw: bytes, peer: str) -> None:
        with self.lock:
            if peer not in {b.wg_ip for b in self.registry.bindings.values()}:
                raise ValueError("a credential pushed from an address no member holds")
        log(f"credential: {self.rotate(raw, hand_on=False)} (pushed from {peer})")

    def control(self, request: dict) -> str:
        if "approve" in request:
            return self.approve(str(request["approve"]))
        if "forget" in request:
            return self.forget(str(request["forget"]))
        if "rotate" in request:
            return self.rotate(str(request["rotate"]).encode())
        raise ValueError("unknown request")

    # -- status -------------------------------------------------------------

    def status(self) -> dict:
        with self.lock:
            live = {m.name for m in self.registry.live()}
            silent = self.registry.silent_for()
            peers = wireguard.current_peers() if self.apply_system and Path("/sys/class/net/wg0").exists() else {}
            by_key = {b.wg_pubkey: name for name, b in self.registry.bindings.items()}
            return {
                "mode": "member", "name": self.me.name, "lan_address": self.me.address, "wg_address": self.wg_ip,
                "role": "controller" if self.controller == self.me.name else ("worker" if self.controller else "electing"),
                "controller": self.controller,
                "credential": {"generation": self.credential.generation, "id": self.credential.fingerprint},
                "members": [{"name": name, "lan_ip": b.lan_ip, "wg_ip": b.wg_ip, "live": name in live,
                             "last_seen": round(silent[name], 1) if name in silent else None}
                            for name, b in sorted(self.registry.bindings.items())],
                "pending": [{"name": r.name, "lan_ip": r.lan_ip, "fingerprint": r.fingerprint, "asked": round(age)}
                            for r, age in self.pending.current()],
                "wireguard": [{"peer": by_key.get(k, k[:8]), "endpoint": p["endpoint"],
                               "latest_handshake": p["latest_handshake"]} for k, p in sorted(peers.items())],
                "slurm": self.slurm.state() if self.spec["services"]["slurm"]["enabled"] else {"role": "disabled"},
                "k3s": self.k3s.state() if self.apply_system else "not applied",
                "storage": self._storage_state(),
                "dropped_packets": self.counts["dropped"], "refused_packets": self.counts["refused"],
                "rate_limited_packets": self.counts["rate_limited"],
                "newer_credential_seen": self.newer_generation or None,
                "errors": dict(self.errors), "updated": time.time(),
            }

    def _storage_state(self) -> dict:
        slurm_spec = self.spec["services"]["slurm"]
        if not (self.apply_system and slurm_spec["enabled"]):
            return {"node": slurm_spec["storage_node"]}
        state = {"node": slurm_spec["storage_node"]}
        if slurm_spec["shared_home"]:
            state["home"] = self.home.state()
        if slurm_spec["accounting"] and self.me.name == slurm_spec["storage_node"]:
            state["accounting"] = self.accounting.state()
        return state

    def write_status(self) -> None:
        # Compact: json's C encoder (indent= takes the Python one, 2 ms a tick under emulation);
        # `clusteros-node status --json` indents it for people.
        system.write_if_changed(self.places.run / "status.json", (json.dumps(self.status()) + "\n").encode())

    # -- main loop ----------------------------------------------------------

    def run(self) -> None:
        self._until_done("wg0", self._wg_interface)
        if self.apply_system:
            self._until_done("firewall", lambda: firewall.apply(self.me.interface, PORT))
        sock = self.listen(self.me.interface)
        self._serve_credentials()
        control.Server(self.places.control_socket, self.control, log)
        log(f"node-agent: {self.me.name}, LAN {self.me.address or '-'}, wg0 {self.wg_ip or '(to be chosen)'}, "
            f"credential generation {self.credential.generation}, announcing to {broadcast(self.me)}:{PORT}")
        threading.Thread(target=self._announce_forever, args=(sock,), name="announce", daemon=True).start()
        loop(sock, self.receive, self._tick, self._excess)

    def _tick(self) -> None:
        """Keep the node in shape, then say how it is.

        Under emulation a reconciliation costs ~60 ms of a node's CPU, three quarters of what an
        idle node spends. So when the last one found the node in shape (it wrote no file, ran no
        command but queries, no step failed or polled) and what it acts on is still as it was (see
        `_standing`), the next CHECK_STEADY_EVERY - 1 ticks only record this node as live: a file
        or unit changed behind the agent's back is put right within 10 s instead of 2, and any
        change it acts on (a member, an announcement, the controller, a unit) within a tick."""
        system.new_tick()
        with self.lock:
            standing = self._standing()
            if (standing is not None and standing == self.steady_on and system.units_steady()
                    and self.passed_by < CHECK_STEADY_EVERY - 1):
                self.passed_by += 1
                self._record_self()
            else:
                changes = system.changes
                self.polling.clear()
                self.failed.clear()
                self.reconcile()
                # Every unit steady as the reconciliation left it (one that read their states
                # again, as every STEADY_TICKS, knows them afresh).
                found_in_shape = (system.changes == changes and not self.polling and not self.failed
                                  and system.units_steady())
                self.steady_on = standing if found_in_shape and self._standing() == standing else None
                self.passed_by = 0
            self._save_members()
        self.write_status()

    def _standing(self) -> tuple | None:
        """What a reconciliation acts on, when the node is where it can be steady: settled, led by a
        live controller every live member follows, all on this credential (none newer heard), no
        machine being approved or handed a credential. None when it is not. (Units: `_tick`.)"""
        if (not self._settled() or self.wg_ip is None or self.controller is None
                or self.newer_generation > self.credential.generation or self.behind or self.handing_on
                or self._in_rotation_grace() or self.approvals.current()):
            return None
        live = [m.last for m in self.registry.live()]
        if (self.controller not in {a.name for a in live}
                or any(a.generation != self.credential.generation or a.controller != self.controller for a in live)):
            return None
        bound = tuple((name, b.wg_pubkey, b.wg_ip, b.lan_ip, b.wg_port, b.cpus, b.memory_mb)
                      for name, b in sorted(self.registry.bindings.items()))
        return self.controller, self.wg_ip, self.lan_ip, tuple(a.standing() for a in live), bound

    def _in_rotation_grace(self) -> bool:
        """The previous generation still counts (`keys` forgets it only when a packet comes: a
        cluster of one hears none)."""
        now = time.monotonic()
        return any(until > now for _, until in self.retiring.values())

    def _send(self, sock: socket.socket, packet: bytes) -> None:
        self.sent.append(packet)
        sock.sendto(packet, (broadcast(self.me), PORT))

    def _excess(self) -> None:
        self.counts["rate_limited"] += 1

    def _announce_forever(self, sock: socket.socket) -> None:
        while True:
            try:
                if self.wg_ip and self.lan_ip:
                    self._send(sock, self.announcement())
                while self.outbox:
                    self._send(sock, self.outbox.pop())
                self.errors.pop("announce", None)
            except OSError as exc:
                self.errors["announce"] = str(exc)
            time.sleep(TICK)


# --------------------------------------------------------------------------
# Shared by members and candidates


def open_socket(interface: str | None) -> socket.socket:
    """UDP on PORT, on the cluster LAN's interface only (SO_BINDTODEVICE), broadcast allowed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if interface:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.bind(("", PORT))
    return sock


def broadcast(me: Identity) -> str:
    import ipaddress
    return str(ipaddress.ip_interface(me.address).network.broadcast_address) if me.address else "255.255.255.255"


def loop(sock: socket.socket, receive, tick, on_excess=lambda: None, budget: int = MAX_PER_TICK) -> None:
    """Handle packets until the next tick, then tick; for ever. Past `budget` packets in one tick the
    rest are read and thrown away (`on_excess` counts them): a flood costs reads, and the tick comes on time."""
    next_tick = 0.0
    while True:
        taken = 0
        while (wait := next_tick - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], wait)
            if not ready:
                break
            packet, (sender, _) = sock.recvfrom(messages.MAX_PACKET + 1)
            if taken < budget:
                receive(packet, sender)
                taken += 1
            else:
                on_excess()
        tick()
        next_tick = time.monotonic() + TICK


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
