"""Bounded per-sender rate limiting: a flood from one address cannot crowd out the others, and the
table of senders never grows without bound."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable


class Limiter:
    """A token bucket per sender: `rate` messages a second, bursts of `burst`; at most `senders` tracked."""

    def __init__(self, rate: float, burst: float, senders: int = 256, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.senders, self.clock = rate, burst, senders, clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, sender: str) -> bool:
        now = self.clock()
        tokens, last = self.buckets.pop(sender, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self.buckets[sender] = (tokens - 1.0 if allowed else tokens, now)
        while len(self.buckets) > self.senders:
            self.buckets.popitem(last=False)   # the sender heard from longest ago
        return allowed


class Throttled:
    """Says something about a sender at most once per `every` seconds (log lines a flood cannot multiply)."""

    def __init__(self, every: float, senders: int = 256, clock: Callable[[], float] = time.monotonic):
        self.every, self.senders, self.clock = every, senders, clock
        self.last: OrderedDict[str, float] = OrderedDict()

    def due(self, sender: str) -> bool:
        now = self.clock()
        last = self.last.pop(sender, None)
        self.last[sender] = now if last is None or now - last >= self.every else last
        while len(self.last) > self.senders:
            self.last.popitem(last=False)
        return last is None or now - last >= self.every
