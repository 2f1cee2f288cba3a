"""Targets appear whole or not at all.

A target is written under a temporary name in the same directory and renamed
into place only when complete, so a killed build leaves no half-file that a
later run (or doit) mistakes for done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from clusteros import paths


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto target on success, with `mode`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: str | os.PathLike, text: str, mode: int = 0o644) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, data, mode: int = 0o644) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def replace_dir(new: Path, target: Path) -> None:
    """Swap the folder `new` in for `target`: at no moment is there a half-filled target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    shutil.move(new, target)
    shutil.rmtree(old, ignore_errors=True)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (images are hundreds of MiB), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@contextlib.contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A scratch folder under dist/tmp (on the same file system as the targets), removed afterwards."""
    parent = (paths.dist_dir() / "tmp").resolve()
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as name:
        yield Path(name)
