"""The agent's control socket: how `clusteros-node approve|forget|rotate` reach the running agent.

A unix socket in /run/clusteros, mode 0600: only root on the node can use it. One
JSON request per connection, one JSON answer: {"ok": true, "message": ...}.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Callable

MAX_REQUEST = 128 * 1024
TIMEOUT = 30.0


class Server:
    def __init__(self, path: Path, handle: Callable[[dict], str], log: Callable[[str], None]):
        self.handle, self.log = handle, log
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.listener.listen(4)
        threading.Thread(target=self._serve, name="control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    request = json.loads(_receive(conn))
                    answer = {"ok": True, "message": self.handle(request)}
                except (OSError, ValueError) as why:
                    answer = {"ok": False, "message": str(why)}
                try:
                    conn.sendall(json.dumps(answer).encode())
                except OSError:
                    pass


def _receive(conn: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")


def ask(path: Path, request: dict) -> dict:
    """Send one request to the running agent and wait for its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT)
        conn.connect(str(path))
        conn.sendall(json.dumps(request).encode())
        conn.shutdown(socket.SHUT_WR)
        return json.loads(_receive(conn) or b'{"ok": false, "message": "no answer"}')
