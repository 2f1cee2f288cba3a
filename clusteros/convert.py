"""qcow2 -> sparse raw -> raw.gz, each checked and written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from clusteros import runner
from clusteros.atomic import atomic_path, write_text
from clusteros.image import sha256_file


def to_raw(qcow2: Path, manifest: Path, raw: Path) -> None:
    """Convert to a sparse raw disk and check it is bit-for-bit the disk the image stage wrote."""
    expected = json.loads(manifest.read_text())["outputs"]["raw"]["sha256"]
    runner.say("raw", f"{qcow2.name} -> {raw.name} (sparse)")
    with atomic_path(raw) as tmp:
        runner.run("raw", ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "-S", "4k", qcow2, tmp])
        actual = sha256_file(tmp)
        # A Packer-built image has no predicted raw checksum (Packer wrote the disk).
        if expected is not None and actual != expected:
            raise runner.ClusterOSError(f"raw: {raw.name} does not match the manifest "
                                        f"(expected sha256 {expected}, got {actual}); rebuild with `doit image`")
    runner.say("raw", f"done: {allocated(raw) / 2**20:.0f} MiB allocated of {raw.stat().st_size / 2**30:.1f} GiB")


def compress(raw: Path, gz: Path) -> None:
    """gzip with every core (pigz), streamed from disk: the image is never held in memory."""
    cores = os.cpu_count() or 1
    runner.say("gz", f"{raw.name} -> {gz.name} with pigz on {cores} cores")
    with atomic_path(gz) as tmp:
        runner.run("gz", ["sh", "-c", 'pigz --processes "$0" --stdout "$1" > "$2"', str(cores), raw, tmp])
        digest = sha256_file(tmp)
    write_text(gz.with_name(gz.name + ".sha256"), f"{digest}  {gz.name}\n")
    runner.say("gz", f"done: {gz.stat().st_size / 2**20:.0f} MiB")


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512
