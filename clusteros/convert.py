"""qcow2 -> sparse raw -> raw.gz, each checked and written atomically."""

from __future__ import annotations

import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from clusteros import runner
from clusteros.atomic import atomic_path, write_text
from clusteros.hashing import sha256_file
from clusteros.progress import Progress
from clusteros.sparse import data_extents


def to_raw(qcow2: Path, raw: Path) -> None:
    """Convert to a sparse raw disk, and have QEMU compare the two sector by sector."""
    with runner.step("raw", f"{qcow2.name} -> {raw.name} (sparse)"), atomic_path(raw) as tmp:
        runner.run("raw", ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "4k", qcow2, tmp], timeout=1800)
        runner.run("raw", ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", qcow2, tmp], append=True, timeout=1800)
    runner.say("raw", f"{raw}: {allocated(raw) / 2**20:.0f} MiB allocated of {raw.stat().st_size / 2**30:.1f} GiB")


# gzip level 3: a third of level 6's time for a file 11% larger.
GZIP_LEVEL = 3
# The raw disk is mostly holes (3.4 of its 4 GiB): deflating them would be most of the work. The
# raw.gz is a series of gzip members instead, one per MEMBER bytes of the disk (RFC 1952 2.2: a
# gzip file is a series of members; gzip, zcat, pigz and Python's gzip read them all): a member
# where the disk has only holes is one member of zeros, made once; the others are deflated on every
# core. 10 CPU-seconds for the default image, its sha256 included, where pigz took 24; a smaller file.
MEMBER = 16 * 2**20


def compress(raw: Path, gz: Path) -> None:
    """raw -> raw.gz (and its .sha256), streamed from disk: the image is never held in memory."""
    cores = os.cpu_count() or 1
    size = raw.stat().st_size
    with runner.step("gz", f"{raw.name} -> {gz.name} on {cores} cores (its holes as zeros, not deflated)"), \
            atomic_path(gz) as tmp:
        progress = Progress("gz", f"{raw.name}", size)
        with open(raw, "rb") as source, open(tmp, "wb") as out:
            for done, member in gzip_members(source.fileno(), size, data_extents(raw), cores):
                out.write(member)
                progress.update(done)
        progress.update(size, final=True)
        digest = sha256_file(tmp)
    write_text(gz.with_name(gz.name + ".sha256"), f"{digest}  {gz.name}\n")
    runner.say("gz", f"{gz}: {gz.stat().st_size / 2**20:.0f} MiB")


def gzip_members(fd: int, size: int, extents: list[tuple[int, int]], workers: int) -> Iterator[tuple[int, bytes]]:
    """(bytes of the disk done, member) for each MEMBER-sized piece of the file, in order.

    `extents` says where the file has data; a piece outside them is zeros. At most 2 x `workers`
    pieces are in memory at once.
    """
    zeros: dict[int, bytes] = {}

    def piece(pool: ThreadPoolExecutor, offset: int) -> Future:
        length = min(MEMBER, size - offset)
        if any(start < offset + length and offset < start + span for start, span in extents):
            return pool.submit(lambda: _member(os.pread(fd, length, offset)))
        if length not in zeros:   # made once, as small as deflate makes it
            zeros[length] = _member(bytes(length), level=9)
        done: Future = Future()
        done.set_result(zeros[length])
        return done

    with ThreadPoolExecutor(workers) as pool:   # zlib lets go of the GIL while it deflates
        pending: deque = deque()
        for offset in range(0, size, MEMBER):
            pending.append((min(offset + MEMBER, size), piece(pool, offset)))
            if len(pending) >= 2 * workers:
                end, future = pending.popleft()
                yield end, future.result()
        while pending:
            end, future = pending.popleft()
            yield end, future.result()


def _member(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """One gzip member of `data` (no name, no time: the same bytes make the same member)."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return deflate.compress(data) + deflate.flush()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512
