"""Who leads: a pure function of what a node has heard, so it can be tested with any history.

The controller runs slurmctld and the K3s server: moving it costs running jobs and
K3s state, so the rule keeps it where it is while it lives, and moves it only after
it has been silent for a grace period:

1. Every announcement says which controller its sender follows. The controller that
   the most live members follow, among the live ones, leads (ties: the lowest name).
   A node that boots into a running cluster follows it, even if its own name is lower.
2. When no live member follows a live controller (it went silent, or the cluster is
   new), the old controller keeps the role until it has been silent for `grace`.
3. Then the first live node the spec marks `role: controller` leads, or, when the spec
   marks none, the lowest-named live node (names in counting order: node2 before node10). When the spec marks nodes, the role never
   goes to a node it does not mark.
4. A node that has never followed anyone (a new cluster) waits up to `forming` seconds
   from its start for the node rule 3 prefers among all the spec lists (machines boot
   at different speeds): a cluster whose nodes boot together is led by that node, not
   by whichever booted first.

Time here is monotonic seconds since the agent started: a wall-clock step moves nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

GRACE = 300.0   # seconds a silent controller keeps its role, counted from when it was last heard (the spec's
                # cluster.controller_grace; this is its default): a server's reboot, firmware included, fits
FORMING = 30.0   # seconds a new node waits for the spec's preferred controller to be heard


@dataclass(frozen=True)
class View:
    live: frozenset[str]                      # live members, this node included
    follows: dict[str, str | None]            # each live member's announced controller
    current: str | None = None                # the controller this node follows now
    silent_for: dict[str, float] = field(default_factory=dict)   # seconds since each member was last heard
    marked: tuple[str, ...] = ()              # the spec's role: controller nodes, in spec order
    listed: tuple[str, ...] = ()              # every node the spec names
    up_for: float = float("inf")              # seconds since this node's agent started


def name_order(name: str) -> tuple:
    """Names in the order a person counts them: node2 before node10."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def choose(view: View, grace: float = GRACE, forming: float = FORMING) -> str | None:
    """The controller this node should follow (None: not yet)."""
    followed = _most_followed(view)
    if followed is not None:
        return followed
    if view.current is not None and view.silent_for.get(view.current, 0.0) < grace:
        if not view.marked or view.current in view.marked:
            return view.current
    if view.current is None and view.up_for < forming:
        preferred = view.marked[0] if view.marked else min(view.listed, key=name_order, default=None)
        if preferred is not None and preferred not in view.live:
            return None
    return _first_choice(view)


def _most_followed(view: View) -> str | None:
    votes = Counter(leader for member, leader in view.follows.items()
                    if member in view.live and leader in view.live
                    and (not view.marked or leader in view.marked))
    if not votes:
        return None
    most = max(votes.values())
    return min((leader for leader, count in votes.items() if count == most), key=name_order)


def _first_choice(view: View) -> str | None:
    if view.marked:
        live = [name for name in view.marked if name in view.live]
        return live[0] if live else (view.current if view.current in view.marked else view.marked[0])
    return min(view.live, key=name_order) if view.live else None
