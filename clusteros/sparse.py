"""Where a sparse file (a raw disk) has data: its extents, from SEEK_DATA/SEEK_HOLE."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def data_extents(path: Path, merge_gap: int = 0, align: int = 1) -> list[tuple[int, int]]:
    """(offset, length) of each run of data, in order.

    Holes shorter than `merge_gap` are taken in with their neighbours. Each extent is widened to
    `align` (the file's size is a multiple of it: a disk's).
    """
    spans: list[list[int]] = []
    with open(path, "rb") as f:
        fd, size, position = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:   # no data after position
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            start, end = start - start % align, min(size, -(-end // align) * align)
            if spans and start - spans[-1][1] < merge_gap:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
            position = end
    return [(start, end - start) for start, end in spans]
