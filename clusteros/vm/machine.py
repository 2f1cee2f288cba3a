"""One QEMU process, driven over QMP with the qemu.qmp library.

QEMU is started with -daemonize, so it outlives the doit run that started it;
its pid file, QMP socket and serial log sit in the machine's own directory.
Every later command (status, powerdown, quit) opens a fresh QMP connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp import QMPClient, QMPError

from clusteros import runner
from clusteros.errors import ClusterOSError

QMP_CONNECT_TIMEOUT = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class MachineError(ClusterOSError):
    pass


def pid_from_file(pid_file: Path, marker: bytes) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line holds `marker`.

    The marker guards against a stale pid file naming an unrelated process that reused the pid.
    """
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


@dataclass
class Machine:
    """One QEMU. As a context manager, it is stopped (gracefully if it can be) when the block ends."""

    name: str
    directory: Path
    stop_timeout: float = 30.0
    qmp_timeout: float = 5.0     # one QMP command; a wedged QEMU costs this much per step of the stop

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.is_alive():
            self.stop(self.stop_timeout)

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def vnc_socket(self) -> Path:
        """Where a machine with a screen serves it (QEMU leaves the socket behind when it exits)."""
        return self.directory / "vnc.sock"

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    @property
    def log(self) -> Path:
        return self.directory / "qemu.log"

    # -- process -------------------------------------------------------------

    def pid(self) -> int | None:
        """The QEMU pid, if the pid file names a live QEMU of this machine."""
        return pid_from_file(self.pid_file, str(self.qmp_socket).encode())

    def is_alive(self) -> bool:
        return self.pid() is not None

    def rss_mb(self) -> float | None:
        """The host memory the QEMU process holds (its resident set), in MB; None if it is not running."""
        pid = self.pid()
        try:
            status = Path(f"/proc/{pid}/status").read_text() if pid else ""
        except OSError:   # it exited since
            return None
        kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
        return None if kib is None else round(kib / 1024, 1)

    def launch(self, argv: list[str]) -> int:
        """Start QEMU daemonized with the machine's QMP socket, pid file and serial log added.

        The machine's folder is 0700: its disk overlay, console log and sockets are its owner's alone.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.remove_runtime_files()
        self.serial_log.unlink(missing_ok=True)
        full = argv + [
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-serial", f"file:{self.serial_log}",
            "-pidfile", str(self.pid_file),
            "-daemonize",
        ]
        runner.run(f"vm-{self.name}", full, log=self.log, timeout=60)
        pid = self.pid()
        if pid is None:
            raise MachineError(f"{self.name}: QEMU started but is not running", fix=f"see {self.log}")
        self.greeting()
        return pid

    def remove_runtime_files(self) -> None:
        for path in (self.qmp_socket, self.pid_file, self.vnc_socket):
            path.unlink(missing_ok=True)

    # -- QMP -----------------------------------------------------------------
    # Each operation is one short QMP session. Every step has a deadline: a QEMU
    # that is stopped or wedged must not hang the tool that asks about it.

    def _session(self, work, timeout: float = QMP_CONNECT_TIMEOUT):
        async def session():
            client = QMPClient(self.name)
            try:
                await asyncio.wait_for(self._connect(client, timeout), timeout)
                return await work(client)
            finally:
                try:
                    await asyncio.wait_for(client.disconnect(), 2.0)
                except (asyncio.TimeoutError, QMPError, OSError, EOFError):
                    pass
        try:
            return asyncio.run(session())
        except asyncio.TimeoutError:
            raise MachineError(f"{self.name}: QMP did not answer on {self.qmp_socket} in time") from None
        except (QMPError, OSError, EOFError) as exc:
            # EOF: QEMU closed the connection, as it does when told to quit.
            raise MachineError(f"{self.name}: QMP failed on {self.qmp_socket}: {exc!r}") from None

    async def _connect(self, client: QMPClient, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await client.connect(str(self.qmp_socket))
                return
            except (QMPError, OSError) as exc:
                if time.monotonic() > deadline or not self.is_alive():
                    raise MachineError(f"{self.name}: no QMP greeting on {self.qmp_socket}: {exc}") from None
                await asyncio.sleep(0.1)

    def greeting(self) -> dict:
        """Connect, negotiate capabilities, and return QEMU's version."""
        return self.execute("query-version")

    def execute(self, command: str, timeout: float = QMP_CONNECT_TIMEOUT, **arguments) -> object:
        async def work(client: QMPClient):
            return await asyncio.wait_for(client.execute(command, arguments or None), timeout)
        return self._session(work, timeout)

    def run_state(self) -> str:
        """QMP query-status: 'running', 'paused', 'shutdown', ...; 'down' if QEMU is gone."""
        if not self.is_alive():
            return "down"
        try:
            return self.execute("query-status", timeout=self.qmp_timeout)["status"]
        except MachineError:
            return "unresponsive"

    def powerdown(self, timeout: float) -> bool:
        """ACPI power button, then wait for the guest's SHUTDOWN event. True if it came."""
        if not self.is_alive():
            return True

        async def work(client: QMPClient) -> bool:
            with client.listener("SHUTDOWN") as listener:
                await asyncio.wait_for(client.execute("system_powerdown"), self.qmp_timeout)
                try:
                    await asyncio.wait_for(listener.get(), timeout)
                    return True
                except asyncio.TimeoutError:
                    return False
        try:
            return self._session(work, timeout=self.qmp_timeout)
        except MachineError:
            return not self.is_alive()

    def stop(self, timeout: float) -> str:
        """Graceful powerdown, then QMP quit, then SIGKILL. Says which one ended it.

        `timeout` 0 (or less): no powerdown, quit at once (a machine whose disk nothing needs again)."""
        how = "powered down"
        if self.is_alive() and (timeout <= 0 or not self.powerdown(timeout)):
            how = "quit over QMP"
            try:
                self.execute("quit", timeout=self.qmp_timeout)
            except MachineError:
                pass
        if not self._wait_gone(self.qmp_timeout):
            how = "killed"
            pid = self.pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(self.qmp_timeout)
        self.remove_runtime_files()
        return how

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def console_text(self) -> str:
        """Everything the serial console printed so far, without terminal escapes."""
        try:
            return _ANSI.sub("", self.serial_log.read_bytes().decode(errors="replace"))
        except OSError:
            return ""

    def serial_tail(self, lines: int = 20) -> list[str]:
        if not self.serial_log.exists():
            return ["(no serial log)"]
        return [line for line in self.console_text().splitlines() if line.strip()][-lines:]
