"""The node-agent daemon: announce, listen, and keep the node's part of the cluster in shape.

A thread broadcasts a signed announcement on the cluster LAN every TICK seconds,
so a slow step (systemctl waiting on a unit) never makes the node look dead to
its peers. The main loop receives announcements and, every TICK, reconciles:
wg0 peers with the members, SLURM and K3s with its role. Each step stands alone:
one failing (say, slurmd not up yet) is logged and retried on the next tick
without stopping the others.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

from clusteros_node import identity as identity_mod
from clusteros_node import k3s as k3s_mod
from clusteros_node import membership, messages, slurm, system, wireguard

PORT = 7946
TICK = 2.0
SETTLE = 3 * TICK            # listen this long before choosing a controller
SECRET_FILE = Path("/etc/clusteros/cluster.secret")
STATE_DIR = Path("/run/clusteros")
KNOWN_FILE = Path("/var/lib/clusteros/known-nodes.json")
DROP_LOG_EVERY = 60.0


def log(message: str) -> None:
    print(message, flush=True)


class Agent:
    def __init__(self, spec: dict, me: identity_mod.Identity, secret: bytes):
        self.spec, self.me, self.secret = spec, me, secret
        self.cluster = spec["cluster"]["name"]
        self.key = messages.derive_key(secret, "clusteros announce")
        self.verifier = messages.Verifier(self.key, self.cluster)
        wg = spec["network"]["wireguard"]
        self.wg_ip = membership.wg_address(spec, me.index, me.name)
        self.wg_prefix = ipaddress.ip_network(wg["subnet"]).prefixlen
        self.wg_port = wg["port"]
        self.members = membership.Membership(self._load_known())
        self.slurm = slurm.Slurm()
        self.k3s = k3s_mod.K3s(spec["services"]["k3s"]["enabled"])
        self.started = time.monotonic()
        self.boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        self.controller: str | None = None
        self.errors: dict[str, str] = {}
        self.dropped: dict[str, float] = {}
        self.dropped_count = 0
        self.wg_pubkey = ""
        self.slurm_nodes: tuple[str, ...] = ()

    # -- network -------------------------------------------------------------

    def broadcast_address(self) -> str:
        if self.me.address:
            return str(ipaddress.ip_interface(self.me.address).network.broadcast_address)
        return "255.255.255.255"

    def lan_ip(self) -> str:
        return self.me.address.split("/")[0] if self.me.address else ""

    def announcement(self) -> bytes:
        return messages.encode(self.payload(), self.key)

    def payload(self) -> dict:
        return messages.new_payload({
            "cluster": self.cluster, "name": self.me.name, "index": self.me.index, "lan_ip": self.lan_ip(),
            "wg_ip": self.wg_ip, "wg_pubkey": self.wg_pubkey, "wg_port": self.wg_port,
            "cpus": os.cpu_count() or 1, "memory_mb": system.memory_mb(), "boot_id": self.boot_id,
            "slurm_nodes": list(self.slurm_nodes),
        })

    def receive(self, packet: bytes, sender: str) -> None:
        try:
            payload = self.verifier.verify(packet)
        except messages.Rejected as why:
            self.dropped_count += 1
            now = time.monotonic()
            if now - self.dropped.get(sender, -DROP_LOG_EVERY) >= DROP_LOG_EVERY:
                log(f"dropped a packet from {sender}: {why}")
                self.dropped[sender] = now
            return
        if payload["name"] == self.me.name:
            return   # our own broadcast, looped back: we count ourselves directly
        if self.members.update(payload, time.time()):
            log(f"member {payload['name']} at {payload['lan_ip']} (wg {payload['wg_ip']})")
            self._save_known()

    # -- reconciliation ------------------------------------------------------

    def reconcile(self) -> None:
        now = time.time()
        if self.members.update(self.payload(), now):
            self._save_known()
        live = self.members.live(now)
        self._step("wireguard", self._mesh)
        if time.monotonic() - self.started < SETTLE:
            return
        controller = membership.controller(self.spec, [m.name for m in live])
        if controller != self.controller:
            log(f"controller: {controller}")
            self.controller = controller
        if controller is None:
            return
        leader = self.members.members.get(controller)
        controller_ip = leader.wg_ip if leader else None
        if controller_ip is None:
            return
        role = "controller" if controller == self.me.name else "worker"
        if self.spec["services"]["slurm"]["enabled"]:
            self._step("slurm", lambda: self._slurm(role, controller, controller_ip, leader))
        self._step("k3s", lambda: self.k3s.ensure(role, self.secret, self.wg_ip, controller_ip))

    def _mesh(self) -> None:
        for change in wireguard.sync_peers(self.members.mesh_peers(self.me.name)):
            log(f"wg0: {change}")

    def _slurm(self, role: str, controller: str, controller_ip: str, leader: membership.Member) -> None:
        slurm.ensure_munge(self.secret)
        if role == "controller":
            nodes = dict(self.members.known)
            conf = slurm.render_conf(self.cluster, controller, controller_ip, nodes,
                                     self.spec["services"]["slurm"]["partitions"])
            self.slurm.as_controller(conf)
            self.slurm_nodes = tuple(sorted(nodes))
        else:
            self.slurm.as_worker(controller_ip, registered=self.me.name in leader.slurm_nodes)
            self.slurm_nodes = ()

    def _step(self, name: str, work) -> None:
        try:
            work()
            self.errors.pop(name, None)
        except Exception as exc:  # noqa: BLE001 - one step's failure must not stop the agent
            message = f"{type(exc).__name__}: {exc}"
            if self.errors.get(name) != message:
                log(f"{name}: {message} (retrying every {TICK:.0f}s)")
            self.errors[name] = message

    # -- state ---------------------------------------------------------------

    def _load_known(self) -> dict:
        try:
            return json.loads(KNOWN_FILE.read_text())
        except (OSError, ValueError):
            return {}

    def _save_known(self) -> None:
        system.write_if_changed(KNOWN_FILE, json.dumps(self.members.known, indent=2, sort_keys=True).encode())

    def status(self) -> dict:
        now = time.time()
        peers = wireguard.current_peers() if Path("/sys/class/net/wg0").exists() else {}
        by_key = {m.wg_pubkey: m.name for m in self.members.members.values()}
        return {
            "name": self.me.name, "lan_address": self.me.address, "wg_address": self.wg_ip,
            "role": "controller" if self.controller == self.me.name else ("worker" if self.controller else "electing"),
            "controller": self.controller,
            "members": [{"name": m.name, "lan_ip": m.lan_ip, "wg_ip": m.wg_ip, "live": m.live(now),
                         "last_seen": round(now - m.last_seen, 1)} for m in sorted(self.members.members.values(),
                                                                                   key=lambda m: m.name)],
            "wireguard": [{"peer": by_key.get(k, k[:8]), "endpoint": p["endpoint"],
                           "latest_handshake": p["latest_handshake"]} for k, p in sorted(peers.items())],
            "slurm": self.slurm.state() if self.spec["services"]["slurm"]["enabled"] else {"role": "disabled"},
            "k3s": self.k3s.state(),
            "dropped_packets": self.dropped_count,
            "errors": dict(self.errors),   # a copy: the announce thread writes it too
            "updated": now,
        }

    def write_status(self) -> None:
        system.write_if_changed(STATE_DIR / "status.json", (json.dumps(self.status(), indent=2) + "\n").encode())

    # -- main loop -----------------------------------------------------------

    def run(self) -> None:
        self.wg_pubkey = wireguard.ensure_keypair()
        self._step("wireguard", lambda: wireguard.ensure_interface(self.wg_ip, self.wg_prefix, self.wg_port))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", PORT))
        log(f"node-agent: {self.me.name}, LAN {self.me.address or '-'}, wg0 {self.wg_ip}, "
            f"announcing to {self.broadcast_address()}:{PORT}")
        threading.Thread(target=self._announce_forever, args=(sock,), name="announce", daemon=True).start()
        next_tick = 0.0
        while True:
            wait = next_tick - time.monotonic()
            if wait > 0:
                self._receive(sock, wait)
                continue
            # What arrived while the last reconcile ran must count before liveness is judged.
            while self._receive(sock, 0):
                pass
            self.reconcile()
            self.write_status()
            next_tick = time.monotonic() + TICK

    def _receive(self, sock: socket.socket, wait: float) -> bool:
        """Handle one announcement if one arrives within `wait` seconds."""
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            return False
        packet, (sender, _) = sock.recvfrom(messages.MAX_PACKET + 1)
        self.receive(packet, sender)
        return True

    def _announce_forever(self, sock: socket.socket) -> None:
        while True:
            try:
                sock.sendto(self.announcement(), (self.broadcast_address(), PORT))
                self.errors.pop("announce", None)
            except OSError as exc:
                self.errors["announce"] = str(exc)
            time.sleep(TICK)


def main(spec: dict) -> int:
    try:
        me = identity_mod.load(STATE_DIR)
    except (OSError, ValueError, TypeError) as exc:
        log(f"node-agent: no identity in {STATE_DIR}/identity.json ({exc}): has clusteros-identity.service run?")
        return 1
    Agent(spec, me, SECRET_FILE.read_bytes().strip()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(Path("/etc/clusteros/spec.json").read_text())))
