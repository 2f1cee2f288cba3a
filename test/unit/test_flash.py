"""The flasher: its refusals as a pure function, and real writes to loop devices (root, losetup)."""

import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from clusteros import flash
from clusteros.cli import main as clusteros
from clusteros.errors import UsageError
from clusteros.installer import owner_part

MIB = 2**20


def disk(**overrides) -> flash.Disk:
    fields = dict(path="/dev/sdb", kind="disk", size=16 * 2**30, model="SanDisk Ultra", serial="4C53", removable=True,
                  mounts=(), parent=None)
    return flash.Disk(**fields | overrides)


@pytest.mark.parametrize("overrides, system, force, reason", [
    ({"kind": "part", "path": "/dev/sdb1", "parent": "sdb"}, set(), False, "is a partition of /dev/sdb"),
    ({}, {"/dev/sdb"}, True, "holds the running system"),
    ({"mounts": ("/media/stick",)}, set(), False, "mounted at /media/stick"),
    ({"size": 100 * MIB}, set(), True, "holds 100 MiB; the image needs 700 MiB"),
    ({"removable": False}, set(), False, "is not a removable disk (use --force"),
])
def test_what_is_plainly_not_a_stick_is_refused(overrides, system, force, reason):
    assert reason in flash.refusal(disk(**overrides), 700 * MIB, system, force)


def test_a_removable_disk_or_a_forced_one_may_be_written():
    assert flash.refusal(disk(), 700 * MIB, {"/dev/sda"}, force=False) is None
    assert flash.refusal(disk(removable=False), 700 * MIB, set(), force=True) is None


def test_lsblk_rows_name_every_mount_below_the_disk():
    row = {"path": "/dev/sdc", "type": "disk", "size": 8 * 2**30, "model": "Flash Disk ", "serial": None, "rm": False,
           "hotplug": True, "tran": "usb", "mountpoint": None, "pkname": None,
           "children": [{"path": "/dev/sdc1", "type": "part", "mountpoint": "/media/a"},
                        {"path": "/dev/sdc2", "type": "part", "mountpoint": None}]}
    found = flash.from_lsblk(row)
    assert found.removable and found.mounts == ("/media/a",) and found.model == "Flash Disk"
    assert "8.6 GB" in found.describe()


# -- real writes, to loop devices ------------------------------------------------

pytestmark_loop = pytest.mark.needs("losetup", "lsblk", "mkfs.ext4")


@pytest.fixture
def image(tmp_path) -> tuple[Path, Path, bytes]:
    data = os.urandom(3 * MIB) + b"\0" * MIB + os.urandom(12345)
    gz = tmp_path / "lab-usb.img.gz"
    gz.write_bytes(gzip.compress(data, compresslevel=1))
    sha = tmp_path / "lab-usb.img.sha256"
    sha.write_text(f"{hashlib.sha256(data).hexdigest()}  lab-usb.img  {len(data)}\n")
    return gz, sha, data


@pytest.fixture
def loop(tmp_path):
    made = []

    def attach(size_mib: int) -> str:
        backing = tmp_path / f"stick{len(made)}.img"
        with open(backing, "wb") as f:
            f.truncate(size_mib * MIB)
        device = subprocess.run(["losetup", "--find", "--show", str(backing)],
                                capture_output=True, text=True, check=True).stdout.strip()
        made.append(device)
        return device
    yield attach
    for device in made:
        subprocess.run(["umount", "--quiet", device], capture_output=True)
        subprocess.run(["losetup", "--detach", device], capture_output=True)


def backing_of(device: str) -> Path:
    return Path(Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip())


@pytestmark_loop
def test_a_stick_is_written_read_back_and_holds_the_credential_after_the_image(image, loop, capsys):
    gz, sha, data = image
    device = loop(16)
    part = owner_part.block(b'{"credential": 1}', "ssh-ed25519 AAAA test\n")
    credential = gz.with_name("lab-usb-credential.bin")
    credential.write_bytes(part)
    flash.flash(device, gz, sha, credential=credential, yes=True, force=True)   # a loop device is not removable
    written = backing_of(device).read_bytes()
    assert written[:len(data)] == data
    offset = owner_part.offset_after(len(data))
    assert written[offset:offset + len(part)] == part
    assert "written and read back" in capsys.readouterr().err


@pytestmark_loop
def test_a_loop_disk_without_force_or_too_small_is_refused_and_left_alone(image, loop):
    gz, sha, _ = image
    small, fixed = loop(2), loop(16)
    for device, why in ((fixed, "is not a removable disk"), (small, "the image needs")):
        with pytest.raises(UsageError, match=why):
            flash.flash(device, gz, sha, yes=True, force=why != "is not a removable disk")
    assert backing_of(small).read_bytes() == b"\0" * 2 * MIB, "nothing written"


@pytestmark_loop
def test_a_mounted_stick_is_refused(image, loop, tmp_path):
    gz, sha, _ = image
    device = loop(16)
    subprocess.run(["mkfs.ext4", "-q", device], check=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", device, str(mountpoint)], check=True)
    with pytest.raises(UsageError, match=f"mounted at {mountpoint}"):
        flash.flash(device, gz, sha, yes=True, force=True)


@pytestmark_loop
def test_without_a_terminal_or_yes_nothing_is_erased(image, loop, monkeypatch):
    gz, sha, _ = image
    device = loop(16)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(UsageError, match="without a yes"):
        flash.flash(device, gz, sha, force=True)
    assert backing_of(device).read_bytes() == b"\0" * 16 * MIB


def test_the_cli_names_a_path_that_is_no_device_and_exits_2(image, tmp_path, capsys, monkeypatch):
    gz, sha, _ = image
    assert clusteros(["flash", str(sha), "--image", str(gz), "--yes"]) == 2
    assert "is not a block device" in capsys.readouterr().err


@pytestmark_loop
def test_the_disk_of_the_running_system_is_refused_even_forced(image):
    gz, sha, _ = image
    system = flash.system_disks()
    assert system, "findmnt names the disk under /"
    with pytest.raises(UsageError, match="holds the running system|mounted at /"):
        flash.flash(sorted(system)[0], gz, sha, yes=True, force=True)
