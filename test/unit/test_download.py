"""The download module against a real HTTP server on 127.0.0.1 started by the test."""

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from clusteros import download

DATA = bytes(range(256)) * 4096 * 3          # 3 MiB
SHA = hashlib.sha256(DATA).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        count = Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path.startswith("/missing"):
            return self.send_error(404)
        if self.path.startswith("/flaky") and count <= 2:
            return self.send_error(500)
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
        body = DATA[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.path.startswith("/cut") and count == 1:
            self.wfile.write(body[: len(body) // 2])   # then hang up mid-transfer
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTEROS_CACHE_DIR", str(tmp_path / "cache"))
    Handler.hits = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def cached_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_good_file_is_cached_under_its_hash(server, tmp_path):
    path = download.fetch(f"{server}/good/k3s", SHA, backoff=0)
    assert path.read_bytes() == DATA
    assert path.name == f"{SHA}-k3s"
    assert download.fetch(f"{server}/good/k3s", SHA) == path
    assert Handler.hits["/good/k3s"] == 1, "a verified cache hit downloads nothing"


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(download.ChecksumMismatch) as err:
        download.fetch(f"{server}/good/k3s", wrong, backoff=0)
    message = str(err.value)
    assert f"{server}/good/k3s" in message and wrong in message and SHA in message
    assert cached_files(tmp_path) == []


def test_an_interrupted_transfer_is_resumed_with_a_range_request(server, tmp_path, capsys):
    path = download.fetch(f"{server}/cut/k3s", SHA, backoff=0)
    assert path.read_bytes() == DATA
    assert Handler.hits["/cut/k3s"] == 2
    # It resumes from what reached the disk before the hang-up: neither zero nor everything.
    resumed = [line for line in capsys.readouterr().err.splitlines() if "resuming at" in line]
    assert len(resumed) == 1
    offset = float(resumed[0].split("resuming at ")[1].split()[0])
    assert 0 < offset < 3.0


def test_server_errors_are_retried(server):
    path = download.fetch(f"{server}/flaky/k3s", SHA, backoff=0)
    assert path.read_bytes() == DATA
    assert Handler.hits["/flaky/k3s"] == 3


def test_a_missing_file_is_not_retried(server):
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        download.fetch(f"{server}/missing/k3s", SHA, backoff=0)
    assert Handler.hits["/missing/k3s"] == 1


def test_offline_gives_up_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTEROS_CACHE_DIR", str(tmp_path / "cache"))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(download.DownloadError) as err:
        download.fetch(f"http://127.0.0.1:{port}/k3s", SHA, retries=2, backoff=0, timeout=2)
    message = str(err.value)
    assert "after 3 attempts" in message and "cannot reach" in message and "local file" in message


def test_a_local_file_gets_the_same_check(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTEROS_CACHE_DIR", str(tmp_path / "cache"))
    local = tmp_path / "k3s"
    local.write_bytes(DATA)
    assert download.fetch(str(local), SHA).read_bytes() == DATA
    assert download.fetch(f"file://{local}", SHA).read_bytes() == DATA
    with pytest.raises(download.ChecksumMismatch):
        download.fetch(str(local), "1" * 64)


def test_a_corrupted_cache_entry_is_fetched_again(server, tmp_path):
    path = download.fetch(f"{server}/good/k3s", SHA, backoff=0)
    path.write_bytes(b"bit rot")
    assert download.fetch(f"{server}/good/k3s", SHA, backoff=0).read_bytes() == DATA
    assert Handler.hits["/good/k3s"] == 2
