"""The node-agent of a machine without a credential: it asks to join, and waits for its owner.

It shows its WireGuard key's fingerprint on the console (and in `clusteros-node status`),
asks every TICK seconds on the cluster LAN, and when a member answers with an offer for
its key, sets up wg0 with that member alone and fetches the credential through it (see
clusteros_node.enroll). It keeps the credential only if the owner's key signed it; then
it exits, and systemd starts the agent again, as a member.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from clusteros_node import agent, enroll, messages, system, transfer, validate, wireguard
from clusteros_node import credential as credential_mod
from clusteros_node.identity import Identity
from clusteros_node.places import Places

CONSOLE = Path("/dev/console")
ACTIVE_CONSOLES = Path("/sys/class/tty/console/active")   # e.g. "ttyS0 tty0": the kernel's console= list
ISSUE = Path("/run/issue.d/50-clusteros.issue")


class Candidate:
    def __init__(self, spec: dict, me: Identity, places: Places, why: str, apply_system: bool = True):
        self.spec, self.me, self.places, self.why, self.apply_system = spec, me, places, why, apply_system
        self.cluster = spec["cluster"]["name"]
        self.wg_pubkey = wireguard.ensure_keypair(places.lib / "wireguard")
        self.fingerprint = enroll.fingerprint(self.wg_pubkey)
        self.tried: dict[str, float] = {}
        self.last_error = ""

    def request(self) -> bytes:
        return messages.encode_unsigned(messages.ENROLL, {
            "cluster": self.cluster, "name": self.me.name, "lan_ip": self.me.address.split("/")[0],
            "wg_pubkey": self.wg_pubkey, "wg_port": self.spec["network"]["wireguard"]["port"], "index": self.me.index})

    def show(self) -> None:
        text = (f"ClusterOS: {self.me.name} is not a member of {self.cluster} ({self.why}).\n"
                f"  To let it join, on any member run:  clusteros-node approve {self.fingerprint}\n")
        for target in (*consoles(), ISSUE):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            except OSError:
                pass
        agent.log(text.rstrip())

    def receive(self, packet: bytes, sender: str) -> bool:
        """True once an offer for this machine brought a credential the owner signed."""
        try:
            if messages.kind_of(packet) != messages.OFFER:
                return False
            offer = enroll.offer(messages.open_unsigned(packet), self.spec)
        except (messages.Rejected, validate.Invalid):
            return False
        if offer.to != self.wg_pubkey or time.monotonic() - self.tried.get(offer.server_pubkey, -60) < 30:
            return False
        self.tried[offer.server_pubkey] = time.monotonic()
        return self.join(offer)

    def join(self, offer: enroll.Offer) -> bool:
        prefix = self.spec["network"]["wireguard"]["subnet"].split("/")[1]
        try:
            wireguard.ensure_interface(offer.wg_ip, int(prefix), self.spec["network"]["wireguard"]["port"],
                                       self.places.lib / "wireguard")
            wireguard.sync_peers({offer.server_pubkey: {"name": "approver", "endpoint": offer.server_endpoint,
                                                        "allowed_ip": f"{offer.server_wg_ip}/32"}})
            raw = self._fetch(offer.server_wg_ip)
            got = credential_mod.parse(raw, self.cluster, self.places.owner_key)
        except (OSError, ValueError, system.CommandError, credential_mod.BadCredential) as why:
            self.last_error = f"offer from {offer.server_endpoint}: {why}"
            agent.log(f"enroll: {self.last_error}")
            return False
        credential_mod.keep(got, self.places.lib / "credential.json")
        system.write_if_changed(self.places.lib / "wg-address", f"{offer.wg_ip}\n".encode())
        agent.log(f"enroll: approved by {offer.server_endpoint}; credential generation {got.generation}; "
                  "starting again as a member")
        ISSUE.unlink(missing_ok=True)
        return True

    def _fetch(self, server_wg_ip: str) -> bytes:
        """The credential, once the tunnel's first handshake is through (a few tries)."""
        for attempt in range(5):
            try:
                return transfer.fetch(server_wg_ip, enroll.CREDENTIAL_PORT,
                                      device=wireguard.INTERFACE if self.apply_system else None)
            except OSError:
                if attempt == 4:
                    raise
                time.sleep(2)
        raise OSError("unreachable")

    def write_status(self) -> None:
        status = {"mode": "candidate", "name": self.me.name, "lan_address": self.me.address, "wg_address": None,
                  "role": "candidate", "controller": None, "fingerprint": self.fingerprint, "why": self.why,
                  "last_error": self.last_error or None, "updated": time.time()}
        system.write_if_changed(self.places.run / "status.json", (json.dumps(status) + "\n").encode())

    def run(self) -> int:
        if not self.me.address:
            agent.log("enroll: no LAN address yet: waiting for one")
            return 1
        self.show()
        sock = agent.open_socket(self.me.interface)
        target = (agent.broadcast(self.me), agent.PORT)
        next_ask = 0.0
        while True:
            if time.monotonic() >= next_ask:
                self._ask(sock, target)
                self.write_status()
                next_ask = time.monotonic() + agent.TICK
            packet, sender = _receive(sock, max(0.0, next_ask - time.monotonic()))
            if packet is not None and self.receive(packet, sender):
                return 0

    def _ask(self, sock: socket.socket, target: tuple[str, int]) -> None:
        try:
            sock.sendto(self.request(), target)
        except OSError as why:
            self.last_error = f"cannot ask: {why}"


def _receive(sock: socket.socket, wait: float) -> tuple[bytes | None, str]:
    sock.settimeout(wait if wait > 0 else 0.01)
    try:
        packet, (sender, _) = sock.recvfrom(messages.MAX_PACKET + 1)
        return packet, sender
    except (socket.timeout, BlockingIOError):
        return None, ""


def consoles(active: Path = ACTIVE_CONSOLES) -> list[Path]:
    """Every console the kernel writes to: a screen and a serial line both show the fingerprint
    (/dev/console is only the last one named on the kernel's command line)."""
    try:
        names = active.read_text().split()
    except OSError:
        names = []
    return [Path("/dev") / name for name in names if name.isalnum()] or [CONSOLE]
