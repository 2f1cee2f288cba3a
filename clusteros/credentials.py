"""The cluster credential, made and signed on the owner's machine: the only place it is whole.

In the state directory (0700, files 0600), beside the cluster secret and the test key:
- owner_ed25519: the owner's key. Its public half goes into every image (public), so a
  node can check that a credential is the owner's; the private half never leaves here.
- generation: which credential is current (1, then one more at each rotation); the
  secret of generation 1 is cluster.secret (or cluster.secret_file), of generation N
  cluster.secret.N.
- credential-N.json: generation N's bundle as nodes receive it: the cluster's name, the
  generation, the secret, the SSH keys of users the spec gives none (the generated test
  key), with network.wifi its network and key (clusteros.wifi), and the owner's signature
  over them (`ssh-keygen -Y sign`).

A credential reaches a node separately from the image: through QEMU's fw_cfg for test VMs,
on the owner's USB stick, or from a member once the owner approved the node (enrollment).
"""

from __future__ import annotations

import json
import secrets as pysecrets
import tempfile
from pathlib import Path

from clusteros import paths, runner
from clusteros import wifi as wifi_mod
from clusteros.atomic import atomic_path
from clusteros.secrets import cluster_secret_path, owner_key_path, test_key_path

NAMESPACE = "clusteros-credential"   # what the signature may be used for: nothing else


def generation(spec: dict) -> int:
    try:
        return int((paths.state_dir(spec["cluster"]["name"]) / "generation").read_text())
    except (OSError, ValueError):
        return 1


def secret_path(spec: dict, number: int) -> Path:
    return cluster_secret_path(spec) if number == 1 else \
        paths.state_dir(spec["cluster"]["name"]) / f"cluster.secret.{number}"


def secret_bytes(spec: dict, number: int) -> bytes:
    return secret_path(spec, number).read_bytes().strip()


def keyless_users_keys(spec: dict) -> dict[str, list[str]]:
    """The generated test key, for each user the spec gives no SSH key."""
    public = test_key_path(spec).with_suffix(".pub").read_text().strip()
    return {user["name"]: [public] for user in spec["image"]["users"] if not user["ssh_keys"]}


def signed_message(body: dict) -> bytes:
    """What the owner signs: the credential as canonical JSON (the node's clusteros_node.credential agrees)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def bundle_path(spec: dict, number: int | None = None) -> Path:
    number = generation(spec) if number is None else number
    return paths.state_dir(spec["cluster"]["name"]) / f"credential-{number}.json"


def body_of(spec: dict, number: int) -> dict:
    """What generation `number` of the credential says: the secret, SSH keys and, with network.wifi, its key."""
    body = {"cluster": spec["cluster"]["name"], "generation": number, "secret": secret_bytes(spec, number).hex(),
            "ssh_keys": keyless_users_keys(spec)}
    wifi = wifi_mod.credential_part(spec)
    return body | ({"wifi": wifi} if wifi else {})


def ensure_bundle(spec: dict) -> Path:
    """The current generation's signed credential (0600): signed again only when what it says changed
    (network.wifi given, or its key), so that the same spec always hands nodes the same bytes."""
    number = generation(spec)
    target = bundle_path(spec, number)
    body = body_of(spec, number)
    if _says(target, body):
        return target
    bundle = {"credential": body, "signature": sign(spec, signed_message(body))}
    with atomic_path(target, mode=0o600) as tmp:
        tmp.write_text(json.dumps(bundle, indent=2, sort_keys=True) + "\n")
    return target


def _says(bundle: Path, body: dict) -> bool:
    try:
        return json.loads(bundle.read_text())["credential"] == body
    except (OSError, ValueError, KeyError, TypeError):
        return False


def sign(spec: dict, message: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="clusteros-sign-") as work:
        data = Path(work) / "credential"
        data.write_bytes(message)
        runner.run("keys", ["ssh-keygen", "-Y", "sign", "-q", "-f", owner_key_path(spec), "-n", NAMESPACE, data],
                   timeout=60)
        return data.with_name("credential.sig").read_text()


def ssh_keys_text(spec: dict) -> str:
    """The early-boot form of the credential's SSH keys: one `user key` line each (public, not secret)."""
    return "".join(f"{user} {key}\n" for user, keys in sorted(keyless_users_keys(spec).items()) for key in keys)


def rotate(spec: dict) -> int:
    """A new secret and the next generation; returns its number. Nodes get it with `clusteros rotate`."""
    number = generation(spec) + 1
    with atomic_path(secret_path(spec, number), mode=0o600) as tmp:
        tmp.write_text(pysecrets.token_hex(32) + "\n")
    with atomic_path(paths.state_dir(spec["cluster"]["name"]) / "generation", mode=0o600) as tmp:
        tmp.write_text(f"{number}\n")
    ensure_bundle(spec)
    return number
