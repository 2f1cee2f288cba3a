"""qcow2 -> sparse raw -> raw.gz, each checked and written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from clusteros import runner
from clusteros.atomic import atomic_path, write_text
from clusteros.hashing import sha256_file


def to_raw(qcow2: Path, raw: Path) -> None:
    """Convert to a sparse raw disk, and have QEMU compare the two sector by sector."""
    with runner.step("raw", f"{qcow2.name} -> {raw.name} (sparse)"), atomic_path(raw) as tmp:
        runner.run("raw", ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "4k", qcow2, tmp], timeout=1800)
        runner.run("raw", ["qemu-img", "compare", "-f", "qcow2", "-F", "raw", qcow2, tmp], append=True, timeout=1800)
    runner.say("raw", f"{raw}: {allocated(raw) / 2**20:.0f} MiB allocated of {raw.stat().st_size / 2**30:.1f} GiB")


# gzip level 3: a third of level 6's time (9 s against 25 s on 2 cores) for a file 11% larger.
GZIP_LEVEL = "-3"


def compress(raw: Path, gz: Path) -> None:
    """gzip with every core (pigz), streamed from disk: the image is never held in memory."""
    cores = os.cpu_count() or 1
    with runner.step("gz", f"{raw.name} -> {gz.name} with pigz on {cores} cores"), atomic_path(gz) as tmp:
        runner.run("gz", ["pigz", GZIP_LEVEL, "--processes", str(cores), "--stdout", raw], stdout=tmp, timeout=3600)
        digest = sha256_file(tmp)
    write_text(gz.with_name(gz.name + ".sha256"), f"{digest}  {gz.name}\n")
    runner.say("gz", f"{gz}: {gz.stat().st_size / 2**20:.0f} MiB")


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512
