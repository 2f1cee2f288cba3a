"""The owner's part of a USB stick: the cluster credential, after the installer, never inside it.

The USB image (dist/<name>-usb.img.gz) is shareable: it holds no secret. On the owner's
own stick, the credential follows the image, at the first MiB boundary after it: a
header line `CLUSTEROS-CREDENTIAL 1 <length>` and a tar of credential.json (the
signed credential) and ssh-keys (the SSH keys for users the spec gives none). The
installer finds it there (the ISO's own volume descriptor says where the image ends)
and copies both into the installed system, so a node installed from the owner's stick
joins with nobody typing anything. `doit usb` writes this part as its own 0600 file,
dist/<name>-usb-credential.bin; `clusteros owner-stick` and the flasher put it on a stick.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

from clusteros.atomic import atomic_path

MAGIC = b"CLUSTEROS-CREDENTIAL 1"
MIB = 1024 * 1024


def block(bundle: bytes, ssh_keys: str) -> bytes:
    """The credential part: header line, then a tar of credential.json and ssh-keys."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("credential.json", bundle), ("ssh-keys", ssh_keys.encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    body = archive.getvalue()
    return MAGIC + f" {len(body)}\n".encode() + body


def offset_after(image_bytes: int) -> int:
    """Where the part goes: the first MiB boundary after the image (the installer computes the same)."""
    return -(-image_bytes // MIB) * MIB


def write_block(part: Path, data: bytes) -> None:
    with atomic_path(part, mode=0o600) as tmp:
        tmp.write_bytes(data)


def owner_stick(usb_gz: Path, part: Path, out: Path) -> None:
    """A whole stick image (0600): the shareable installer, then the owner's part."""
    with atomic_path(out, mode=0o600) as tmp:
        with gzip.open(usb_gz) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 4 * MIB)
            end = dst.tell()
            dst.seek(offset_after(end))
            dst.write(part.read_bytes())
