"""A long byte count, said as it goes: done of the whole, rate, time left, on one line."""

from __future__ import annotations

import sys
import time


class Progress:
    """One line on stderr: bytes done, rate, time left; redrawn in place on a terminal (every 0.5 s),
    a line every 10 s in a log."""

    def __init__(self, stage: str, what: str, total: int):
        self.stage, self.what, self.total, self.started, self.shown = stage, what, total, time.monotonic(), 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < (0.5 if self.tty else 10.0):
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-6)
        left = (self.total - done) / rate if rate else 0
        line = (f"[{self.stage}] {self.what}: {done / 2**20:.0f}/{self.total / 2**20:.0f} MiB, "
                f"{rate / 2**20:.1f} MiB/s, {left:.0f} s left")
        print(("\r" + line if self.tty else line) + ("\n" if final and self.tty else ""), end="" if self.tty else "\n",
              file=sys.stderr, flush=True)
