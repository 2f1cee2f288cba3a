"""Read every byte of a build artifact, as a stranger holding it could, and report any secret in it.

An artifact is read as what it is: a sparse disk by its data extents only (SEEK_DATA),
a gzip or zstd stream decompressed, an ISO 9660 image both as its own bytes and file by file
(extracted with xorriso, each compressed member decompressed: the installer's initrd and
the image data (zstd)). A folder is every file in it. A compressed file already decompressed
(the same sha256: the image data the ISO and the PXE set carry) is not decompressed twice, and
neither is a gzip member byte for byte the same as one that inflated to zeros only: the raw.gz
repeats one such member for every stretch of the disk's holes (clusteros.convert), 3.4 of its
4 GiB, which cost 16 s of inflating zeros here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import mmap
import os
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 8 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ISO_MAGIC_OFFSET, ISO_MAGIC = 0x8001, b"CD001"


@dataclass
class Needles:
    """What must not be found: name -> bytes (none all zeros: runs of zeros are not searched)."""
    items: dict[str, bytes]

    def __post_init__(self):
        zeros = [name for name, needle in self.items.items() if not needle.strip(b"\0")]
        assert not zeros, f"a needle of zeros would be in every disk: {zeros}"

    @classmethod
    def for_secret(cls, label: str, secret: bytes) -> Needles:
        """A secret in every spelling a careless writer could use: itself, hex, base64."""
        return cls({f"{label}": secret, f"{label} (hex)": secret.hex().encode(),
                    f"{label} (base64)": base64.b64encode(secret).rstrip(b"=")})

    @classmethod
    def for_private_key(cls, label: str, key: Path) -> Needles:
        """An OpenSSH private key by a line from the middle of its body (unique to that key)."""
        lines = [line for line in key.read_text().splitlines() if not line.startswith("-----")]
        return cls({label: lines[len(lines) // 2].encode()})

    def __or__(self, other: Needles) -> Needles:
        return Needles(self.items | other.items)

    @property
    def longest(self) -> int:
        return max(len(n) for n in self.items.values())


@dataclass
class Scan:
    needles: Needles
    findings: list[str] = field(default_factory=list)
    decompressed: set[str] = field(default_factory=set)   # sha256 of the compressed files read
    read_bytes: int = 0

    def path(self, path: Path, where: str | None = None) -> None:
        where = where or str(path)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file():
                    self.path(child, f"{where}/{child.relative_to(path)}")
            return
        with open(path, "rb") as f:
            head = f.read(ISO_MAGIC_OFFSET + len(ISO_MAGIC))
        if _compressed(head):
            self.compressed_file(path, f"{where} (decompressed)")
            return
        self.sparse_file(path, where)
        if head[ISO_MAGIC_OFFSET:] == ISO_MAGIC:
            self.iso_members(path, where)

    def compressed_file(self, path: Path, where: str) -> None:
        digest = _sha256(path)
        if digest in self.decompressed:
            return
        self.decompressed.add(digest)
        if _head(path).startswith(GZIP_MAGIC):
            self.gzip_members(path, where)
            return
        with _zstd_decompressed(path) as stream:
            self.stream(stream, where)

    def gzip_members(self, path: Path, where: str) -> None:
        """Each member of a gzip file (RFC 1952: a series of members) inflated and searched, but
        for one the same, byte for byte, as a member that inflated to zeros only."""
        zero_members: dict[bytes, int] = {}     # compressed bytes -> how many zeros they make
        tail = b""
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = 0
            while at < len(data):
                if data[at] == 0 and not data[at:].strip(b"\0"):
                    break       # zeros after the last member: padding, which gzip and Python's gzip allow
                same = next((m for m in zero_members if data[at:at + len(m)] == m), None)
                if same is not None:
                    at += len(same)
                    self.read_bytes += zero_members[same]
                    keep = self.needles.longest - 1     # what a needle across this member could need
                    tail = (tail + bytes(min(zero_members[same], keep)))[-keep:]
                    continue
                end, inflated, tail = self._gzip_member(data, at, tail, where)
                if inflated is not None and end - at <= 2**20:
                    zero_members[bytes(data[at:end])] = inflated
                at = end

    def _gzip_member(self, data, at: int, tail: bytes, where: str) -> tuple[int, int | None, bytes]:
        """Inflate and search the member at `at`: (where the next one starts, how many bytes it
        made if all were zeros else None, the tail for the next search)."""
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)    # gzip: its header and CRC checked
        fed, made, zeros_only = at, 0, True
        while not inflater.eof:
            if inflater.unconsumed_tail:
                piece = inflater.decompress(inflater.unconsumed_tail, CHUNK)
            else:   # no input left, then only what zlib still holds (it gives at most CHUNK a call)
                chunk = data[fed:fed + CHUNK]
                fed += len(chunk)
                piece = inflater.decompress(chunk, CHUNK)
                if not chunk and not piece:
                    raise ValueError(f"{where}: the gzip stream ends inside a member")
            if piece:
                self.read_bytes += len(piece)
                made += len(piece)
                zeros_only = zeros_only and not piece.strip(b"\0")
                self._search(tail + piece, where)
                tail = (tail + piece)[-(self.needles.longest - 1):]
        end = fed - len(inflater.unused_data)   # (at the end, unconsumed_tail holds the same bytes)
        return end, made if zeros_only else None, tail

    def stream(self, stream, where: str) -> None:
        """Search a stream chunk by chunk, each chunk with the tail of the last, so that a needle
        across two chunks is found."""
        tail = b""
        while chunk := stream.read(CHUNK):
            self.read_bytes += len(chunk)
            self._search(tail + chunk, where)
            tail = chunk[-(self.needles.longest - 1):]

    def sparse_file(self, path: Path, where: str) -> None:
        """Every data extent of a (sparse) file; holes are zeros and hold nothing."""
        fd = os.open(path, os.O_RDONLY)
        try:
            size, offset = os.fstat(fd).st_size, 0
            while offset < size:
                try:
                    start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:        # ENXIO: no data after offset
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                os.lseek(fd, start, os.SEEK_SET)
                self.stream(_Limited(fd, end - start), f"{where} @{start}")
                offset = end
        finally:
            os.close(fd)

    def iso_members(self, iso: Path, where: str) -> None:
        with tempfile.TemporaryDirectory(prefix="scan-iso-") as tmp:
            subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", tmp],
                           check=True, capture_output=True)
            for member in sorted(Path(tmp).rglob("*")):
                if member.is_file() and _compressed(_head(member)):
                    self.compressed_file(member, f"{where}:{member.relative_to(tmp)} (decompressed)")

    def _search(self, data: bytes, where: str) -> None:
        # Zeros hold no needle, and most of a raw disk's gzip stream is its holes: 3.4 of 4 GiB.
        if data[:1] == b"\0" and data.count(0) == len(data):
            return
        for name, needle in self.needles.items.items():
            if needle in data:
                self.findings.append(f"{where}: {name}")


class _Limited:
    """`length` bytes of a file descriptor from its current offset, as a readable stream."""

    def __init__(self, fd: int, length: int):
        self.fd, self.left = fd, length

    def read(self, size: int) -> bytes:
        data = os.read(self.fd, min(size, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(ZSTD_MAGIC))


def _compressed(head: bytes) -> bool:
    return head.startswith((GZIP_MAGIC, ZSTD_MAGIC))


@contextlib.contextmanager
def _zstd_decompressed(path: Path):
    """Through `zstd -dc`: no zstd in this Python."""
    with subprocess.Popen(["zstd", "-dcq", str(path)], stdout=subprocess.PIPE) as zstd:
        yield zstd.stdout
        zstd.stdout.close()
        if zstd.wait() != 0:
            raise RuntimeError(f"zstd could not decompress {path}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def scan(paths: list[Path], needles: Needles) -> Scan:
    found = Scan(needles)
    for path in paths:
        found.path(path)
    return found
