"""Small helpers for changing the node: commands, files written only when they change."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class CommandError(RuntimeError):
    """A command the agent ran failed; its message names the program, never its input."""


def run(*argv: str, check: bool = True, timeout: float = 60, stdin: str | None = None) -> str:
    """Run a command; its output. Secrets go through `stdin` or files, never through argv."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv[0]} did not finish in {timeout:.0f}s") from None
    if check and out.returncode != 0:
        raise CommandError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def read_text(path: Path) -> str:
    """A file's text, or "" when it is not there (yet)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def write_if_changed(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> bool:
    """Atomically replace `path` with `data` if it differs. True if it changed."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    if owner:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    return True


def unit_state(unit: str) -> str:
    return run("systemctl", "is-active", unit, check=False).strip() or "unknown"


def unit_states(*units: str) -> dict[str, str]:
    """Several units' states from one systemctl (each one costs a process, and time under emulation)."""
    states = run("systemctl", "is-active", *units, check=False).split()
    return {unit: state for unit, state in zip(units, states + ["unknown"] * (len(units) - len(states)))}


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0
