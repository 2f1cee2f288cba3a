"""Signed announcements: what nodes say to each other on the LAN.

A packet is MAGIC + HMAC-SHA256(announce key, payload) + payload (JSON). The
announce key is derived from the cluster secret, so a node of another cluster,
or anyone without the secret, cannot forge one. A timestamp that must move
forward per sender (and stay near the receiver's clock) stops replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field

MAGIC = b"COS1"
MAC_SIZE = 32
MAX_PACKET = 8192
MAX_SKEW = 60.0


def derive_key(secret: bytes, label: str, length: int = 32) -> bytes:
    """HKDF-Expand (RFC 5869) with SHA-256: one secret, independent keys per purpose."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + label.encode() + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


class Rejected(Exception):
    """A packet that is not a valid, fresh announcement of this cluster."""


def encode(payload: dict, key: bytes) -> bytes:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body


def new_payload(fields: dict, now: float | None = None) -> dict:
    return dict(fields, ts=now if now is not None else time.time(), nonce=os.urandom(8).hex())


@dataclass
class Verifier:
    key: bytes
    cluster: str
    max_skew: float = MAX_SKEW
    last_ts: dict[str, float] = field(default_factory=dict)

    def verify(self, packet: bytes, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        if len(packet) > MAX_PACKET or not packet.startswith(MAGIC) or len(packet) < len(MAGIC) + MAC_SIZE + 2:
            raise Rejected("not a ClusterOS announcement")
        mac, body = packet[len(MAGIC):len(MAGIC) + MAC_SIZE], packet[len(MAGIC) + MAC_SIZE:]
        if not hmac.compare_digest(mac, hmac.new(self.key, body, hashlib.sha256).digest()):
            raise Rejected("bad MAC (wrong cluster secret, or forged)")
        try:
            payload = json.loads(body)
            name, ts = str(payload["name"]), float(payload["ts"])
        except (ValueError, KeyError, TypeError):
            raise Rejected("malformed payload") from None
        if payload.get("cluster") != self.cluster:
            raise Rejected(f"announcement for cluster {payload.get('cluster')!r}")
        if abs(now - ts) > self.max_skew:
            raise Rejected(f"timestamp {now - ts:+.0f}s away from this node's clock")
        if ts <= self.last_ts.get(name, 0.0):
            raise Rejected(f"replayed announcement from {name}")
        self.last_ts[name] = ts
        return payload
