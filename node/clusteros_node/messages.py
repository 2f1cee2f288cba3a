"""What nodes say to each other on the cluster LAN, and how a packet is turned back into it.

A member's announcement: MAGIC + generation (8 bytes) + HMAC-SHA256 + JSON body. The MAC
is keyed by the announcement key of that generation of the cluster credential (derived
from its secret: a machine without the credential can neither forge nor read-and-alter
one) and covers the generation too. The generation travels in the clear so that a node
holding an old credential learns that it was replaced, and asks to enroll again.

An enrollment request (a machine without a credential asking to join) and an offer (a
member answering the request the owner approved) carry no MAC: nobody can vouch for a
stranger. They say only what the WireGuard handshake that follows will prove.

Freshness is not judged by the sender's clock: the registry refuses a sequence number
that does not move forward.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import struct

ANNOUNCE = b"COS2"
ENROLL = b"COSE"
OFFER = b"COSO"
MAC_SIZE = 32
GENERATION = struct.Struct(">Q")
MAX_PACKET = 8192


class Rejected(Exception):
    """A packet that is not a valid message of this cluster: dropped, with this reason logged."""


@functools.lru_cache(maxsize=32)   # the agent asks for the same few keys every tick (an HMAC each, under emulation)
def derive_key(secret: bytes, label: str, length: int = 32) -> bytes:
    """HKDF-Expand (RFC 5869) with SHA-256: one secret, independent keys per purpose."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + label.encode() + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def announce_key(secret: bytes) -> bytes:
    return derive_key(secret, "clusteros announce v2")


def _body(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def encode_announcement(payload: dict, generation: int, key: bytes) -> bytes:
    head = ANNOUNCE + GENERATION.pack(generation)
    body = _body(payload)
    return head + hmac.new(key, head + body, hashlib.sha256).digest() + body


def encode_unsigned(kind: bytes, payload: dict) -> bytes:
    return kind + _body(payload)


def kind_of(packet: bytes) -> bytes:
    if len(packet) > MAX_PACKET or len(packet) < 6:
        raise Rejected(f"{len(packet)} bytes: not a ClusterOS message")
    kind = packet[:4]
    if kind not in (ANNOUNCE, ENROLL, OFFER):
        raise Rejected("not a ClusterOS message")
    return kind


def generation_of(packet: bytes) -> int:
    if len(packet) < len(ANNOUNCE) + GENERATION.size + MAC_SIZE + 2:
        raise Rejected("announcement too short")
    return GENERATION.unpack_from(packet, len(ANNOUNCE))[0]


def open_announcement(packet: bytes, keys: dict[int, bytes]) -> dict:
    """The payload of an announcement MACed with the key of one of `keys` (generation -> key)."""
    generation = generation_of(packet)
    key = keys.get(generation)
    if key is None:
        raise Rejected(f"credential generation {generation}, not one this node holds")
    head_size = len(ANNOUNCE) + GENERATION.size
    mac, body = packet[head_size:head_size + MAC_SIZE], packet[head_size + MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(key, packet[:head_size] + body, hashlib.sha256).digest()):
        raise Rejected("bad MAC (wrong cluster secret, or forged)")
    return _json(body)


def open_unsigned(packet: bytes) -> dict:
    return _json(packet[4:])


def _json(body: bytes) -> dict:
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise Rejected("malformed payload") from None
    if not isinstance(payload, dict):
        raise Rejected("malformed payload")
    return payload


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number here")   # NaN, Infinity: JSON extensions Python would accept
