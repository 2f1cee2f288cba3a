"""vde_switch: the test cluster's LAN, unprivileged, over a unix socket directory."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from clusteros import runner
from clusteros.errors import ClusterOSError
from clusteros.vm.machine import pid_from_file

START_TIMEOUT = 5.0


class Switch:
    def __init__(self, directory: Path):
        self.directory = directory.resolve()
        self.sock = self.directory / "switch"
        self.pid_file = self.directory / "switch.pid"

    def pid(self) -> int | None:
        return pid_from_file(self.pid_file, str(self.sock).encode())

    def ensure_running(self) -> None:
        if self.pid():
            return
        self.stop()
        self.directory.mkdir(parents=True, exist_ok=True)
        runner.run("vm-switch", ["vde_switch", "--sock", self.sock, "--daemon", "--pidfile", self.pid_file,
                                 "--mode", "0600"], log=self.directory / "switch.log", timeout=30)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.sock / "ctl").exists():
            if time.monotonic() > deadline:
                raise ClusterOSError(f"vde_switch did not create {self.sock}",
                                     fix=f"see {self.directory / 'switch.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + START_TIMEOUT
            while self.pid() and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.sock, ignore_errors=True)
        self.pid_file.unlink(missing_ok=True)
