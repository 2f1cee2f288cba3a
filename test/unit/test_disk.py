"""The disk layout, assembled for real on a small disk file (no mount, no loop device), and read back."""

import json
import struct
import subprocess

import pytest

from clusteros import disk

MIB = 1024 * 1024


@pytest.fixture
def ids():
    return disk.DiskIds.from_seed("test")


def test_ids_follow_their_seed(ids):
    assert disk.DiskIds.from_seed("test") == ids
    assert disk.DiskIds.from_seed("other").root_fs != ids.root_fs
    assert len(ids.esp_volume) == 8 and ids.esp_volume == ids.esp_volume.upper()


def test_sizes():
    assert disk.parse_size("4G") == 4096 * MIB and disk.parse_size("512M") == 512 * MIB
    root = disk.root_size(disk.parse_size("4G"))
    assert root % MIB == 0, "the root partition ends on a MiB boundary"
    assert disk.ROOT_START + root + disk.GPT_BACKUP <= disk.parse_size("4G"), "room for the backup GPT"


def test_partition_table_has_bios_boot_esp_and_root_where_the_layout_says(tmp_path, ids):
    raw = tmp_path / "disk.raw"
    disk.write_partition_table(raw, ids, 128 * MIB)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["id"].lower() == ids.disk
    parts = table["partitions"]
    assert [p["type"] for p in parts] == [disk.BIOS_BOOT_TYPE, disk.ESP_TYPE, disk.ROOT_X86_64_TYPE]
    assert [p["start"] * 512 for p in parts] == [disk.BIOS_START, disk.ESP_START, disk.ROOT_START]
    assert parts[2]["size"] * 512 == disk.root_size(128 * MIB)
    assert [p["uuid"].lower() for p in parts] == [ids.bios, ids.esp, ids.root_part]


def test_a_whole_disk_boots_by_uuid_under_both_firmwares(tmp_path, ids):
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("clusteros\n")
    raw = tmp_path / "disk.raw"
    disk.assemble(raw, tree, tmp_path, ids, 128 * MIB, epoch=1735689600)

    # The root file system is ext4, has the tree, and carries the UUID GRUB and fstab look for.
    probe = subprocess.run(["blkid", "--probe", "--offset", str(disk.ROOT_START), "-o", "export", str(raw)],
                           capture_output=True, text=True, check=True).stdout
    assert "TYPE=ext4" in probe and f"UUID={ids.root_fs}" in probe
    listing = subprocess.run(["debugfs", "-R", "cat /etc/hostname", f"{raw}?offset={disk.ROOT_START}"],
                             capture_output=True, text=True).stdout
    assert listing == "clusteros\n"
    # UEFI: the ESP holds GRUB where firmware looks without any boot entry.
    esp = subprocess.run(["mdir", "-i", f"{raw}@@{disk.ESP_START}", "::/EFI/BOOT"], capture_output=True, text=True)
    assert "BOOTX64  EFI" in esp.stdout, esp.stdout + esp.stderr
    # BIOS: the MBR code points at core.img, whose first sector lists the rest of it.
    with open(raw, "rb") as f:
        mbr = f.read(512)
        f.seek(disk.BIOS_START)
        core_first = f.read(512)
    assert mbr[510:] == b"\x55\xaa"
    assert struct.unpack_from("<Q", mbr, disk.KERNEL_SECTOR_OFFSET)[0] == disk.BIOS_START // 512
    start, length, _ = struct.unpack_from("<QHH", core_first, disk.BLOCKLIST_OFFSET)
    assert start == disk.BIOS_START // 512 + 1 and length > 0


def test_grub_and_fstab_name_the_root_by_uuid(ids):
    menu = disk.grub_config(ids, "console=ttyS0")
    assert f"root=UUID={ids.root_fs}" in menu and f"--set=root {ids.root_fs}" in menu
    fstab = disk.fstab(ids)
    assert f"UUID={ids.root_fs}  /  ext4" in fstab
    assert f"UUID={ids.esp_volume[:4]}-{ids.esp_volume[4:]}  /boot/efi  vfat" in fstab
