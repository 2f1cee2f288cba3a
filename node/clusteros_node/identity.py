"""Who this node is: its name and cluster LAN address, from the spec and its MACs.

Lookup order: a NIC whose MAC the spec lists -> that node; a MAC in the cluster's
test-VM range (<mac_prefix>:NN) -> node NN of the count form; otherwise a name
derived from the machine id, and the LAN address is left to DHCP or link-local.

The build host runs this for every MAC the spec can name (`identity_files`) and
bakes the result into the image; at boot, the shell script clusteros-identity
only picks the row of the MAC it finds, so no Python runs on the way to SSH.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from clusteros_node import addressing

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
    lines = ["# Put in place at boot by clusteros-identity.service", "[Match]", f"MACAddress={identity.mac}", "",
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


UNKNOWN = "unknown"
PLACEHOLDER_NAME = "@NAME@"
SYS_NET = Path("/sys/class/net")


def known_macs(spec: dict) -> dict[str, Identity]:
    """Every MAC the spec makes a node of: the listed nodes, and the test VMs' range (<mac_prefix>:NN)."""
    known = {}
    naming = spec["node_naming"]
    capacity = min(addressing.MAX_INDEXED, addressing.lan_capacity(spec["network"]["lan"]["subnet"]))
    for index in range(1, capacity + 1):
        mac = f"{naming['mac_prefix']}:{index:02x}"
        known[mac] = resolve(spec, {"": mac}, "")
    for node in spec["nodes"]:   # listed nodes last: their own MAC (and name, role) wins
        known[node["mac"]] = resolve(spec, {"": node["mac"]}, "")
    return {mac: replace(me, interface=None) for mac, me in known.items()}


def identity_files(spec: dict) -> dict[str, dict[str, str]]:
    """What clusteros-identity copies into place at boot, by MAC (and for a machine the spec does not know).

    The boot script only finds which MAC is here and copies its files: every decision is made
    here, on the build host, by the one address plan.
    """
    files = {mac: {"hostname": me.name + "\n", "hosts": hosts_file(spec, me),
                   "lan.network": lan_network_unit(me, spec), "identity.json": me.to_json() + "\n"}
             for mac, me in known_macs(spec).items()}
    stranger = Identity(PLACEHOLDER_NAME, None, None, None, None, "auto")
    files[UNKNOWN] = {"prefix": spec["node_naming"]["prefix"] + "\n", "hosts": hosts_file(spec, stranger),
                      "identity.json": stranger.to_json() + "\n"}
    return files


def load(state_dir: Path = Path("/run/clusteros"), sys_net: Path = SYS_NET) -> Identity:
    """This node's identity, as clusteros-identity.service wrote it at boot, with its LAN NIC's name."""
    me = Identity(**json.loads((state_dir / "identity.json").read_text()))
    return replace(me, interface=interface_of(me.mac, sys_net)) if me.mac else me


def interface_of(mac: str, sys_net: Path = SYS_NET) -> str | None:
    """The name of the NIC with this MAC (the table is made before the kernel names NICs)."""
    for dev in sorted(sys_net.iterdir()) if sys_net.exists() else []:
        try:
            if (dev / "address").read_text().strip().lower() == mac:
                return dev.name
        except OSError:
            continue
    return None
