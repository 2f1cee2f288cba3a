"""The cluster's address plan: the one place a node's LAN and wg0 addresses are computed.

The build host (spec resolution, the test cluster) and the node (identity, the
agent) both import this module, so they cannot disagree. Stdlib only: it runs
inside the node-agent.

- LAN: node i takes the (LAN_HOST_OFFSET + i)-th host address of the LAN subnet,
  unless the spec gives it one. The first hosts are left to routers and servers.
- wg0: node i takes the i-th host address of the mesh subnet. Machines the spec
  does not index are given an address above the indexed range when they are
  admitted (see `free_wg_address`).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

LAN_HOST_OFFSET = 10
# Indexed nodes (1..MAX_INDEXED) own wg addresses 1..MAX_INDEXED; admitted machines take the rest.
MAX_INDEXED = 64


class AddressError(ValueError):
    """The subnet has no room for the address asked for."""


@lru_cache(maxsize=32)
def network(subnet: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`subnet` parsed once: the agent checks each announcement's addresses against the same two
    subnets, and under emulation parsing them anew took a tenth of its idle CPU."""
    return ipaddress.ip_network(subnet)


def _host(subnet: str, offset: int) -> ipaddress.IPv4Address:
    net = network(subnet)
    if not 1 <= offset <= net.num_addresses - 2:
        raise AddressError(f"{subnet} has no host number {offset} (it holds {net.num_addresses - 2} hosts)")
    return net.network_address + offset


def lan_address(subnet: str, index: int) -> str:
    """Node `index`'s default LAN address: 10.42.0.0/24, 1 -> 10.42.0.11."""
    return str(_host(subnet, LAN_HOST_OFFSET + index))


@lru_cache(maxsize=256)
def wg_address(subnet: str, index: int) -> str:
    """Node `index`'s wg0 address: 10.99.0.0/24, 1 -> 10.99.0.1."""
    return str(_host(subnet, index))


def with_prefix(subnet: str, address: str) -> str:
    """An address with the subnet's prefix length, as networkd and `ip address` take it."""
    return f"{address}/{network(subnet).prefixlen}"


def contains_host(subnet: str, address: str) -> bool:
    """Is `address` a host address (not network or broadcast) of `subnet`?"""
    try:
        net = network(subnet)
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    return addr in net and addr not in (net.network_address, net.broadcast_address)


def lan_capacity(subnet: str) -> int:
    """How many indexed nodes the LAN subnet can address."""
    return max(0, network(subnet).num_addresses - 2 - LAN_HOST_OFFSET)


def netboot_range(subnet: str, size: int = 64) -> tuple[str, str]:
    """The leases `serve-pxe` hands out on a LAN with no DHCP server: just above the indexed nodes'
    addresses (10.42.0.0/24: .75 to .138), so a netbooting machine never takes a node's."""
    first = LAN_HOST_OFFSET + MAX_INDEXED + 1
    net = network(subnet)
    last = min(first + size - 1, net.num_addresses - 2)
    if last < first:
        raise AddressError(f"{subnet} has no room for netboot leases above its {MAX_INDEXED} node addresses")
    return str(net.network_address + first), str(net.network_address + last)


def wg_capacity(subnet: str) -> int:
    return max(0, network(subnet).num_addresses - 2)


def free_wg_address(subnet: str, taken: set[str], first: int = MAX_INDEXED + 1) -> str:
    """The lowest wg0 address from host number `first` on that nobody holds: for admitted machines."""
    net = network(subnet)
    for offset in range(first, net.num_addresses - 1):
        candidate = str(net.network_address + offset)
        if candidate not in taken:
            return candidate
    raise AddressError(f"{subnet} has no free address left for another node")
