"""SSH to a VM through its forwarded port on 127.0.0.1, with the generated test key."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "IdentitiesOnly=yes"]
NO_CONNECTION = 255   # what ssh itself exits with when it cannot connect or log in


@dataclass(frozen=True)
class SSHTarget:
    port: int
    user: str
    key: Path
    host: str = "127.0.0.1"

    def argv(self, command: str | None = None, *, interactive: bool = False, connect_timeout: int = 10) -> list[str]:
        """ssh argv; `command` is one shell command line, run by the login shell on the node."""
        argv = ["ssh", "-i", str(self.key), "-p", str(self.port), *SSH_OPTIONS,
                "-o", f"ConnectTimeout={connect_timeout}"]
        if interactive:
            argv.append("-t")
        else:
            argv += ["-o", "BatchMode=yes"]
        argv.append(f"{self.user}@{self.host}")
        if command:
            argv += ["--", command]
        return argv

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run one command line; output captured. A hung connection counts as no connection."""
        try:
            return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], NO_CONNECTION, "", f"ssh timed out after {timeout:.0f}s")
