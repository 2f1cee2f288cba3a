"""The cluster credential on a node: where it comes from, how it is checked, where it is kept.

The image holds no secret. A node gets the cluster credential one of three ways:
- a test VM: from its host, through QEMU's fw_cfg, imported by systemd into
  /run/credentials/@system/clusteros-credential (never on its disk);
- a node installed from its owner's USB stick: the installer copied it to
  /var/lib/clusteros/credential.json;
- any other machine: enrollment, once the owner approved it (clusteros_node.enroll),
  which also keeps it in /var/lib/clusteros/credential.json.

Whatever the way, it is the owner's: signed with the owner's key (`ssh-keygen -Y sign`),
whose public half is in the image (/etc/clusteros/owner.pub). A node takes no credential
that key did not sign, so no one else, not even a member, can hand it a fake cluster.
The highest valid generation wins: after a rotation, the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from clusteros_node import messages

NAMESPACE = "clusteros-credential"
OWNER_KEY = Path("/etc/clusteros/owner.pub")
IMPORTED = Path("/run/credentials/@system/clusteros-credential")
KEPT = Path("/var/lib/clusteros/credential.json")
MAX_BYTES = 64 * 1024


class BadCredential(ValueError):
    pass


@dataclass(frozen=True)
class Credential:
    cluster: str
    generation: int
    secret: bytes
    ssh_keys: dict[str, list[str]]
    raw: bytes                       # the signed bundle, as received: what a member hands on
    wifi: dict | None = None         # network.wifi's ssid, country and derived 256-bit key (psk, hex)

    @cached_property
    def announce_key(self) -> bytes:
        """Derived once: every packet the agent hears is checked with it."""
        return messages.announce_key(self.secret)

    @property
    def fingerprint(self) -> str:
        """Says which credential without saying anything of it (status, logs)."""
        return hashlib.sha256(b"clusteros credential id" + self.secret).hexdigest()[:12]


def signed_message(credential: dict) -> bytes:
    """What the owner signs: the credential as canonical JSON."""
    return json.dumps(credential, sort_keys=True, separators=(",", ":")).encode()


def parse(raw: bytes, cluster: str, owner_key: Path = OWNER_KEY) -> Credential:
    """A credential bundle checked field by field and against the owner's signature, or BadCredential."""
    if len(raw) > MAX_BYTES:
        raise BadCredential(f"{len(raw)} bytes: too large to be a credential")
    try:
        bundle = json.loads(raw)
        body, signature = bundle["credential"], bundle["signature"]
        name, generation, secret = body["cluster"], body["generation"], bytes.fromhex(body["secret"])
        ssh_keys, wifi = body.get("ssh_keys", {}), body.get("wifi")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadCredential("not a credential bundle") from None
    if name != cluster:
        raise BadCredential(f"a credential of cluster {name!r}, not {cluster!r}")
    if type(generation) is not int or generation < 1 or len(secret) < 32 or not isinstance(signature, str):
        raise BadCredential("a credential with a bad generation, secret or signature")
    if not _keys_ok(ssh_keys):
        raise BadCredential("a credential with malformed SSH keys")
    if wifi is not None and not _wifi_ok(wifi):
        raise BadCredential("a credential with a malformed WiFi network")
    verify(signed_message(body), signature, owner_key)
    return Credential(name, generation, secret, ssh_keys, raw, wifi)


USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _keys_ok(ssh_keys) -> bool:
    return isinstance(ssh_keys, dict) and all(
        isinstance(user, str) and USER.fullmatch(user) and isinstance(keys, list)
        and all(isinstance(k, str) and "\n" not in k and k.startswith(("ssh-", "ecdsa-", "sk-")) for k in keys)
        for user, keys in ssh_keys.items())


WIFI_KEYS = {"ssid", "psk", "country"}


def _wifi_ok(wifi) -> bool:
    """An SSID of 1 to 32 bytes, a 256-bit key in hex, a two-letter country: nothing else."""
    if not (isinstance(wifi, dict) and set(wifi) == WIFI_KEYS and all(isinstance(v, str) for v in wifi.values())):
        return False
    try:
        ssid_bytes = len(wifi["ssid"].encode())
    except UnicodeEncodeError:   # JSON can carry a lone surrogate, which no SSID is
        return False
    return (1 <= ssid_bytes <= 32 and re.fullmatch(r"[0-9a-f]{64}", wifi["psk"]) is not None
            and re.fullmatch(r"[A-Z]{2}", wifi["country"]) is not None)


def verify(message: bytes, signature: str, owner_key: Path = OWNER_KEY) -> None:
    """ssh-keygen checks that the owner's key made `signature` over `message`."""
    try:
        owner = owner_key.read_text().split()
    except OSError:
        raise BadCredential(f"no owner key in {owner_key}: this image cannot check a credential") from None
    with tempfile.TemporaryDirectory(prefix="clusteros-verify-") as work:
        signers, sig = Path(work) / "allowed_signers", Path(work) / "credential.sig"
        signers.write_text(f'owner namespaces="{NAMESPACE}" {owner[0]} {owner[1]}\n')
        sig.write_text(signature)
        result = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "owner", "-n", NAMESPACE,
                                 "-s", str(sig)], input=message, capture_output=True, timeout=30)
    if result.returncode != 0:
        raise BadCredential("not signed by this cluster's owner")


def load(cluster: str, sources: tuple[Path, ...] = (IMPORTED, KEPT),
         owner_key: Path = OWNER_KEY) -> tuple[Credential | None, list[str]]:
    """The highest valid generation among `sources`, and why the others were passed over."""
    best, notes = None, []
    for source in sources:
        try:
            found = parse(source.read_bytes(), cluster, owner_key)
        except FileNotFoundError:
            continue
        except (OSError, BadCredential) as why:
            notes.append(f"{source}: {why}")
            continue
        if best is None or found.generation > best.generation:
            best = found
    return best, notes


def keep(credential: Credential, path: Path = KEPT) -> None:
    """Store it (0600) so that the node keeps it across reboots."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(credential.raw)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
