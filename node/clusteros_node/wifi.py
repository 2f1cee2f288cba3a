"""WiFi on a node: network.wifi's network, joined with the key from the owner's credential.

udev starts clusteros-wifi@<device>.service for every WLAN device (90-clusteros-wifi.rules).
This decides whether that device is the node's: the one whose MAC the spec gives the node (its
cluster LAN is then WiFi, and networkd gives it the node's address), else the first WLAN device
by name (an uplink, DHCP). It writes wpa_supplicant's configuration into /run, 0600 since it
holds the key, and becomes wpa_supplicant. The image holds no key: the SSID, the 256-bit key
derived from the passphrase on the owner's machine and the regulatory country come with the
credential (the host's fw_cfg for a test VM, the owner's stick, or enrollment).
"""

from __future__ import annotations

import os
from pathlib import Path

from clusteros_node import credential as credential_mod
from clusteros_node import identity, system
from clusteros_node.identity import SYS_NET
from clusteros_node.places import Places

CONFIG_DIR = Path("/run/clusteros/wifi")
SUPPLICANT = "/usr/sbin/wpa_supplicant"


class NoWifi(Exception):
    """Why this device joins nothing (not the node's WLAN, no WiFi in the credential...)."""


def wlan_devices(sys_net: Path = SYS_NET) -> dict[str, str]:
    """name -> MAC of every WLAN device (a net device with a wireless PHY)."""
    found = {}
    for dev in sorted(sys_net.iterdir()) if sys_net.exists() else []:
        if (dev / "phy80211").exists():
            try:
                found[dev.name] = (dev / "address").read_text().strip().lower()
            except OSError:
                continue
    return found


def chosen(devices: dict[str, str], lan_mac: str | None) -> str | None:
    """The node's WLAN device: the one carrying its LAN MAC, else the first by name."""
    carrying = [name for name, mac in devices.items() if lan_mac and mac == lan_mac]
    return carrying[0] if carrying else min(devices, default=None)


def supplicant_config(wifi: dict) -> str:
    """wpa_supplicant's configuration: the SSID and the key in hex, so that no byte of either can
    end a line or a quoted string (both were checked as the credential was parsed)."""
    return "\n".join([
        "# Written by clusteros-wifi@.service from the owner's credential: it holds the key (0600, in RAM).",
        "ctrl_interface=DIR=/run/wpa_supplicant GROUP=root",
        f"country={wifi['country']}",
        "network={",
        f"\tssid={wifi['ssid'].encode().hex()}",
        "\tscan_ssid=1",
        "\tkey_mgmt=WPA-PSK",
        f"\tpsk={wifi['psk']}",
        "}", ""])


def lan_mac(places: Places) -> str | None:
    try:
        return identity.load(places.run).mac
    except (OSError, ValueError, TypeError):
        return None


def prepare(interface: str, cluster: str, places: Places = Places(), sys_net: Path = SYS_NET,
            config_dir: Path = CONFIG_DIR) -> Path:
    """The configuration file for `interface`, written; or NoWifi, saying why it joins nothing."""
    devices = wlan_devices(sys_net)
    if interface not in devices:
        raise NoWifi(f"{interface} is not a WLAN device")
    mine = chosen(devices, lan_mac(places))
    if interface != mine:
        raise NoWifi(f"{interface} is not this node's WLAN device ({mine} is)")
    credential, notes = credential_mod.load(cluster, places.credential_sources, places.owner_key)
    if credential is None:
        raise NoWifi("no credential on this machine yet (" + ("; ".join(notes) or "none was given") +
                     "): the WiFi key comes with it")
    if credential.wifi is None:
        raise NoWifi("the credential holds no WiFi network (network.wifi is not in cluster.yaml)")
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = config_dir / f"{interface}.conf"
    system.write_if_changed(target, supplicant_config(credential.wifi).encode(), mode=0o600)
    return target


def follow(credential: credential_mod.Credential, places: Places, restart: bool = False,
           sys_net: Path = SYS_NET) -> str | None:
    """Join with a credential the node took while running (approved, or a rotation that changed the
    network): start clusteros-wifi@ on the node's WLAN device, which at boot found no key and
    exited; `restart` for a changed network, or one the credential no longer names (the unit then
    says so and exits, which stops the supplicant). Returns that device, or None for nothing to do."""
    device = chosen(wlan_devices(sys_net), lan_mac(places)) if credential.wifi or restart else None
    if device:
        system.run("systemctl", "--no-block", "restart" if restart else "start", f"clusteros-wifi@{device}.service",
                   check=False)
    return device


def run(interface: str, cluster: str) -> int:
    """Become wpa_supplicant on `interface`, or say why not and exit 0 (nothing failed)."""
    try:
        config = prepare(interface, cluster)
    except NoWifi as why:
        print(f"clusteros-wifi: {why}: not joining", flush=True)
        return 0
    print(f"clusteros-wifi: joining the credential's network on {interface}", flush=True)
    os.execv(SUPPLICANT, [SUPPLICANT, "-i", interface, "-c", str(config), "-D", "nl80211,wext"])
    return 1   # not reached
