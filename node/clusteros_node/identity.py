"""Who this node is: its name and cluster LAN address, from the baked spec and its MACs.

Lookup order: a NIC whose MAC the spec lists -> that node; a MAC in the cluster's
test-VM range (<mac_prefix>:NN) -> node NN of the count form; otherwise a name
derived from the machine id, and the LAN address is left to DHCP or link-local.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clusteros_node import addressing

SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class Identity:
    name: str
    index: int | None
    mac: str | None
    interface: str | None
    address: str | None        # LAN address with prefix length, e.g. 10.42.0.11/24
    role: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def interfaces(sys_net: Path = SYS_NET) -> dict[str, str]:
    """Physical NICs by name -> lower-case MAC."""
    found = {}
    for dev in sorted(sys_net.iterdir()) if sys_net.exists() else []:
        if dev.name == "lo" or not (dev / "device").exists():
            continue
        found[dev.name] = (dev / "address").read_text().strip().lower()
    return found


def resolve(spec: dict, nics: dict[str, str], machine_id: str) -> Identity:
    subnet = spec["network"]["lan"]["subnet"]
    by_mac = {node["mac"]: node for node in spec["nodes"]}
    naming = spec["node_naming"]
    for interface, mac in nics.items():
        node = by_mac.get(mac)
        if node is not None:
            return Identity(node["name"], node["index"], mac, interface,
                            addressing.with_prefix(subnet, node["address"]), node["role"])
    for interface, mac in nics.items():
        if mac.startswith(naming["mac_prefix"] + ":"):
            index = int(mac.rsplit(":", 1)[1], 16)
            address = addressing.lan_address(subnet, index)
            return Identity(f"{naming['prefix']}{index}", index, mac, interface,
                            addressing.with_prefix(subnet, address), "auto")
    # Not a node the spec knows: claim no NIC, so DHCP or link-local configures them all.
    name = f"{naming['prefix']}-{machine_id[:8]}" if machine_id else naming["prefix"]
    return Identity(name, None, None, None, None, "auto")


def lan_network_unit(identity: Identity, spec: dict) -> str:
    """systemd-networkd config for the cluster LAN NIC (no DHCP server needed)."""
    lan = spec["network"]["lan"]
    lines = ["# Written at boot by clusteros-identity.service", "[Match]", f"MACAddress={identity.mac}", "",
             "[Network]", "LinkLocalAddressing=ipv6", f"DHCP={'ipv4' if lan.get('dhcp') else 'no'}"]
    if identity.address:
        lines.append(f"Address={identity.address}")
    if lan.get("gateway"):
        lines.append(f"Gateway={lan['gateway']}")
    # A static LAN address is up at once: let it satisfy network-online.target.
    lines += ["", "[Link]", f"RequiredForOnline={'yes' if identity.address else 'no'}", ""]
    return "\n".join(lines)


def hosts_file(spec: dict, identity: Identity) -> str:
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{identity.name}", "::1\tlocalhost ip6-localhost ip6-loopback",
             "", "# cluster LAN, from /etc/clusteros/spec.json"]
    for node in spec["nodes"]:
        lines.append(f"{node['address']}\t{node['name']}")
    if identity.index and identity.name not in {n["name"] for n in spec["nodes"]} and identity.address:
        lines.append(f"{identity.address.split('/')[0]}\t{identity.name}")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for_identity(spec: dict, machine_id: str, timeout: float = 20.0, settle: float = 2.0) -> Identity:
    """NIC drivers may still be loading this early in boot: wait for a NIC the spec knows.

    A machine the spec does not know has NICs too: once any NIC has appeared and none
    new has for `settle` seconds, it is what it is, and waiting longer would only delay it.
    """
    started = time.monotonic()
    seen, changed = {}, started
    while True:
        nics = interfaces()
        identity = resolve(spec, nics, machine_id)
        now = time.monotonic()
        if nics != seen:
            seen, changed = nics, now
        if identity.index is not None or now - started > timeout or (nics and now - changed >= settle):
            return identity
        time.sleep(0.2)


def apply(spec: dict, root: Path = Path("/"), state_dir: Path = Path("/run/clusteros")) -> Identity:
    machine_id = (root / "etc/machine-id").read_text().strip() if (root / "etc/machine-id").exists() else ""
    identity = wait_for_identity(spec, machine_id)
    _write(root / "etc/hostname", identity.name + "\n")
    _write(root / "etc/hosts", hosts_file(spec, identity))
    if identity.mac:
        _write(root / "run/systemd/network/10-clusteros-lan.network", lan_network_unit(identity, spec))
    _write(state_dir / "identity.json", identity.to_json() + "\n")
    socket.sethostname(identity.name)
    if identity.interface and root == Path("/"):
        reconfigure_lan(identity.interface)
    return identity


def reconfigure_lan(interface: str) -> None:
    """networkd may already run the LAN link with the generic DHCP config: hand it the cluster one."""
    for argv in (["networkctl", "reload"], ["networkctl", "reconfigure", interface]):
        subprocess.run(argv, check=False, timeout=30)
