"""The wg0 mesh: a key pair made on the node (the private key never leaves it), peers from membership."""

from __future__ import annotations

import json
import os
from pathlib import Path

from clusteros_node import system

INTERFACE = "wg0"
KEY_DIR = Path("/var/lib/clusteros/wireguard")
KEEPALIVE = 15
PEERS = "wg0 peers"   # what system.read_every keeps them as


def ensure_keypair(key_dir: Path = KEY_DIR) -> str:
    """Create the private key once (0600); return the public key."""
    private = key_dir / "private.key"
    if not private.exists():
        key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(key_dir, 0o700)
        system.write_if_changed(private, system.run("wg", "genkey").encode(), mode=0o600)
    return system.run("wg", "pubkey", stdin=private.read_text()).strip()


def ensure_interface(address: str, prefixlen: int, port: int, key_dir: Path = KEY_DIR) -> None:
    system.forget(PEERS)
    if not Path(f"/sys/class/net/{INTERFACE}").exists():
        system.run("ip", "link", "add", INTERFACE, "type", "wireguard")
    system.run("wg", "set", INTERFACE, "listen-port", str(port), "private-key", str(key_dir / "private.key"))
    system.run("ip", "address", "replace", f"{address}/{prefixlen}", "dev", INTERFACE)
    for stale in _addresses() - {f"{address}/{prefixlen}"}:   # one given up (a conflict lost) is no longer ours
        system.run("ip", "address", "del", stale, "dev", INTERFACE)
    system.run("ip", "link", "set", INTERFACE, "up")


def _addresses() -> set[str]:
    """wg0's IPv4 addresses, as address/prefix."""
    links = json.loads(system.query("ip", "-j", "-4", "address", "show", "dev", INTERFACE) or "[]")
    return {f"{a['local']}/{a['prefixlen']}" for link in links for a in link.get("addr_info", [])}


def current_peers() -> dict[str, dict]:
    """Peers as wg reports them: public key -> endpoint, allowed ips, latest handshake. In the agent,
    read afresh whenever this module has changed them, and else every STEADY_TICKS ticks: only the
    membership changes them, or a peer roaming to another endpoint (put back within 30 s); the
    status file's handshake times are that old at most. Every time elsewhere."""
    return system.read_every(PEERS, _read_peers, ticks=system.STEADY_TICKS)


def _read_peers() -> dict[str, dict]:
    peers = {}
    lines = system.query("wg", "show", INTERFACE, "dump", check=False).splitlines()
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) >= 5:
            peers[fields[0]] = {"endpoint": fields[2], "allowed_ips": fields[3], "latest_handshake": int(fields[4])}
    return peers


def sync_peers(wanted: dict[str, dict]) -> list[str]:
    """Make wg0's peers exactly `wanted` (public key -> endpoint, allowed_ip). Returns what changed."""
    have = current_peers()
    changes = []
    for key, peer in wanted.items():
        current = have.get(key)
        if current and current["endpoint"] == peer["endpoint"] and current["allowed_ips"] == peer["allowed_ip"]:
            continue
        system.forget(PEERS)
        system.run("wg", "set", INTERFACE, "peer", key, "endpoint", peer["endpoint"],
                   "allowed-ips", peer["allowed_ip"], "persistent-keepalive", str(KEEPALIVE))
        changes.append(f"peer {peer['name']} at {peer['endpoint']}")
    for key in set(have) - set(wanted):
        system.forget(PEERS)
        system.run("wg", "set", INTERFACE, "peer", key, "remove")
        changes.append(f"removed peer {key[:8]}…")
    return changes
