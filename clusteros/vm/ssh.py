"""SSH to a VM through its forwarded port on 127.0.0.1, with the generated test key.

Commands share one connection per node (OpenSSH's ControlMaster, its socket in the
node's own 0700 folder): a key exchange costs an emulated guest most of a second of
CPU, and checks run hundreds of commands. The master is started on its own, with no
terminal and no pipes of ours, so that a command's output ends when the command does.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "IdentitiesOnly=yes"]
NO_CONNECTION = 255   # what ssh itself exits with when it cannot connect or log in
MASTER_IDLE = 120     # seconds a shared connection outlives its last command


@dataclass(frozen=True)
class SSHTarget:
    port: int
    user: str
    key: Path
    host: str = "127.0.0.1"
    control_dir: Path | None = None     # where the shared connection's socket lives; None: no sharing

    @property
    def control_path(self) -> Path | None:
        return self.control_dir / "ssh.sock" if self.control_dir else None

    def _base(self, connect_timeout: int) -> list[str]:
        return ["ssh", "-i", str(self.key), "-p", str(self.port), *SSH_OPTIONS,
                "-o", f"ConnectTimeout={connect_timeout}"]

    def argv(self, command: str | None = None, *, interactive: bool = False, connect_timeout: int = 10) -> list[str]:
        """ssh argv; `command` is one shell command line, run by the login shell on the node."""
        argv = self._base(connect_timeout)
        if interactive:
            argv.append("-t")
        else:
            argv += ["-o", "BatchMode=yes"]
        if self.control_path and not interactive:
            argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control_path}"]
        argv.append(f"{self.user}@{self.host}")
        if command:
            argv += ["--", command]
        return argv

    def _ensure_master(self, timeout: float) -> None:
        """Start the shared connection if there is none (a failure just means commands connect on their own)."""
        path = self.control_path
        if path is None:
            return
        check = self._base(5) + ["-o", f"ControlPath={path}", "-O", "check", f"{self.user}@{self.host}"]
        if path.exists() and subprocess.run(check, capture_output=True, timeout=15).returncode == 0:
            return
        path.unlink(missing_ok=True)
        start = self._base(10) + ["-o", "BatchMode=yes", "-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
                                  "-o", f"ControlPersist={MASTER_IDLE}", "-N", "-f", f"{self.user}@{self.host}"]
        try:
            subprocess.run(start, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run one command line; output captured. A hung connection counts as no connection."""
        try:
            self._ensure_master(min(timeout, 30))
            return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], NO_CONNECTION, "", f"ssh timed out after {timeout:.0f}s")

    def close(self) -> None:
        """End the shared connection (a node going down ends it by itself)."""
        if self.control_path and self.control_path.exists():
            subprocess.run(self._base(5) + ["-o", f"ControlPath={self.control_path}", "-O", "exit",
                                            f"{self.user}@{self.host}"], capture_output=True, timeout=15)
