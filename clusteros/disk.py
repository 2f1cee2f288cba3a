"""Assemble a bootable GPT disk from a root tree, without mounts or loop devices.

Layout (512-byte sectors):
  1  BIOS boot partition, 1 MiB: GRUB's core.img for SeaBIOS / legacy BIOS
  2  EFI system partition, 64 MiB FAT32: GRUB as \\EFI\\BOOT\\BOOTX64.EFI
  3  root, ext4, the rest: grows to fill a larger disk on first boot

GRUB is built on the host (grub-mkimage) with an embedded config that finds the
root file system by UUID, so both firmware paths read the same /boot/grub/grub.cfg.
The BIOS path is what grub-bios-setup does, done on a file: boot.img into the
MBR pointing at core.img, core.img's first sector given the blocklist of the rest.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from clusteros import runner
from clusteros.errors import ClusterOSError

SECTOR = 512
MIB = 1024 * 1024

BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

BIOS_START, BIOS_SIZE = 1 * MIB, 1 * MIB
ESP_START, ESP_SIZE = 2 * MIB, 64 * MIB
ROOT_START = ESP_START + ESP_SIZE
GPT_BACKUP = 33 * SECTOR

GRUB_PC_DIR = Path("/usr/lib/grub/i386-pc")
GRUB_EFI_DIR = Path("/usr/lib/grub/x86_64-efi")
# Every module both cores need is built in, so no /boot/grub/<platform>/ tree is needed.
GRUB_MODULES_COMMON = ["part_gpt", "part_msdos", "ext2", "fat", "search", "search_fs_uuid", "configfile",
                       "normal", "linux", "echo", "test", "gzio", "xzio", "serial", "terminal", "sleep",
                       "reboot", "halt", "loadenv"]
GRUB_MODULES_PC = ["biosdisk", "vga_text"]
GRUB_MODULES_EFI = ["efi_gop", "efi_uga", "all_video"]

# Offsets inside GRUB's i386-pc boot.img and core.img (grub/include/grub/i386/pc/boot.h).
KERNEL_SECTOR_OFFSET = 0x5C
DRIVE_CHECK_OFFSET = 0x66
MBR_CODE_END = 0x1B8          # disk signature and partition table follow: keep them
BLOCKLIST_OFFSET = SECTOR - 12


@dataclass(frozen=True)
class DiskIds:
    """Stable identifiers, derived from a seed so the same inputs give the same disk."""
    disk: str
    bios: str
    esp: str
    root_part: str
    root_fs: str
    esp_volume: str

    @classmethod
    def from_seed(cls, seed: str) -> "DiskIds":
        def make(label: str) -> str:
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"clusteros:{seed}:{label}"))
        return cls(disk=make("disk"), bios=make("bios"), esp=make("esp"), root_part=make("root-part"),
                   root_fs=make("root-fs"), esp_volume=make("esp-vol").replace("-", "")[:8].upper())


def parse_size(text: str) -> int:
    """'4G' -> bytes. The schema has already checked the form."""
    number, unit = int(text[:-1]), text[-1]
    return number * (1024 if unit == "G" else 1) * MIB


def root_size(disk_bytes: int) -> int:
    usable = disk_bytes - ROOT_START - GPT_BACKUP
    return usable // MIB * MIB


def sfdisk_script(ids: DiskIds, disk_bytes: int) -> str:
    s = SECTOR
    return "\n".join([
        "label: gpt",
        f"label-id: {ids.disk}",
        "unit: sectors",
        "first-lba: 2048",
        f"start={BIOS_START // s}, size={BIOS_SIZE // s}, type={BIOS_BOOT_TYPE}, uuid={ids.bios}, name=\"bios\"",
        f"start={ESP_START // s}, size={ESP_SIZE // s}, type={ESP_TYPE}, uuid={ids.esp}, name=\"esp\"",
        f"start={ROOT_START // s}, size={root_size(disk_bytes) // s}, type={ROOT_X86_64_TYPE}, "
        f"uuid={ids.root_part}, name=\"root\"",
        "",
    ])


def grub_early_config(ids: DiskIds) -> str:
    return (f"search --no-floppy --fs-uuid --set=root {ids.root_fs}\n"
            "set prefix=($root)/boot/grub\n")


def grub_config(ids: DiskIds, cmdline: str) -> str:
    """The menu both firmware paths load. /vmlinuz follows kernel upgrades on the node."""
    return f"""# Written by ClusterOS. The kernel and initrd links follow apt's kernel upgrades.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
search --no-floppy --fs-uuid --set=root {ids.root_fs}
menuentry "ClusterOS" {{
    linux /vmlinuz root=UUID={ids.root_fs} ro {cmdline}
    initrd /initrd.img
}}
"""


def fstab(ids: DiskIds) -> str:
    esp_uuid = f"{ids.esp_volume[:4]}-{ids.esp_volume[4:]}"
    return ("# <file system>  <mount point>  <type>  <options>  <dump>  <pass>\n"
            f"UUID={ids.root_fs}  /  ext4  defaults,noatime,errors=remount-ro  0  1\n"
            # The ESP is mounted when something opens it (a kernel or boot loader update), not at
            # every boot: its fsck and mount cost an emulated node seconds it is waiting for SSH.
            f"UUID={esp_uuid}  /boot/efi  vfat  umask=0077,nofail,noauto,x-systemd.automount  0  2\n")


def assemble(disk: Path, tree: Path, work: Path, ids: DiskIds, disk_bytes: int, epoch: int) -> None:
    """The whole disk in one file: partition table, root file system from `tree`, ESP, BIOS boot code."""
    write_partition_table(disk, ids, disk_bytes)
    make_root_filesystem(disk, tree, ids, disk_bytes, epoch)
    core, efi = build_grub_images(work, ids)
    make_esp(disk, work, ids, efi)
    install_bios_boot(disk, core)


def write_partition_table(disk: Path, ids: DiskIds, disk_bytes: int) -> None:
    with open(disk, "wb") as f:
        f.truncate(disk_bytes)
    runner.run("image", ["sfdisk", "--no-reread", "--no-tell-kernel", disk],
               stdin=sfdisk_script(ids, disk_bytes).encode(), log=runner.log_path("image-disk"))


def make_root_filesystem(disk: Path, tree: Path, ids: DiskIds, disk_bytes: int, epoch: int) -> None:
    """mkfs.ext4 straight into partition 3 of the disk file, filled from `tree`."""
    size_k = root_size(disk_bytes) // 1024
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "E2FSPROGS_FAKE_TIME": str(epoch)}
    runner.run("image", ["mkfs.ext4", "-q", "-F", "-L", "root", "-U", ids.root_fs,
                         "-E", f"offset={ROOT_START},hash_seed={ids.root_fs},root_owner=0:0",
                         "-d", tree, disk, f"{size_k}k"],
               env=env, log=runner.log_path("image-mkfs"))


def make_esp(disk: Path, work: Path, ids: DiskIds, efi_binary: Path) -> None:
    esp = work / "esp.img"
    runner.run("image", ["mkfs.vfat", "-F", "32", "-n", "ESP", "-i", ids.esp_volume, "-C", esp,
                         str(ESP_SIZE // 1024)], log=runner.log_path("image-esp"))
    runner.run("image", ["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], log=runner.log_path("image-esp"), append=True)
    runner.run("image", ["mcopy", "-m", "-i", esp, efi_binary, "::/EFI/BOOT/BOOTX64.EFI"],
               log=runner.log_path("image-esp"), append=True)
    _write_at(disk, ESP_START, esp.read_bytes())
    esp.unlink()


def build_grub_images(work: Path, ids: DiskIds) -> tuple[Path, Path]:
    """grub-mkimage for i386-pc (core.img) and x86_64-efi (BOOTX64.EFI)."""
    early = work / "grub-early.cfg"
    early.write_text(grub_early_config(ids))
    core, efi = work / "core.img", work / "BOOTX64.EFI"
    runner.run("image", ["grub-mkimage", "-O", "i386-pc", "-d", GRUB_PC_DIR, "-o", core, "-c", early,
                         "-p", "/boot/grub", *GRUB_MODULES_COMMON, *GRUB_MODULES_PC],
               log=runner.log_path("image-grub"))
    runner.run("image", ["grub-mkimage", "-O", "x86_64-efi", "-d", GRUB_EFI_DIR, "-o", efi, "-c", early,
                         "-p", "/boot/grub", *GRUB_MODULES_COMMON, *GRUB_MODULES_EFI],
               log=runner.log_path("image-grub"), append=True)
    if core.stat().st_size > BIOS_SIZE:
        raise ClusterOSError(f"GRUB core.img is {core.stat().st_size} bytes; the BIOS boot partition holds {BIOS_SIZE}",
                             fix="this GRUB build is larger than any seen before: report it with `grub-mkimage --version`")
    return core, efi


def install_bios_boot(disk: Path, core_img: Path, boot_img: Path = GRUB_PC_DIR / "boot.img") -> None:
    """Do grub-bios-setup's work on a disk file: MBR code -> core.img in the BIOS boot partition."""
    core = bytearray(core_img.read_bytes())
    sectors = -(-len(core) // SECTOR)
    core += b"\0" * (sectors * SECTOR - len(core))
    first = BIOS_START // SECTOR
    # diskboot (core's first sector) loads the rest of core from this blocklist.
    start, length, segment = struct.unpack_from("<QHH", core, BLOCKLIST_OFFSET)
    struct.pack_into("<QHH", core, BLOCKLIST_OFFSET, first + 1, sectors - 1, segment)
    _write_at(disk, BIOS_START, bytes(core))

    boot = bytearray(boot_img.read_bytes()[:MBR_CODE_END])
    struct.pack_into("<Q", boot, KERNEL_SECTOR_OFFSET, first)
    # Trust the BIOS's boot drive number only for floppies; a disk boots as 0x80 and up.
    boot[DRIVE_CHECK_OFFSET:DRIVE_CHECK_OFFSET + 2] = b"\x90\x90"
    _write_at(disk, 0, bytes(boot))


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
