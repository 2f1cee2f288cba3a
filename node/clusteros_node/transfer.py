"""Credentials over wg0: a member serves them to the candidates it approved, and receives rotations.

A small TCP service on the member's wg0 address only (so WireGuard has proved who is
at the other end before a byte arrives). One line says what is wanted:
- `GET`: the caller must be at the wg0 address of a candidate this member approved;
  it gets the credential bundle, as the owner signed it.
- `PUSH <length>`: a member hands on a new credential (rotation); the bundle follows,
  and is checked against the owner's signature by whoever takes it, who answers `OK` once
  it holds it (nothing, if it refused it).
Everything is bounded: the line, the bundle, the time a connection may take.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

from clusteros_node.credential import MAX_BYTES

TIMEOUT = 10.0


def _read_line(conn: socket.socket, limit: int = 32) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk or len(data) >= limit:
            raise ValueError("no request line")
        data += chunk
    return data.decode("ascii", errors="replace").strip()


def _read_exactly(conn: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = conn.recv(min(65536, length - len(data)))
        if not chunk:
            raise ValueError("the bundle ended early")
        data += chunk
    return data


class Server:
    """Serves GET to approved candidates and takes PUSHes; `on_*` run in the server's thread."""

    def __init__(self, address: str, port: int, credential_for: Callable[[str], bytes | None],
                 on_push: Callable[[bytes, str], None], log: Callable[[str], None]):
        self.credential_for, self.on_push, self.log = credential_for, on_push, log
        self.address = address
        self.listener = socket.create_server((address, port), reuse_port=True)
        self.thread = threading.Thread(target=self._serve, name="credential-server", daemon=True)
        try:
            self.thread.start()
        except BaseException:   # no listener left bound for a retry to bind a second beside
            self.listener.close()
            raise

    def _serve(self) -> None:
        while True:
            try:
                conn, (peer, _) = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(TIMEOUT)
                    self._answer(conn, peer)
                except (OSError, ValueError) as why:
                    self.log(f"credential service: {peer}: {why}")
                except Exception as why:   # noqa: BLE001 - a bug must cost one request, never the service
                    self.log(f"credential service: {peer}: unexpected {type(why).__name__}: {why}")

    def _answer(self, conn: socket.socket, peer: str) -> None:
        line = _read_line(conn)
        if line == "GET":
            bundle = self.credential_for(peer)
            if bundle is None:
                raise ValueError("asked for a credential, but is no candidate this node approved")
            conn.sendall(bundle)
            self.log(f"credential service: handed the credential to {peer}")
        elif line.startswith("PUSH ") and line[5:].isdigit() and int(line[5:]) <= MAX_BYTES:
            self.on_push(_read_exactly(conn, int(line[5:])), peer)
            conn.sendall(b"OK\n")
        else:
            raise ValueError(f"unknown request {line[:20]!r}")

    def close(self) -> None:
        """Stop taking connections. shutdown() first: on Linux, close() alone does not wake the
        thread blocked in accept(), which would take one more connection on the old address."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


def _connect(address: str, port: int, device: str | None) -> socket.socket:
    """A connection that leaves by `device` only (wg0: were it missing, the route to a wg0
    address could be the default one, and a credential would cross the LAN in the clear)."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if device:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        conn.settimeout(TIMEOUT)
        conn.connect((address, port))
        return conn
    except BaseException:
        conn.close()
        raise


def fetch(address: str, port: int, device: str | None = None) -> bytes:
    """GET the credential from the member at `address` (over wg0)."""
    with _connect(address, port, device) as conn:
        conn.sendall(b"GET\n")
        data = b""
        while len(data) <= MAX_BYTES:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
    raise ValueError("the credential is too large")


def push(address: str, port: int, bundle: bytes, device: str | None = None) -> None:
    """Hand a credential to the member at `address`; returns once it holds it."""
    with _connect(address, port, device) as conn:
        conn.sendall(f"PUSH {len(bundle)}\n".encode() + bundle)
        if conn.recv(3) != b"OK\n":
            raise ConnectionError("it did not take the credential (see its node-agent's journal)")
