"""The one way ClusterOS runs an external command, and says what it is doing.

`run` logs a command line and its full output to a file under dist/logs/,
prints progress (selected output lines, and a heartbeat while a quiet command
works), and turns failure into a `CommandFailed` that names the step, the
command, the log and its last lines. `step` wraps a stage's phase in a start
line and an end line with its duration.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

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


@contextlib.contextmanager
def step(name: str, doing: str) -> Iterator[None]:
    """`with step("image", "writing the disk"):` says when a phase starts, ends, and how long it took."""
    say(name, f"{doing} ...")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        say(name, f"{doing}: failed after {time.monotonic() - started:.1f}s")
        raise
    say(name, f"{doing}: done in {time.monotonic() - started:.1f}s")


def log_path(step_name: str) -> Path:
    return paths.logs_dir() / f"{step_name}.log"


def _program(name: str, env: dict | None, step_name: str) -> str:
    """Find argv[0] on the PATH of the environment the command will run in."""
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(name, path=search)
    if found is None:
        raise MissingTool(f"{step_name}: '{name}' is not installed (searched {search})",
                          fix="run scripts/install-prereqs.sh (or `clusteros doctor` to see all missing tools)")
    return found


@contextlib.contextmanager
def _heartbeat(step_name: str, program: str, log: Path) -> Iterator[None]:
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            say(step_name, f"still running {program} ({time.monotonic() - started:.0f}s); log: {log}")

    threading.Thread(target=beat, daemon=True).start()
    try:
        yield
    finally:
        done.set()


def run(step_name: str, argv: Sequence[str | Path], *, show: Callable[[str], str | None] | None = None,
        cwd: str | Path | None = None, env: dict | None = None, timeout: float | None = None,
        log: Path | None = None, append: bool = False, stdin: Path | bytes | Iterable[bytes] | None = None,
        stdout: Path | None = None) -> str:
    """Run argv to completion; return its output. Raise CommandFailed or MissingTool.

    `env` is the command's whole environment (default: this process's). `stdin` is a
    file to read, bytes, or an iterable of byte chunks (streamed); `stdout` a file that takes the command's output instead of
    the log (its errors still go to the log). `show(line)` may return text to print as
    progress for an output line.
    """
    argv = [str(a) for a in argv]
    log = log or log_path(step_name)
    log.parent.mkdir(parents=True, exist_ok=True)
    program = _program(argv[0], env, step_name)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    output: list[str] = []
    started = time.monotonic()
    with open(log, "a" if append else "w", encoding="utf-8", errors="replace") as logfile, \
            contextlib.ExitStack() as files:
        logfile.write(f"$ {shlex.join(argv)}" + (f" > {stdout}" if stdout else "") + "\n")
        logfile.flush()

        def on_line(line: str) -> None:
            logfile.write(line)
            output.append(line)
            tail.append(line.rstrip("\n"))
            if show is not None and (text := show(line.rstrip("\n"))):
                say(step_name, f"{text} ({time.monotonic() - started:.0f}s)")

        streams = _streams(files, on_line, stdin, stdout)
        with _heartbeat(step_name, argv[0], log):
            _call(step_name, program, argv, streams, cwd=cwd, env=env, timeout=timeout, log=logfile, tail=tail)
        logfile.write(f"# ok in {time.monotonic() - started:.1f}s\n")
    return "".join(output)


def _streams(files: contextlib.ExitStack, on_line: Callable[[str], None], stdin, stdout) -> dict:
    streams: dict = {"_in": None}
    if isinstance(stdin, (bytes, bytearray)):
        streams["_in"] = bytes(stdin)
    elif isinstance(stdin, (str, Path)):
        streams["_in"] = files.enter_context(open(stdin, "rb"))
    elif stdin is not None:
        streams["_in"] = stdin      # an iterable of chunks: sh feeds them as they come
    if stdout is None:
        streams.update(_out=on_line, _err_to_out=True, _out_bufsize=1)
    else:
        out: IO[bytes] = files.enter_context(open(stdout, "wb"))
        streams.update(_out=out, _err=on_line, _err_bufsize=1)
    return streams


def _call(step_name: str, program: str, argv: list[str], streams: dict, *, cwd, env, timeout, log, tail) -> None:
    try:
        sh.Command(program)(*argv[1:], **streams, _tty_out=False, _cwd=cwd, _env=env, _timeout=timeout,
                            _encoding="utf-8", _decode_errors="replace")
    except sh.SignalException as exc:   # before ErrorReturnCode: it is one of them
        log.write(f"# killed: {exc.exit_code}\n")
        raise CommandFailed(step_name, argv, Path(log.name), list(tail), f"{argv[0]} was killed by a signal") from None
    except sh.ErrorReturnCode as exc:
        log.write(f"# exit status {exc.exit_code}\n")
        raise CommandFailed(step_name, argv, Path(log.name), list(tail),
                            f"{argv[0]} exited with status {exc.exit_code}") from None
    except sh.TimeoutException:
        log.write(f"# timed out after {timeout}s\n")
        raise CommandFailed(step_name, argv, Path(log.name), list(tail),
                            f"{argv[0]} timed out after {timeout:g}s") from None
