"""Is a port on 127.0.0.1 free, and if not, which program holds it?"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def port_owner(port: int) -> str | None:
    """Who listens on 127.0.0.1:port (or any address), or None if the port is free."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
        return None
    except OSError:
        pass
    finally:
        probe.close()
    return _listener_process(port) or "another program"


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def _listener_process(port: int) -> str | None:
    inodes = _listening_inodes(port)
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = (pid_dir / "comm").read_text().strip()
                    return f"{name} (pid {pid_dir.name})"
        except OSError:
            continue
    return None


def taken(ports: dict[str, int]) -> list[str]:
    """'what port N is taken by PROGRAM' for each taken port of {what: port}."""
    return [f"{what} port {port} is taken by {owner}" for what, port in ports.items()
            if (owner := port_owner(port))]
