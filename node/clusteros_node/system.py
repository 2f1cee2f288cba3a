"""Small helpers for changing the node: commands, files written only when they change."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


class CommandError(RuntimeError):
    """A command the agent ran failed; its message names the program, never its input."""


# How many times the agent has changed the node: a file written, a command run that is not a
# query. The agent compares it around a reconciliation to know that it found the node in shape.
changes = 0


def run(*argv: str, check: bool = True, timeout: float = 60, stdin: str | None = None) -> str:
    """Run a command that may change the node; its output. Secrets go through `stdin` or files, never through argv."""
    global changes
    changes += 1
    return _run(argv, check, timeout, stdin)


def query(*argv: str, check: bool = True, timeout: float = 60) -> str:
    """Run a command that only reads (`systemctl is-active`, `wg show`...); its output."""
    return _run(argv, check, timeout, None)


def _run(argv: tuple[str, ...], check: bool, timeout: float, stdin: str | None) -> str:
    if argv[0] in ("systemd-run", "systemd-mount") or (argv[0] == "systemctl" and CHANGES_UNITS & set(argv[1:])):
        _seen.clear()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv[0]} did not finish in {timeout:.0f}s") from None
    if check and out.returncode != 0:
        raise CommandError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def read_text(path: Path | str) -> str:
    """A file's text, or "" when it is not there (yet)."""
    try:
        return read_bytes(path).decode()
    except OSError:
        return ""


def read_bytes(path: Path | str) -> bytes:
    """A small file's bytes, by plain system calls: the agent reads a dozen files a tick, and under
    emulation Python's file objects cost twice the calls themselves (0.39 ms against 0.16 a read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# What write_if_changed last found or left at each path, with the file's identity then: a file nobody
# has touched since (same inode, size and change time) is not read again for RECHECK_AFTER seconds.
# A stat is a third of a read. (Before Linux 6.13 a change time moves in clock ticks: a same-size
# rewrite in place within one tick of the agent's own keeps it; the recheck bounds how long that lasts.)
_on_disk: dict[Path, tuple[tuple[int, int, int], bytes, float]] = {}
RECHECK_AFTER = 60.0


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_ctime_ns


def write_if_changed(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> bool:
    """Atomically replace `path` with `data` if it differs. True if it changed."""
    found, now = _identity(path), time.monotonic()
    known = _on_disk.get(path)
    if found is not None and known is not None and known[:2] == (found, data) and now - known[2] < RECHECK_AFTER:
        return False
    try:
        if found is not None and found[1] == len(data) and read_bytes(path) == data:
            _on_disk[path] = (found, data, now)
            return False
    except OSError:
        pass
    global changes
    changes += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    if owner:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    _on_disk[path] = (_identity(path), data, now)
    return True


class Kept:
    """A small text the agent keeps across its restarts and the node's reboots: read once, when
    the agent starts (not every tick), written when it changes. Without a path, in memory only."""

    def __init__(self, path: Path | None):
        self.path = path
        self.text = read_text(path) if path is not None else ""

    def set(self, text: str) -> None:
        if self.path is not None:
            write_if_changed(self.path, text.encode())
        self.text = text


# Unit states. Every `systemctl` costs a process (and systemd an answer), and under emulation
# that costs: asked unit by unit, the agent's checks took ~40% of an idle node's CPU; once a
# tick, ~8%. One `systemctl is-active` asks for every unit the agent has ever asked about, and
# what it said is kept from tick to tick while it is steady: every unit active, inactive or
# failed (a unit on its way, activating say, is asked again every tick), no unit's cgroup filled
# or emptied since (a file read: a daemon that dies or starts is seen at the next tick), and for
# at most STEADY_TICKS ticks, 30 s (what the cgroups do not show, a unit of another slice say).
# A command that changes a unit forgets what was read. (Every 5 ticks, the commands were still
# half of an idle agent's CPU under emulation: ~85 ms each.)
_seen: dict[str, str] = {}
_watched: set[str] = set()
CHANGES_UNITS = {"start", "stop", "restart", "reload", "try-restart", "reset-failed", "daemon-reload", "kill"}
STEADY = {"active", "inactive", "failed"}
STEADY_TICKS = 15
SERVICES_CGROUP = Path("/sys/fs/cgroup/system.slice")
_seen_at = {"tick": 0, "cgroups": {}}
_steady = False


# Other state the agent reads by a command (wg0's peers: the mesh and the status file): read at
# most once every few ticks by the agent, every time by a process that does not tick (a
# candidate, a command), and read afresh once the reader's module has changed it.
_tick = 0
_kept: dict[str, tuple[int, object]] = {}   # what -> (the tick it was read at, what was read)


def new_tick() -> None:
    """Another tick: unit states are read afresh unless they are steady, and what read_every keeps
    when it is as old as its caller allows."""
    global _tick, _steady
    _tick += 1
    _steady = _units_steady()
    if not _steady:
        _seen.clear()


def units_steady() -> bool:
    """At this tick, every unit the agent asks about is as it was when last read (see _seen)."""
    return _steady


def _units_steady() -> bool:
    return (_tick - _seen_at["tick"] < STEADY_TICKS and set(_seen.values()) <= STEADY
            and _cgroups(_seen) == _seen_at["cgroups"])


def _cgroups(units) -> dict[str, str]:
    """Each unit's cgroup events ("populated 1", ...); "" for a unit without a cgroup of its own."""
    base = os.fspath(SERVICES_CGROUP)   # joined as text: pathlib's joins were half this every-tick read's cost
    return {unit: read_text(f"{base}/{unit}/cgroup.events") for unit in units}


def read_every(what: str, read: Callable[[], T], ticks: int = 1) -> T:
    """`read()`, kept for `ticks` ticks in the agent (1: read afresh every tick); every time outside it."""
    if not _tick:
        return read()
    kept = _kept.get(what)
    if kept is None or _tick - kept[0] >= ticks:
        kept = _kept[what] = (_tick, read())
    return kept[1]


def forget(what: str) -> None:
    """`what` changed: the next read_every reads it again."""
    _kept.pop(what, None)


def unit_state(unit: str) -> str:
    return unit_states(unit)[unit]


def unit_states(*units: str) -> dict[str, str]:
    global _steady
    missing = [unit for unit in units if unit not in _seen]
    if missing:
        _watched.update(missing)
        ask = sorted(_watched - _seen.keys())
        cgroups = _cgroups(ask)   # before the question: a change after it is seen next tick
        states = query("systemctl", "is-active", *ask, check=False).split()
        _seen.update(zip(ask, states + ["unknown"] * (len(ask) - len(states))))
        if len(ask) == len(_seen):   # every state read at once: the steady count starts now
            _seen_at.update(tick=_tick, cgroups={})
            _steady = set(_seen.values()) <= STEADY
        _seen_at["cgroups"].update(cgroups)
    return {unit: _seen[unit] for unit in units}


def meminfo_kib(text: str, field: str) -> int | None:
    """A field of /proc/meminfo's text (its values are in KiB); None if it has no such line."""
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def memory_mb() -> int:
    return (meminfo_kib(Path("/proc/meminfo").read_text(), "MemTotal") or 0) // 1024
