"""A LAN address for a machine the spec does not list: DHCP where the LAN has a server, else one nobody holds.

Nodes the spec knows take their address from the plan at boot (clusteros-identity). Any
other machine gets one here: the address DHCP gave one of its NICs in the cluster's LAN
subnet; failing that (a LAN without a DHCP server), an address from the part of the
subnet above the indexed nodes, tried in an order its machine id decides, and taken only
when an ARP probe (arping -D) finds nobody answering for it. It is kept for next boot.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import time
from pathlib import Path

from clusteros_node import addressing, system

DHCP_WAIT = 20.0


def ipv4_addresses() -> list[tuple[str, str]]:
    """(interface, address/prefix) of every IPv4 address on a physical NIC."""
    found = []
    for link in json.loads(system.query("ip", "-j", "-4", "address", "show") or "[]"):
        if link.get("ifname") == "lo" or not Path(f"/sys/class/net/{link.get('ifname')}/device").exists():
            continue
        for info in link.get("addr_info", []):
            found.append((link["ifname"], f"{info['local']}/{info['prefixlen']}"))
    return found


def in_subnet(subnet: str) -> tuple[str, str] | None:
    for interface, address in ipv4_addresses():
        if addressing.contains_host(subnet, address.split("/")[0]):
            return interface, address
    return None


def candidates(subnet: str, machine_id: str) -> list[str]:
    """The unindexed part of the subnet, in an order of this machine's own."""
    net = ipaddress.ip_network(subnet)
    first = addressing.LAN_HOST_OFFSET + addressing.MAX_INDEXED + 1
    hosts = [str(net.network_address + n) for n in range(first, net.num_addresses - 1)]
    start = int(hashlib.sha256(machine_id.encode()).hexdigest(), 16) % max(1, len(hosts))
    return hosts[start:] + hosts[:start]


def first_nic_with_link() -> str | None:
    for dev in sorted(Path("/sys/class/net").iterdir()):
        try:
            if (dev / "device").exists() and (dev / "carrier").read_text().strip() == "1":
                return dev.name
        except OSError:
            continue
    return None


def free(interface: str, address: str) -> bool:
    """Nobody on the LAN answers ARP for `address` (arping's duplicate address detection exits 0)."""
    return subprocess.run(["arping", "-D", "-q", "-c", "2", "-w", "3", "-I", interface, address],
                          capture_output=True, timeout=10).returncode == 0


def acquire(subnet: str, machine_id: str, keep: Path) -> tuple[str, str] | None:
    """(interface, address/prefix): DHCP's, a kept one, or a free one claimed now; None if no NIC has a link."""
    deadline = time.monotonic() + DHCP_WAIT
    while time.monotonic() < deadline:
        if found := in_subnet(subnet):
            return found
        time.sleep(1)
    interface = first_nic_with_link()
    if interface is None:
        return None
    prefix = subnet.split("/")[1]
    kept = keep.read_text().strip() if keep.exists() else None
    for address in ([kept] if kept else []) + candidates(subnet, machine_id):
        if free(interface, address):
            system.run("ip", "address", "add", f"{address}/{prefix}", "dev", interface)
            system.write_if_changed(keep, f"{address}\n".encode())
            return interface, f"{address}/{prefix}"
    return None
