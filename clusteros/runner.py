"""The one way ClusterOS runs an external command.

Each run logs its command line and full output to a file under dist/logs/,
prints progress (selected output lines, and a heartbeat while a quiet command
works), and turns failure into a `CommandFailed` that names the step, the
command, the log and its last lines.
"""

from __future__ import annotations

import collections
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import sh

from clusteros import paths
from clusteros.errors import ClusterOSError

HEARTBEAT_SECONDS = 20
TAIL_LINES = 25


class CommandFailed(ClusterOSError):
    def __init__(self, step: str, argv: Sequence[str], log: Path, tail: list[str], reason: str):
        self.step, self.argv, self.log, self.tail = step, list(argv), log, tail
        body = "".join(f"    {line}\n" for line in tail)
        super().__init__(
            f"{step}: {reason}\n  command: {shlex.join(map(str, argv))}\n  full log: {log}\n"
            f"  last lines:\n{body}".rstrip())


class MissingTool(ClusterOSError):
    exit_code = 2


def say(step: str, message: str) -> None:
    """One progress line, to stderr so that table output on stdout stays clean."""
    print(f"[{step}] {message}", file=sys.stderr, flush=True)


def log_path(step: str) -> Path:
    return paths.logs_dir() / f"{step}.log"


def run(step: str, argv: Sequence[str | Path], *, show: Callable[[str], str | None] | None = None,
        cwd: str | Path | None = None, env: dict | None = None, timeout: float | None = None,
        log: Path | None = None, append: bool = False) -> str:
    """Run argv to completion; return its output. Raise CommandFailed or MissingTool.

    `show(line)` may return text to print as progress for an output line.
    """
    argv = [str(a) for a in argv]
    log = log or log_path(step)
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    output: list[str] = []
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            say(step, f"still running {argv[0]} ({time.monotonic() - started:.0f}s); log: {log}")

    with open(log, "a" if append else "w", encoding="utf-8", errors="replace") as logfile:
        logfile.write(f"$ {shlex.join(argv)}\n")
        logfile.flush()

        def on_line(line: str) -> None:
            logfile.write(line)
            output.append(line)
            tail.append(line.rstrip("\n"))
            if show is not None and (text := show(line.rstrip("\n"))):
                say(step, f"{text} ({time.monotonic() - started:.0f}s)")

        try:
            command = sh.Command(argv[0])
        except sh.CommandNotFound:
            raise MissingTool(f"{step}: '{argv[0]}' is not installed.\n"
                              f"  fix: run scripts/install-prereqs.sh (or `clusteros doctor` to see all missing tools)") from None
        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            command(*argv[1:], _out=on_line, _err_to_out=True, _tty_out=False, _cwd=cwd,
                    _env=env, _timeout=timeout, _out_bufsize=1, _encoding="utf-8",
                    _decode_errors="replace", _in=None)
        except sh.ErrorReturnCode as exc:
            logfile.write(f"# exit status {exc.exit_code}\n")
            raise CommandFailed(step, argv, log, list(tail), f"{argv[0]} exited with status {exc.exit_code}") from None
        except sh.TimeoutException:
            logfile.write(f"# timed out after {timeout}s\n")
            raise CommandFailed(step, argv, log, list(tail), f"{argv[0]} timed out after {timeout:.0f}s") from None
        except sh.SignalException as exc:
            raise CommandFailed(step, argv, log, list(tail), f"{argv[0]} was killed ({exc})") from None
        finally:
            done.set()
        logfile.write(f"# ok in {time.monotonic() - started:.1f}s\n")
    return "".join(output)
