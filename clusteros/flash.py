"""Writing the USB installer to a stick, safely: `clusteros flash DEVICE` (and `doit flash`).

`dd` with one wrong letter wipes a disk. The flasher refuses what is plainly not a stick
(a partition, a mounted disk, the disk the running system lives on, and, unless forced, a
disk that is not removable), says what it is about to erase and asks, writes with a
progress line, and then reads everything back past the page cache and compares it with
the image's sha256 (`dist/<name>-usb.img.sha256`, written by `doit usb`). With
`--credential`, the owner's part follows the image (see installer/owner_part.py), and
is read back too.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clusteros import runner
from clusteros.errors import ClusterOSError, UsageError
from clusteros.installer import owner_part
from clusteros.progress import Progress

CHUNK = 4 * 2**20
BLKFLSBUF = 0x1261   # linux/fs.h: drop the device's buffers, so reading back reads the medium


@dataclass(frozen=True)
class Disk:
    """What lsblk says of a block device and of what is on it."""
    path: str
    kind: str                 # disk, loop, part, ...
    size: int
    model: str
    serial: str
    removable: bool           # RM, hot-pluggable, or on USB
    mounts: tuple[str, ...]   # mount points of the device and of its partitions
    parent: str | None        # the whole disk a partition belongs to

    def describe(self) -> str:
        what = " ".join(part for part in (self.model, f"serial {self.serial}" if self.serial else "") if part)
        return f"{self.path} ({what or self.kind}, {self.size / 1e9:.1f} GB)"


def inspect(path: str) -> Disk:
    """lsblk's view of `path`; a UsageError if it is not a block device."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}", fix="name the stick's device, e.g. /dev/sdb (see `lsblk`)")
    if not stat.S_ISBLK(mode):
        raise UsageError(f"{path} is not a block device", fix="name the stick's device, e.g. /dev/sdb (see `lsblk`)")
    out = subprocess.run(["lsblk", "--json", "--bytes", "--output",
                          "PATH,TYPE,SIZE,MODEL,SERIAL,RM,HOTPLUG,TRAN,MOUNTPOINT,PKNAME", path],
                         capture_output=True, text=True, check=True).stdout
    return from_lsblk(json.loads(out)["blockdevices"][0])


def from_lsblk(row: dict) -> Disk:
    mounts = []

    def walk(node: dict) -> None:
        if node.get("mountpoint"):
            mounts.append(node["mountpoint"])
        for child in node.get("children", []):
            walk(child)
    walk(row)
    flag = lambda key: str(row.get(key)).lower() in ("1", "true")   # noqa: E731 - lsblk prints either
    return Disk(path=row["path"], kind=row["type"], size=int(row["size"]), model=(row.get("model") or "").strip(),
                serial=(row.get("serial") or "").strip(), removable=flag("rm") or flag("hotplug") or row.get("tran") == "usb",
                mounts=tuple(mounts), parent=row.get("pkname"))


def system_disks() -> set[str]:
    """The whole disks under /, /boot, /boot/efi, /usr and every active swap: never a target."""
    sources = []
    for mount in ("/", "/boot", "/boot/efi", "/usr"):
        out = subprocess.run(["findmnt", "--noheadings", "--output", "SOURCE", "--target", mount],
                             capture_output=True, text=True)
        sources += out.stdout.split()
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        sources.append(line.split()[0])
    disks = set()
    for source in sources:
        if source.startswith("/dev/"):
            out = subprocess.run(["lsblk", "--noheadings", "--paths", "--inverse", "--list", "--output", "PATH,TYPE",
                                  source], capture_output=True, text=True)
            disks |= {fields[0] for fields in map(str.split, out.stdout.splitlines())
                      if len(fields) == 2 and fields[1] in ("disk", "loop")}
    return disks


def refusal(disk: Disk, image_bytes: int, system: set[str], force: bool) -> str | None:
    """Why `disk` must not be written, or None."""
    if disk.kind == "part":
        return f"{disk.path} is a partition of /dev/{disk.parent}: name the whole stick"
    if disk.path in system:
        return f"{disk.path} holds the running system"
    if disk.mounts:
        return f"{disk.path} is in use: mounted at {', '.join(disk.mounts)} (unmount it, if it is really the stick)"
    if disk.size < image_bytes:
        return f"{disk.path} holds {disk.size / 2**20:.0f} MiB; the image needs {image_bytes / 2**20:.0f} MiB"
    if not disk.removable and not force:
        return f"{disk.path} is not a removable disk (use --force if it really is the stick)"
    return None


# --------------------------------------------------------------------------
# Writing and checking


def expected_sha256(sha_file: Path) -> tuple[str, int]:
    """The image's sha256 and size from `<name>-usb.img.sha256` (`<hex>  <name>  <bytes>`)."""
    try:
        digest, _name, size = sha_file.read_text().split()
        return digest, int(size)
    except (OSError, ValueError):
        raise ClusterOSError(f"{sha_file} is missing or unreadable", fix="build it again with `doit usb`")


def write(device: str, image_gz: Path, size: int, part: bytes | None) -> str:
    """Stream the image onto the device (and the owner's part after it); the sha256 of what was sent."""
    digest, done = hashlib.sha256(), 0
    progress = Progress("flash", "writing", size)
    fd = os.open(device, os.O_WRONLY | os.O_EXCL)   # O_EXCL: refused while anything holds the device
    try:
        with gzip.open(image_gz, "rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                _write_all(fd, chunk)
                done += len(chunk)
                progress.update(done)
        if part is not None:
            os.lseek(fd, owner_part.offset_after(done), os.SEEK_SET)
            _write_all(fd, part)
        runner.say("flash", "syncing (the stick may take a while to take it all)")
        os.fsync(fd)
        progress.update(done, final=True)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_back(device: str, size: int) -> str:
    """The sha256 of the device's first `size` bytes, as the medium holds them (not the page cache)."""
    digest, done = hashlib.sha256(), 0
    progress = Progress("flash", "verifying", size)
    fd = os.open(device, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while done < size:
            chunk = os.read(fd, min(CHUNK, size - done))
            if not chunk:
                raise ClusterOSError(f"{device} ended after {done} bytes while reading back")
            digest.update(chunk)
            done += len(chunk)
            progress.update(done)
        progress.update(done, final=True)
    finally:
        os.close(fd)
    return digest.hexdigest()


def read_at(device: str, offset: int, length: int) -> bytes:
    with open(device, "rb", buffering=0) as f:
        f.seek(offset)
        return f.read(length)


# --------------------------------------------------------------------------
# The command


def confirm(disk: Disk, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"not erasing {disk.describe()} without a yes", fix="answer at a terminal, or pass --yes")
    answer = input(f"Erase {disk.describe()} and write the installer to it? Type yes: ")
    if answer.strip() != "yes":
        raise UsageError("nothing written", fix="type yes to erase the stick")


def flash(device: str, image_gz: Path, sha_file: Path, *, credential: Path | None = None,
          yes: bool = False, force: bool = False) -> None:
    """Check, confirm, write, read back. Raises with the reason; prints what it did."""
    sha, size = expected_sha256(sha_file)
    part = credential.read_bytes() if credential is not None else None
    needed = owner_part.offset_after(size) + len(part) if part is not None else size
    disk = inspect(device)
    why = refusal(disk, needed, system_disks(), force)
    if why:
        raise UsageError(f"not writing {device}: {why}", fix="name the stick's whole device (see `lsblk`)")
    confirm(disk, yes)
    runner.say("flash", f"writing {image_gz.name} to {disk.describe()}")
    sent = write(disk.path, image_gz, size, part)
    if sent != sha:
        raise ClusterOSError(f"{image_gz} does not hold the image {sha_file.name} names (sha256 {sent}, not {sha})",
                             fix="build it again with `doit usb`; the stick holds a bad copy")
    back = read_back(disk.path, size)
    if back != sha:
        raise ClusterOSError(f"{disk.path} reads back differently from what was written (sha256 {back}, not {sha})",
                             fix="the stick may be failing or fake: try another")
    if part is not None and read_at(disk.path, owner_part.offset_after(size), len(part)) != part:
        raise ClusterOSError(f"{disk.path}: the credential part reads back differently", fix="try another stick")
    extra = " and your credential: a node installed from it joins by itself" if part is not None else ""
    runner.say("flash", f"{disk.path}: written and read back, sha256 {sha[:16]}... matches{extra}.")
