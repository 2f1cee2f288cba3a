"""Targets appear whole or not at all.

A target is written under a temporary name in the same directory and renamed
into place only when complete, so a killed build leaves no half-file that a
later run (or doit) mistakes for done.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


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
