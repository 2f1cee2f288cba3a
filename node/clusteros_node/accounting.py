"""Job accounting: slurmdbd and its MariaDB database on the storage node.

slurmctld, wherever the controller is, sends job records to slurmdbd over wg0
(AccountingStorageHost in slurm.conf), and slurmdbd authenticates it by munge. The
controller names slurmdbd in slurm.conf only once it has answered: slurmctld 22.05 with a
database it never reached and no saved state exits ("we have no TRES from it"), as on a
first boot whose storage node is not up yet. The
database account's password is made on the storage node the first time and never leaves
it: it lives in slurmdbd.conf (0600, slurm's, as slurmdbd demands) and is handed to
MariaDB on stdin, never on a command line.
"""

from __future__ import annotations

import pwd
import re
import secrets
import select
import socket
import time
from pathlib import Path

from clusteros_node import system

DBD_CONF = Path("/etc/slurm/slurmdbd.conf")
DBD_PORT = 6819
DATABASE = "slurm_acct_db"


def render_dbd_conf(password: str) -> str:
    return "\n".join([
        "# Written by the ClusterOS node-agent. Do not edit: it is rewritten.",
        "AuthType=auth/munge",
        "DbdHost=localhost",
        f"DbdPort={DBD_PORT}",
        "SlurmUser=slurm",
        "PidFile=/run/slurmdbd.pid",
        "StorageType=accounting_storage/mysql",
        "StorageHost=localhost",
        "StorageUser=slurm",
        f"StoragePass={password}",
        f"StorageLoc={DATABASE}",
    ]) + "\n"


def password_in(conf: str) -> str | None:
    found = re.search(r"^StoragePass=([0-9a-f]{32})$", conf, re.MULTILINE)
    return found.group(1) if found else None


def grant_sql(password: str) -> str:
    """Idempotent: run at every agent start, it leaves an existing database as it is."""
    return (f"CREATE DATABASE IF NOT EXISTS {DATABASE};\n"
            f"CREATE USER IF NOT EXISTS 'slurm'@'localhost';\n"
            f"ALTER USER 'slurm'@'localhost' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL ON {DATABASE}.* TO 'slurm'@'localhost';\n")


class ConnectProbe:
    """Has a TCP port on a host ever taken a connection? Asked without holding the agent's tick:
    a connect is started and given `first_wait` (a host that is up answers within it, so the
    usual case is decided at once); a host whose packets are dropped (a storage node that is down)
    is looked at again on the next call, and tried afresh after `patience`. Once answered, it stays."""

    def __init__(self, port: int, patience: float = 5.0, first_wait: float = 0.2, clock=time.monotonic):
        self.port, self.patience, self.first_wait, self.clock = port, patience, first_wait, clock
        self.answered = False
        self.sock: socket.socket | None = None
        self.host: str | None = None
        self.started = 0.0

    def answered_by(self, host: str) -> bool:
        if self.answered:
            return True
        wait = 0.0
        if self.sock is None or self.host != host:
            self._close()
            self._start(host)
            wait = self.first_wait
        _, writable, _ = select.select([], [self.sock], [], wait)
        if writable:   # connected, or refused: SO_ERROR says which
            self.answered = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            self._close()
        elif self.clock() - self.started > self.patience:
            self._close()   # no answer at all: start again next time
        return self.answered

    def _start(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.host, self.started = host, self.clock()
        self.sock.connect_ex((host, self.port))   # EINPROGRESS, or an error SO_ERROR reports next call

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Accounting:
    """Keeps MariaDB and slurmdbd running on the storage node; sets the database up once per start.
    On the controller, says whether slurmdbd has answered yet."""

    def __init__(self, probe: ConnectProbe | None = None, reached_file: Path | None = None):
        self.granted = False
        self.units: dict[str, str] = {}
        self.probe = probe or ConnectProbe(DBD_PORT)
        self.reached = system.Kept(reached_file)    # the storage node's wg0 address, once it answered

    def reachable(self, host: str) -> bool:
        """Has slurmdbd on `host` ever taken a connection? Once it has, it stays so: slurmctld keeps
        its accounting through an outage (it queues the records), rather than restart twice.

        Kept across reboots in `reached_file`: slurmctld that ran with this database has saved its
        state (the TRES it got from it) and starts with the database named even while slurmdbd is
        not up yet, as after a reboot of a controller that is also the storage node. Naming it only
        once it answered again would restart slurmctld a few seconds after its start, and a batch
        job it was launching then was lost (requeued as NODE_FAIL, seen in a clean-clone run)."""
        if host == self.reached.text.strip():
            return True
        answered = self.probe.answered_by(host)
        if answered:
            self.reached.set(f"{host}\n")
        return answered

    def ensure(self) -> None:
        """MariaDB, then the database account, then slurmdbd, a step a tick: each unit is started
        without waiting for it (MariaDB's first start takes many seconds under emulation, and
        the tick must go on taking members in); the next tick goes on once it is up."""
        self.units = system.unit_states("mariadb.service", "slurmdbd.service")
        if self.units["mariadb.service"] != "active":
            if self.units["mariadb.service"] != "activating":
                system.run("systemctl", "start", "--no-block", "mariadb.service")
            return
        if not self.granted:
            password = password_in(system.read_text(DBD_CONF)) or secrets.token_hex(16)
            system.run("mariadb", "--batch", stdin=grant_sql(password))
            slurm = pwd.getpwnam("slurm")
            system.write_if_changed(DBD_CONF, render_dbd_conf(password).encode(), mode=0o600,
                                    owner=(slurm.pw_uid, slurm.pw_gid))
            self.granted = True
        if self.units["slurmdbd.service"] not in ("active", "activating"):
            system.run("systemctl", "start", "--no-block", "slurmdbd.service")

    def state(self) -> dict:
        """As last seen by ensure (a tick ago at most)."""
        return {unit.replace(".service", ""): state for unit, state in self.units.items()}
