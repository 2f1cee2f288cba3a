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
        if self.path.endswith("/sha256sum-amd64.txt"):
            # As a K3s release lists them; /wrongsums/ lists a hash that does not match.
            listed = "f" * 64 if self.path.startswith("/wrongsums") else SHA
            body = f"{'0' * 64}  k3s-airgap-images-amd64.tar\n{listed}  k3s\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
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
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def cached_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_good_file_is_cached_under_its_hash(server, tmp_path, capsys):
    path = download.fetch(f"{server}/good/k3s", SHA, backoff=0)
    assert path.read_bytes() == DATA
    assert "[download] [####################] 3.0/3.0 MiB (100%)" in capsys.readouterr().err
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
    assert "after 3 attempts" in message and "cannot reach" in message and "local copy" in message


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


def test_an_unpinned_file_is_checked_against_the_published_checksums(server, tmp_path, capsys):
    url = f"{server}/release/v1.31.4%2Bk3s1/k3s"
    sums = f"{server}/release/v1.31.4%2Bk3s1/sha256sum-amd64.txt"
    path = download.fetch(url, checksums=sums, backoff=0)
    assert path.read_bytes() == DATA and path == download.cache_path(url, None)
    assert f"lists sha256 {SHA}" in capsys.readouterr().err
    # A cache hit is checked against the hash recorded at download time, with no request at all.
    assert download.fetch(url, checksums=sums) == path
    assert Handler.hits[sums.removeprefix(server)] == 1 and Handler.hits[url.removeprefix(server)] == 1
    path.write_bytes(b"bit rot")
    assert download.fetch(url, checksums=sums, backoff=0).read_bytes() == DATA


def test_a_file_that_does_not_match_its_published_checksum_is_refused(server, tmp_path):
    sums = f"{server}/wrongsums/sha256sum-amd64.txt"
    with pytest.raises(download.ChecksumMismatch) as err:
        download.fetch(f"{server}/good/k3s", checksums=sums, backoff=0)
    assert "f" * 64 in str(err.value) and SHA in str(err.value) and sums in str(err.value)
    assert cached_files(tmp_path) == []


def test_a_checksum_file_that_does_not_list_the_file_is_an_error(server, tmp_path):
    with pytest.raises(download.DownloadError, match="lists no sha256 for 'k3s-arm64'"):
        download.fetch(f"{server}/good/k3s-arm64", checksums=f"{server}/r/sha256sum-amd64.txt", backoff=0)
    assert "/good/k3s-arm64" not in Handler.hits, "nothing is downloaded before its hash is known"
