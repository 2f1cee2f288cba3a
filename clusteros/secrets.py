"""Per-cluster secrets, the owner's key and the test SSH key, kept out of cluster.yaml, git and images.

They live in the state directory (mode 0700, files 0600) and are made once:
rebuilding an image must not change the cluster secret under running nodes.
"""

from __future__ import annotations

import os
import secrets as pysecrets
from pathlib import Path

from clusteros import paths, runner
from clusteros.atomic import atomic_path


def cluster_secret_path(spec: dict) -> Path:
    given = spec["cluster"].get("secret_file")
    return Path(given) if given else paths.state_dir(spec["cluster"]["name"]) / "cluster.secret"


def test_key_path(spec: dict) -> Path:
    """Private half of the generated test key; the public half is beside it as .pub."""
    return paths.state_dir(spec["cluster"]["name"]) / "id_ed25519"


def owner_key_path(spec: dict) -> Path:
    """The owner's signing key: it signs every credential (clusteros.credentials); images carry its .pub."""
    return paths.state_dir(spec["cluster"]["name"]) / "owner_ed25519"


def state_dir(spec: dict) -> Path:
    state = paths.state_dir(spec["cluster"]["name"])
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    return state


def ensure_cluster_secret(spec: dict) -> Path:
    path = cluster_secret_path(spec)
    if spec["cluster"].get("secret_file") or path.exists():
        return path
    state_dir(spec)
    with atomic_path(path, mode=0o600) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(pysecrets.token_hex(32) + "\n")
    return path


def ensure_ssh_key(key: Path, comment: str) -> Path:
    """An ed25519 key pair at `key` and `key`.pub, made once, whole or not at all."""
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_name(f".{key.name}.part")
    for stale in (tmp, tmp.with_name(tmp.name + ".pub")):
        stale.unlink(missing_ok=True)
    runner.run("keys", ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", tmp], timeout=60)
    os.replace(tmp.with_name(tmp.name + ".pub"), key.with_suffix(".pub"))
    os.replace(tmp, key)
    return key


def ensure_all(spec: dict) -> None:
    state_dir(spec)
    ensure_cluster_secret(spec)
    ensure_ssh_key(test_key_path(spec), f"clusteros-test@{spec['cluster']['name']}")
    ensure_ssh_key(owner_key_path(spec), f"clusteros-owner@{spec['cluster']['name']}")
