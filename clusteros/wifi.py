"""network.wifi's key on the owner's machine: read where the spec says, checked, made into the PSK.

The passphrase never leaves this machine: the credential carries the 256-bit key WPA2 derives
from it and the SSID (PBKDF2-HMAC-SHA1, 4096 rounds, as wpa_passphrase does), so a node's
wpa_supplicant needs nothing else and no passphrase sits on a node's disk or in its RAM.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from clusteros.errors import UsageError

HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def credential_part(spec: dict) -> dict | None:
    """What the credential says of WiFi: ssid, psk (hex) and country; None without network.wifi."""
    wifi = spec["network"].get("wifi")
    if not wifi:
        return None
    place, passphrase = read_passphrase(wifi)
    return {"ssid": wifi["ssid"], "psk": derive_psk(wifi["ssid"], passphrase, place), "country": wifi["country"]}


def read_passphrase(wifi: dict) -> tuple[str, str]:
    """(where it came from in the spec, the passphrase or hex key), or a UsageError that says how to give it."""
    if "psk_env" in wifi:
        name = wifi["psk_env"]
        value = os.environ.get(name)
        if value is None:
            raise UsageError(f"network.wifi.psk_env: the environment variable {name} is not set",
                             fix=f"export {name}='<the WiFi passphrase>' in the shell that builds, or use psk_file")
        return "network.wifi.psk_env", value
    path = Path(wifi["psk_file"])
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as why:
        raise UsageError(f"network.wifi.psk_file: cannot read {path}: {why}",
                         fix="give a readable file holding only the passphrase") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"network.wifi.psk_file: {path} can be read by others (mode {stat.S_IMODE(mode):o})",
                         fix=f"chmod 600 {path}")
    return "network.wifi.psk_file", text.rstrip("\r\n")


def derive_psk(ssid: str, passphrase: str, place: str = "network.wifi") -> str:
    """The 256-bit WPA2 key: a 64-digit hex key as given, or derived from an 8 to 63 character passphrase."""
    if HEX_KEY.fullmatch(passphrase):
        return passphrase.lower()
    unprintable = any(not 32 <= ord(c) <= 126 for c in passphrase)
    if not 8 <= len(passphrase) <= 63 or unprintable:
        raise UsageError(f"{place}: a WPA2 passphrase is 8 to 63 printable ASCII characters "
                         f"(this one has {len(passphrase)} characters{', some not printable ASCII' if unprintable else ''})",
                         fix="give the network's passphrase, or its 64-digit hex key")
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode("ascii"), ssid.encode("utf-8"), 4096, 32).hex()
