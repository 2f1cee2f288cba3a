"""Enrollment: how a machine without a credential becomes a member, once its owner says so.

1. The candidate makes its WireGuard key pair, shows the key's fingerprint on its console
   and in every member's `clusteros-node status`, and asks to join (an unsigned request
   on the LAN, every few seconds).
2. The owner approves that fingerprint on any member: `clusteros-node approve ABCD-EFGH-JKLM`.
   That member binds the candidate's name to its key and a wg0 address, makes it a wg0
   peer, and answers with an offer: the address, and the member's own key and endpoint.
3. The candidate sets up wg0 with that one peer and fetches the credential from the
   member's wg0 address. WireGuard proves each end to the other: only the approved key
   can reach that address, and only the member holding the offered key can answer. The
   candidate takes the credential only if the owner's key signed it, so a fake offer
   gets it nothing; nothing else can make it a member.

The requests and offers carry no MAC (a stranger has no key to make one); each field is
checked like any other message, the table of pending requests is bounded and forgets.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from clusteros_node import addressing, validate

CREDENTIAL_PORT = 7947        # a member serves credentials here, on its wg0 address only
PENDING_MAX = 32
PENDING_FOR = 600.0           # a request not repeated for this long is forgotten
OFFER_FOR = 300.0             # an approval is offered, and its credential served, for this long


def fingerprint(wg_pubkey: str) -> str:
    """Twelve letters and digits, in threes of four, that say which key: short enough to read aloud."""
    digest = hashlib.sha256(base64.b64decode(wg_pubkey)).digest()
    text = base64.b32encode(digest).decode()[:12]
    return "-".join(text[i:i + 4] for i in range(0, 12, 4))


@dataclass(frozen=True)
class Request:
    name: str
    lan_ip: str
    wg_pubkey: str
    wg_port: int
    index: int | None = None      # a machine in the spec's MAC range knows its node number

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.wg_pubkey)


@dataclass(frozen=True)
class Offer:
    to: str                 # the candidate's public key
    wg_ip: str              # the candidate's wg0 address
    server_pubkey: str
    server_endpoint: str    # the approving member's LAN address and WireGuard port
    server_wg_ip: str


def request(payload: dict, spec: dict) -> Request:
    if payload.get("cluster") != spec["cluster"]["name"]:
        raise validate.Invalid("cluster: not this cluster")
    index = payload.get("index")
    return Request(validate.hostname(payload.get("name"), "name"),
                   validate.ipv4_in(payload.get("lan_ip"), "lan_ip", spec["network"]["lan"]["subnet"]),
                   validate.wireguard_key(payload.get("wg_pubkey"), "wg_pubkey"),
                   validate.integer(payload, "wg_port", 1, 65535),
                   None if index is None else validate.integer(payload, "index", 1, addressing.MAX_INDEXED))


def offer(payload: dict, spec: dict) -> Offer:
    if payload.get("cluster") != spec["cluster"]["name"]:
        raise validate.Invalid("cluster: not this cluster")
    wg_subnet, lan_subnet = spec["network"]["wireguard"]["subnet"], spec["network"]["lan"]["subnet"]
    endpoint = payload.get("server_endpoint")
    host, _, port = endpoint.rpartition(":") if isinstance(endpoint, str) else ("", "", "")
    validate.ipv4_in(host, "server_endpoint", lan_subnet)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise validate.Invalid("server_endpoint: no port")
    return Offer(validate.wireguard_key(payload.get("to"), "to"),
                 validate.ipv4_in(payload.get("wg_ip"), "wg_ip", wg_subnet),
                 validate.wireguard_key(payload.get("server_pubkey"), "server_pubkey"), endpoint,
                 validate.ipv4_in(payload.get("server_wg_ip"), "server_wg_ip", wg_subnet))


class Pending:
    """Requests seen lately, by key: what `status` lists and `approve` chooses from."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.requests: OrderedDict[str, tuple[Request, float]] = OrderedDict()

    def heard(self, req: Request) -> None:
        self.requests.pop(req.wg_pubkey, None)
        self.requests[req.wg_pubkey] = (req, self.clock())
        while len(self.requests) > PENDING_MAX:
            self.requests.popitem(last=False)

    def current(self) -> list[tuple[Request, float]]:
        now = self.clock()
        for key in [k for k, (_, heard) in self.requests.items() if now - heard > PENDING_FOR]:
            del self.requests[key]
        return [(req, now - heard) for req, heard in self.requests.values()]

    def find(self, fingerprint_text: str) -> Request | None:
        wanted = fingerprint_text.strip().upper().replace(" ", "")
        for req, _ in self.current():
            if req.fingerprint.replace("-", "") == wanted.replace("-", ""):
                return req
        return None

    def drop(self, wg_pubkey: str) -> None:
        self.requests.pop(wg_pubkey, None)


@dataclass(frozen=True)
class Approval:
    request: Request
    wg_ip: str
    until: float


class Approvals:
    """What this member approved and is still offering (and serving the credential to)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.by_key: dict[str, Approval] = {}

    def add(self, req: Request, wg_ip: str) -> Approval:
        approval = Approval(req, wg_ip, self.clock() + OFFER_FOR)
        self.by_key[req.wg_pubkey] = approval
        return approval

    def current(self) -> list[Approval]:
        now = self.clock()
        self.by_key = {k: a for k, a in self.by_key.items() if a.until > now}
        return list(self.by_key.values())

    def served_from(self, wg_ip: str) -> Approval | None:
        return next((a for a in self.current() if a.wg_ip == wg_ip), None)

    def done(self, wg_pubkey: str) -> None:
        self.by_key.pop(wg_pubkey, None)
