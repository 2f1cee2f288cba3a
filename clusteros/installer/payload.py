"""The payload: the raw disk's data extents, gzipped back to back, and their map."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clusteros import runner
from clusteros.atomic import atomic_path, write_json
from clusteros.convert import GZIP_LEVEL
from clusteros.hashing import sha256_file

MERGE_GAP = 1024 * 1024
CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class Payload:
    """image.data.gz (the raw disk's data extents, back to back, gzipped) and their map."""
    data_gz: Path
    extents: tuple[Extent, ...]
    gz_sha256: str

    @property
    def data_bytes(self) -> int:
        return sum(e.length for e in self.extents)


def data_extents(raw: Path, merge_gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """(offset, length) of the sparse raw disk's data, from SEEK_DATA/SEEK_HOLE.

    Holes closer than `merge_gap` are written as zeros with their neighbours:
    fewer, longer writes for the installer.
    """
    spans: list[list[int]] = []
    with open(raw, "rb") as f:
        fd, size, position = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:   # no data after position
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            if spans and start - spans[-1][1] < merge_gap:
                spans[-1][1] = end
            else:
                spans.append([start, end])
            position = end
    return [(start, end - start) for start, end in spans]


def render_map(extents) -> str:
    return "".join(f"{e.offset} {e.length} {e.sha256}\n" for e in extents)


def _extents_read(raw: Path, extents: list[Extent]) -> Iterator[bytes]:
    """The raw disk's data extents in order, as chunks; each extent's sha256 lands in `extents`."""
    with open(raw, "rb") as f:
        for offset, length in data_extents(raw):
            digest = hashlib.sha256()
            f.seek(offset)
            left = length
            while left:
                chunk = f.read(min(left, CHUNK))
                digest.update(chunk)
                left -= len(chunk)
                yield chunk
            extents.append(Extent(offset, length, digest.hexdigest()))


def build_payload(raw: Path, data_gz: Path, description: Path) -> None:
    """Read the raw disk's data extents once: hash each, and stream them into pigz.

    `description` (JSON) lists the extents with their sha256 and the gzip's own sha256.
    """
    extents: list[Extent] = []
    cores = os.cpu_count() or 1
    with runner.step("payload", f"packing the data of {raw.name} (its holes are left out)"), \
            atomic_path(data_gz) as tmp:
        runner.run("payload", ["pigz", GZIP_LEVEL, "--processes", str(cores), "--no-name", "--stdout"],
                   stdin=_extents_read(raw, extents), stdout=tmp, timeout=3600)
        payload = Payload(data_gz, tuple(extents), sha256_file(tmp))
        write_json(description, {"data_gz": data_gz.name, "gz_sha256": payload.gz_sha256,
                                 "extents": [[e.offset, e.length, e.sha256] for e in extents]})
    runner.say("payload", f"{payload.data_bytes / 2**20:.0f} MiB of data in {len(extents)} extents, "
               f"{data_gz.stat().st_size / 2**20:.0f} MiB gzipped")


def load_payload(description: Path) -> Payload:
    data = json.loads(description.read_text())
    return Payload(description.with_name(data["data_gz"]),
                   tuple(Extent(*e) for e in data["extents"]), data["gz_sha256"])
