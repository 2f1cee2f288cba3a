"""The default image, built for real: its outputs, and one-layer rebuilds.

It is booted by test_cluster (the qcow2, as test_vm runs it); test_installers
builds the same image in a dist of its own and boots the raw disk each installer
writes (under OVMF to SSH, where the smoke checks of a booted node live; under SeaBIOS
until sshd listens, and the PXE one as far as its root file system).

In the cluster's test worker, after the cluster is gone (test/conftest.py): the rebuild edits a
source file, and so changes the image dist/e2e's next doit makes.
"""

import gzip
import hashlib
import json
import subprocess
import time

import pytest

from clusteros import disk

from .conftest import DIST, ROOT, doit, editing_sources

pytestmark = pytest.mark.e2e


def test_outputs_exist_with_their_checksums(image):
    manifest = json.loads((DIST / "democluster.manifest.json").read_text())
    raw = DIST / "democluster.raw"
    gz = DIST / "democluster.raw.gz"
    assert manifest["outputs"]["qcow2"]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert raw.stat().st_size == 4 * 1024**3
    assert raw.stat().st_blocks * 512 < raw.stat().st_size / 2, "the raw image must be sparse"
    assert gz.stat().st_size < 400 * 1000**2, "goal: under 400 MB compressed"
    digest, name = (DIST / "democluster.raw.gz.sha256").read_text().split()
    assert name == gz.name and digest == hashlib.sha256(gz.read_bytes()).hexdigest()
    with gzip.open(gz) as f:
        head = f.read(512)
    assert head[510:512] == b"\x55\xaa", "the raw disk starts with a boot sector"
    for package in ("systemd", "openssh-server", "wireguard-tools", "slurmd", "slurmctld", "munge", "python3",
                    "chrony", "linux-image-amd64"):
        assert package in manifest["packages"], package


def test_one_overlay_file_rebuilds_the_image_but_not_the_rootfs(image):
    # An existing file changed and put back, not a new one made and removed: a test beside this one
    # that copies images/ (test_graph's projects) never meets a file that vanishes under it.
    overlay_file = ROOT / "images" / "common" / "overlay" / "etc" / "chrony" / "conf.d" / "clusteros.conf"
    original = overlay_file.read_bytes()
    with editing_sources():
        try:
            overlay_file.write_bytes(original + b"# changed by the rebuild test\n")
            started = time.monotonic()
            out = doit("image")
            seconds = time.monotonic() - started
            assert "-- rootfs" in out.stdout, "the root file system must come from the cache"
            assert ".  image" in out.stdout
            print(f"one overlay file: image rebuilt in {seconds:.0f}s without the rootfs")
        finally:
            overlay_file.write_bytes(original)


def test_the_image_holds_no_munge_key_and_starts_no_munge(image):
    """munge's postinst makes a key when the package is installed: every machine made from the image,
    and everyone holding it, would share that secret. The agent writes the key derived from the
    credential and starts munge; a machine without a credential has neither."""
    raw = DIST / "democluster.raw"

    def listing(folder: str) -> str:
        return subprocess.run(["debugfs", "-R", f"ls -l {folder}", f"{raw}?offset={disk.ROOT_START}"],
                              capture_output=True, text=True, check=True).stdout

    assert "munged" in listing("/usr/sbin"), "debugfs reads the image's root file system"
    assert "munge.key" not in listing("/etc/munge")
    assert "munge.service" not in listing("/etc/systemd/system/multi-user.target.wants")
    assert "node-agent.service" in listing("/etc/systemd/system/multi-user.target.wants")
