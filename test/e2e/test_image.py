"""The default image, built for real and booted under SeaBIOS and OVMF."""

import gzip
import hashlib
import json
import subprocess
import time

import pytest

from clusteros import accel
from clusteros.vm import cluster
from clusteros.vm.machine import Machine

from .conftest import DIST, ROOT, doit

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


def _node(index: int, name: str) -> cluster.VMNode:
    return cluster.VMNode(index=index, name=name, lan_mac=f"52:54:00:ee:ee:{index:02x}",
                          uplink_mac=f"52:54:01:ee:ee:{index:02x}", lan_address="10.42.0.250",
                          ssh_port=2290 + index, vnc_port=5990 + index, cpus=1, memory=1024)


@pytest.fixture(scope="module")
def booted(image, spec, tmp_path_factory):
    """The image booted twice, side by side: SeaBIOS on a 4G disk, OVMF on a disk enlarged to 6G."""
    acc = accel.choose("auto")
    work = tmp_path_factory.mktemp("boot")
    lan = cluster.Switch(work / "lan")
    lan.ensure_running()
    machines = {}
    for index, (firmware, size) in enumerate((("bios", None), ("uefi", "6G")), start=1):
        node = _node(index, f"boot-{firmware}")
        m = Machine(node.name, work / node.name)
        m.directory.mkdir()
        overlay = m.directory / "disk.qcow2"
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image), str(overlay)]
        subprocess.run(argv + ([size] if size else []), check=True)
        m.launch(cluster.qemu_argv(node, m, overlay, acc, firmware, lan.sock))
        machines[firmware] = (node, m)
    try:
        deadline = time.monotonic() + acc.scale(150)
        for firmware, (node, m) in machines.items():
            while cluster.ssh_run(spec, node, ["true"], timeout=30).returncode != 0:
                assert m.is_alive(), f"{firmware} VM died:\n" + "\n".join(m.serial_tail())
                assert time.monotonic() < deadline, f"{firmware}: no SSH:\n" + "\n".join(m.serial_tail())
                time.sleep(3)
        yield {firmware: node for firmware, (node, m) in machines.items()}, spec
    finally:
        for node, m in machines.values():
            m.stop(timeout=acc.scale(30))
        lan.stop()


def sh(booted, firmware, command: str) -> str:
    nodes, spec = booted
    out = cluster.ssh_run(spec, nodes[firmware], ["sh", "-c", command], timeout=60)
    assert out.returncode == 0, f"{command!r} on {firmware}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout.strip()


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_with_systemd_as_pid_1(booted, firmware):
    assert sh(booted, firmware, "ps -p 1 -o comm=") == "systemd"
    expected = "efi" if firmware == "uefi" else "bios"
    assert sh(booted, firmware, "test -d /sys/firmware/efi && echo efi || echo bios") == expected


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_kernel_log_is_readable(booted, firmware):
    assert sh(booted, firmware, "sudo dd if=/dev/kmsg bs=8192 count=1 status=none | wc -c") != "0"


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_cluster_tools_and_units_are_installed(booted, firmware):
    sh(booted, firmware, "command -v wg && test -x /usr/sbin/slurmd && test -x /usr/sbin/slurmctld "
                         "&& command -v munge && test -x /usr/local/lib/clusteros/node-agent.pyz")
    assert sh(booted, firmware, "systemctl is-enabled node-agent.service") == "enabled"


def test_ssh_is_keys_only_without_root(booted):
    config = sh(booted, "bios", "sudo sshd -T")
    assert "passwordauthentication no" in config and "permitrootlogin no" in config


def test_each_boot_makes_its_own_machine_id_and_host_key(booted):
    ids = {sh(booted, fw, "cat /etc/machine-id") for fw in ("bios", "uefi")}
    keys = {sh(booted, fw, "cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2") for fw in ("bios", "uefi")}
    assert len(ids) == 2 and len(keys) == 2


def test_root_file_system_fills_an_enlarged_disk(booted):
    # growroot runs once at boot; wait for it rather than race it.
    sh(booted, "uefi", "systemctl is-active --wait clusteros-growroot.service || "
                       "timeout 120 sh -c 'until systemctl is-active -q clusteros-growroot; do sleep 2; done'")
    size_6g = int(sh(booted, "uefi", "df --output=size -B1 / | tail -1"))
    size_4g = int(sh(booted, "bios", "df --output=size -B1 / | tail -1"))
    assert size_6g > 5.5 * 1024**3, size_6g
    assert size_4g < 4.1 * 1024**3


def test_one_overlay_file_rebuilds_the_image_but_not_the_rootfs(image):
    motd = ROOT / "images" / "common" / "overlay" / "etc" / "motd"
    try:
        motd.write_text("ClusterOS node (rebuild test)\n")
        started = time.monotonic()
        out = doit("image")
        seconds = time.monotonic() - started
        assert "-- rootfs" in out.stdout, "the root file system must come from the cache"
        assert ".  image" in out.stdout
        print(f"one overlay file: image rebuilt in {seconds:.0f}s without the rootfs")
    finally:
        motd.unlink()
