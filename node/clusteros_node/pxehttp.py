"""serve-pxe's HTTP server: the image and the boot scripts, to the machines netbooting this LAN.

Its own module because http.server brings ssl and email with it, a third of a second at every
`clusteros-node` command under emulation, and only serve-pxe needs it.
"""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files only (no listing), and logs each request as one line."""

    def list_directory(self, path):
        self.send_error(404)
        return None

    def log_message(self, format, *args):
        print(f"serve-pxe: http: {self.address_string()} {format % args}", flush=True)

    def copyfile(self, source, outputfile):
        """The kernel's sendfile, not a copy through Python: hundreds of MB per netbooting machine."""
        outputfile.flush()
        self.connection.sendfile(source)


def start(address: str, port: int, served: Path) -> ThreadingHTTPServer:
    """Serve `served` on address:port from a thread; the caller shuts it down."""
    http = ThreadingHTTPServer((address, port), partial(QuietHandler, directory=str(served)))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return http
