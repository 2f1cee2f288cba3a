"""Downloads that can be trusted: streamed, resumed, retried, and checked before use.

A file lands in the cache as <cache>/downloads/<sha256>-<name> only once its
SHA-256 matches the one given; until then it is <...>.part, which a later run
resumes with an HTTP Range request. A mismatch deletes the partial file and
names the URL and both hashes. An air-gapped user points at a local file (a
path or file:// URL) and gets the same check.

Where no hash is pinned, the publisher's checksum file (`<sha256>  <name>`
lines, as K3s releases carry) decides: the file is cached under its URL as
url-<key>-<name>, with the hash it was checked against beside it in .sha256, so
a later cache hit is checked again without the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from clusteros import paths
from clusteros.hashing import sha256_file
from clusteros.errors import ClusterOSError

CHUNK = 1024 * 1024
RETRIES = 4
BACKOFF = 1.0
TIMEOUT = 30.0
BAR_WIDTH = 20
# Errors a retry can fix; any other 4xx is final.
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(ClusterOSError):
    pass


class ChecksumMismatch(DownloadError):
    pass


def cache_path(url: str, sha256: str | None) -> Path:
    """Where `url` is cached: under its pinned hash, or under the URL itself when the hash is published."""
    key = sha256.lower() if sha256 else "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return paths.cache_dir() / "downloads" / f"{key}-{file_name(url)}"


def file_name(url: str) -> str:
    return Path(unquote(urlparse(url).path)).name or "download"


def fetch(source: str, sha256: str | None = None, *, checksums: str | None = None, retries: int = RETRIES,
          backoff: float = BACKOFF, timeout: float = TIMEOUT, label: str = "download") -> Path:
    """Return the cached, verified file for `source` (http(s) URL, file:// URL or path).

    It is checked against `sha256`, or, when that is None, against what the
    checksum file at `checksums` lists for the file's name.
    """
    if (sha256 is None) == (checksums is None):
        raise TypeError("fetch needs exactly one of sha256 and checksums")   # a caller's bug, not the user's
    target = cache_path(source, sha256)
    recorded = target.with_name(target.name + ".sha256")
    if target.exists():
        expected = sha256.lower() if sha256 else (recorded.read_text().strip() if recorded.exists() else None)
        if expected is not None and sha256_file(target) == expected:
            return target
        target.unlink()   # a cache entry that no longer matches is not trusted
    if sha256 is None:
        sha256 = published_sha256(checksums, file_name(source), retries=retries, backoff=backoff,
                                  timeout=timeout, label=label)
        _say(label, f"{checksums} lists sha256 {sha256}")
    sha256 = sha256.lower()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    _get(source, partial, retries=retries, backoff=backoff, timeout=timeout, label=label)
    actual = sha256_file(partial)
    if actual != sha256:
        partial.unlink()
        raise ChecksumMismatch(f"{label}: {source} does not match its checksum\n"
                               f"  expected sha256: {sha256}" + (f" (from {checksums})" if checksums else "") +
                               f"\n  actual sha256:   {actual}\n  nothing was kept",
                               fix="check the URL and the sha256 in cluster.yaml")
    if checksums:
        recorded.write_text(sha256 + "\n")
    os.replace(partial, target)
    return target


def published_sha256(checksums: str, name: str, **options) -> str:
    """The sha256 that the checksum file at `checksums` lists for `name`."""
    label = options.get("label", "download")
    with tempfile.TemporaryDirectory(prefix="clusteros-sums-") as work:
        sums = Path(work) / "sums"
        _get(checksums, sums, **options)
        text = sums.read_text(errors="replace")
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == name and re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
            return fields[0].lower()
    raise DownloadError(f"{label}: {checksums} lists no sha256 for {name!r}",
                        fix="check the version, or pin the file's sha256 in cluster.yaml")


def _get(source: str, partial: Path, *, retries: int = RETRIES, backoff: float = BACKOFF,
         timeout: float = TIMEOUT, label: str = "download") -> None:
    """Bring `source` to `partial`: over HTTP(S), resuming what is there, or copied from a local file."""
    scheme = urlparse(source).scheme
    if scheme in ("http", "https"):
        _download(source, partial, retries=retries, backoff=backoff, timeout=timeout, label=label)
        return
    local = Path(unquote(urlparse(source).path) if scheme == "file" else source).expanduser()
    if not local.is_file():
        raise DownloadError(f"{label}: {local} does not exist", fix="check the path in cluster.yaml")
    shutil.copyfile(local, partial)


def _session(retries: int, backoff: float, label: str):
    """A requests session whose retries (backoff, Retry-After, which statuses) are urllib3's, said out loud."""
    import requests   # here, not at the top: a no-op `doit` must not pay for importing it
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class SayingRetry(Retry):
        def sleep(self, response=None):
            attempt = len(self.history)
            last = self.history[-1] if self.history else None
            cause = f"HTTP {response.status}" if response is not None else (
                type(last.error).__name__ if last is not None and last.error else "an error")
            _say(label, f"retry {attempt}/{attempt + (self.total or 0)} after {cause}")
            super().sleep(response)

    retry = SayingRetry(
        total=retries, backoff_factor=backoff, status_forcelist=RETRYABLE_STATUS, allowed_methods={"GET"},
        raise_on_status=False)   # the last answer comes back; raise_for_status names its status
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _download(url: str, partial: Path, *, retries: int, backoff: float, timeout: float, label: str) -> None:
    """Connection failures and server errors are retried by urllib3; a transfer cut short is resumed here."""
    import requests
    host = urlparse(url).netloc
    with _session(retries, backoff, label) as session:
        for _ in range(retries + 1):
            try:
                if _stream(session, url, partial, timeout, label):
                    return
            except requests.HTTPError as exc:
                raise DownloadError(f"{label}: {url} answered HTTP {exc.response.status_code}",
                                    fix="check the URL (and the version) in cluster.yaml") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise DownloadError(
                    f"{label}: giving up on {url} after {retries + 1} attempts "
                    f"(cannot reach {host}: {type(exc).__name__})",
                    fix="offline or air-gapped? Download it elsewhere, check its sha256, and point the spec at "
                        "the local copy instead (a path or a file:// URL)") from None
    raise DownloadError(f"{label}: {url} kept breaking off after {retries + 1} attempts",
                        fix="try again; if it persists, download it elsewhere and point the spec at the local copy")


def _stream(session, url: str, partial: Path, timeout: float, label: str) -> bool:
    """One attempt, resuming `partial`. True when the server's whole body has arrived."""
    import requests
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, stream=True, headers=headers, timeout=timeout) as response:
        if response.status_code == 416 and have:
            return True   # nothing left to send: the partial file is whole (the checksum decides)
        response.raise_for_status()
        resuming = have and response.status_code == 206
        if not resuming:
            have = 0      # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if resuming:
            _say(label, f"resuming at {have / 2**20:.1f} MiB")
        got = have
        shown = time.monotonic()
        try:
            with open(partial, "ab" if resuming else "wb") as f:
                for chunk in response.iter_content(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    if time.monotonic() - shown >= 1.0:
                        _progress(label, got, total)
                        shown = time.monotonic()
        except requests.RequestException as exc:   # the connection broke mid-body: resume
            _say(label, f"transfer broke off: {type(exc).__name__}")
            return False
        _progress(label, got, total)
        return total is None or got >= total


def _progress(label: str, got: int, total: int | None) -> None:
    # One line a second, not a redrawn bar: it reads the same in a terminal, a CI log and a log file.
    if total:
        done = min(BAR_WIDTH, BAR_WIDTH * got // total)
        bar = "#" * done + "." * (BAR_WIDTH - done)
        _say(label, f"[{bar}] {got / 2**20:.1f}/{total / 2**20:.1f} MiB ({100 * got / total:.0f}%)")
    else:
        _say(label, f"{got / 2**20:.1f} MiB")


def _say(label: str, message: str) -> None:
    print(f"[{label}] {message}", file=sys.stderr, flush=True)
