"""Every field of every message a node receives, checked before anything uses it.

A message that passed its MAC still comes from the network: a member with a bug,
an old version, or an insider. `announcement` turns a decoded payload into a typed
Announcement or raises Invalid naming the first field that is wrong; nothing in it
can reach slurm.conf, WireGuard or the member table unchecked.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from operator import attrgetter

from clusteros_node import addressing

HOSTNAME = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_SEQ = 2**63 - 1
MAX_SLURM_NODES = 256
MAX_CPUS = 4096
MAX_MEMORY_MB = 16 * 2**20          # 16 TiB


class Invalid(ValueError):
    """A message with a field that is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class Announcement:
    cluster: str
    generation: int
    name: str
    index: int | None
    lan_ip: str
    wg_ip: str
    wg_pubkey: str
    wg_port: int
    cpus: int
    memory_mb: int
    boot_id: str
    seq: int
    controller: str | None
    slurm_nodes: tuple[str, ...]

    def standing(self) -> tuple:
        """What it says, not when it said it: every field but its number (one added later counts too)."""
        return _STANDING(self)


# A getter in C: the steady tick asks it of every live member, twice a tick (dataclasses.replace
# cost a millisecond a call under emulation).
_STANDING = attrgetter(*(f.name for f in fields(Announcement) if f.name != "seq"))


def _field(payload: dict, key: str):
    if key not in payload:
        raise Invalid(f"{key}: missing")
    return payload[key]


def integer(payload: dict, key: str, low: int, high: int) -> int:
    value = _field(payload, key)
    if type(value) is not int or not low <= value <= high:   # bool is an int: not here
        raise Invalid(f"{key}: {value!r} is not a whole number from {low} to {high}")
    return value


def hostname(value, key: str) -> str:
    if not isinstance(value, str) or not HOSTNAME.fullmatch(value):
        raise Invalid(f"{key}: {value!r} is not a hostname")
    return value


def ipv4_in(value, key: str, subnet: str) -> str:
    if not isinstance(value, str) or not _is_host_address_in(subnet, value):
        raise Invalid(f"{key}: {value!r} is not a host address in {subnet}")
    return value


@lru_cache(maxsize=256)
def _is_host_address_in(subnet: str, value: str) -> bool:
    """Kept: every member announces the same addresses every tick, and parsing them was a sixth of an
    idle agent's CPU under emulation; a flood of new ones only churns the cache."""
    return addressing.contains_host(subnet, value) and str(ipaddress.ip_address(value)) == value


def wireguard_key(value, key: str) -> str:
    """A WireGuard public key: 32 bytes, base64 (44 characters)."""
    try:
        if isinstance(value, str) and len(value) == 44 and len(base64.b64decode(value, validate=True)) == 32:
            return value
    except (binascii.Error, ValueError):
        pass
    raise Invalid(f"{key}: not a WireGuard public key")


def _index_and_wg_ip(payload: dict, spec: dict) -> tuple[int | None, str]:
    wg_subnet = spec["network"]["wireguard"]["subnet"]
    index = payload.get("index")
    if index is not None:
        index = integer(payload, "index", 1, addressing.MAX_INDEXED)
    wg_ip = ipv4_in(_field(payload, "wg_ip"), "wg_ip", wg_subnet)
    if index is not None and wg_ip != addressing.wg_address(wg_subnet, index):
        raise Invalid(f"wg_ip: {wg_ip} is not node {index}'s address ({addressing.wg_address(wg_subnet, index)})")
    return index, wg_ip


def _slurm_nodes(payload: dict) -> tuple[str, ...]:
    names = payload.get("slurm_nodes", [])
    if not isinstance(names, list) or len(names) > MAX_SLURM_NODES:
        raise Invalid(f"slurm_nodes: not a list of at most {MAX_SLURM_NODES} names")
    return tuple(hostname(n, "slurm_nodes[]") for n in names)


def announcement(payload, spec: dict) -> Announcement:
    """A checked Announcement from a decoded (and authenticated) payload, or Invalid."""
    if not isinstance(payload, dict):
        raise Invalid("not an object")
    cluster = _field(payload, "cluster")
    if cluster != spec["cluster"]["name"]:
        raise Invalid(f"cluster: {cluster!r} is not this cluster")
    index, wg_ip = _index_and_wg_ip(payload, spec)
    boot_id = _field(payload, "boot_id")
    if not isinstance(boot_id, str) or not BOOT_ID.fullmatch(boot_id):
        raise Invalid("boot_id: not a boot id")
    controller = payload.get("controller")
    return Announcement(
        cluster=cluster, generation=integer(payload, "generation", 1, MAX_SEQ),
        name=hostname(_field(payload, "name"), "name"), index=index,
        lan_ip=ipv4_in(_field(payload, "lan_ip"), "lan_ip", spec["network"]["lan"]["subnet"]), wg_ip=wg_ip,
        wg_pubkey=wireguard_key(_field(payload, "wg_pubkey"), "wg_pubkey"),
        wg_port=integer(payload, "wg_port", 1, 65535), cpus=integer(payload, "cpus", 1, MAX_CPUS),
        memory_mb=integer(payload, "memory_mb", 1, MAX_MEMORY_MB), boot_id=boot_id,
        seq=integer(payload, "seq", 0, MAX_SEQ),
        controller=None if controller is None else hostname(controller, "controller"),
        slurm_nodes=_slurm_nodes(payload))
