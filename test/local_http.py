"""A folder served over HTTP on 127.0.0.1: the tests' stand-in for servers this machine cannot reach
(K3s's release page, Ubuntu's ISO) and for a fleet's web server."""

import contextlib
import functools
import http.server
import threading
from pathlib import Path


@contextlib.contextmanager
def serve_directory(directory: Path, *, port: int = 0, requests: list | None = None):
    """Yield the base URL. Each request's path goes to `requests` when given. `port` 0: a free one; a
    taken `port` raises OSError (a caller that names a port has told others the URL)."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            if requests is not None:
                requests.append(self.path)

    handler = functools.partial(Handler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
