"""Which K3s binary goes into the image, and fetching it verified.

services.k3s names it in one of three ways:
- nothing but `version` (default: the pinned release): the binary from K3s's
  release page (`release_url`, GitHub unless a mirror is named), checked against
  the sha256sum-<arch>.txt published with that release, or against `sha256`
  when the spec pins it;
- `url` + `sha256`: any download;
- `file` + `sha256`: a local binary, for air-gapped builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from clusteros import download

# K3s names its binaries by architecture this way on every release page.
ASSET = {"amd64": "k3s", "arm64": "k3s-arm64", "armhf": "k3s-armhf"}


@dataclass(frozen=True)
class Binary:
    url: str                  # http(s) URL, file:// URL or local path
    sha256: str | None        # pinned; None when the release's checksum file decides
    checksums: str | None     # the release's checksum file, when nothing is pinned

    @property
    def cache_path(self) -> Path:
        return download.cache_path(self.url, self.sha256)

    def fetch(self) -> Path:
        try:
            return download.fetch(self.url, self.sha256, checksums=None if self.sha256 else self.checksums,
                                  label="k3s")
        except download.ChecksumMismatch:
            raise   # its own message says what to check; another source would not help
        except download.DownloadError as exc:
            raise download.DownloadError(
                f"{exc}\n  For K3s: services.k3s.file with its sha256, or services.k3s.release_url for a mirror; "
                "or build without K3s: services.k3s.enabled: false") from None


def binary(spec: dict) -> Binary | None:
    """The K3s binary the spec asks for; None when K3s is disabled."""
    k3s = spec["services"]["k3s"]
    if not k3s["enabled"]:
        return None
    if "url" in k3s or "file" in k3s:
        return Binary(k3s.get("url") or k3s["file"], k3s["sha256"], None)
    arch = spec["image"]["architecture"]
    release = f"{k3s['release_url'].rstrip('/')}/{quote(k3s['version'], safe='')}"
    return Binary(f"{release}/{ASSET[arch]}", k3s.get("sha256"), f"{release}/sha256sum-{arch}.txt")
