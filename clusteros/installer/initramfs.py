"""The installer's kernel and initramfs: the image's own kernel, its storage and network drivers,
static busybox, zstd, coreutils' sha256sum and xxhsum (with the C libraries they load) and /init."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from clusteros import runner
from clusteros.installer import InstallerError, installer_files
from clusteros.installer.payload import Payload, render_map
from clusteros.installer.settings import render_config

BUSYBOX = Path("/bin/busybox")      # busybox-static: one static binary, runs in any initramfs
# The image's data is zstd (clusteros.installer.payload): inflated in 0.6 s of CPU on one core here,
# against 1.8 for pigz and 5.0 for busybox's gunzip with gzip's; minutes of installs under emulation.
INFLATER = "zstd"
# sha256sum (the image's data, before anything is written) is coreutils', not busybox's applet:
# under emulation busybox's takes 3.6 s on 200 MB against 2.8. xxhsum reads the disk back
# (clusteros.installer.payload says why XXH64).
HASHERS = ("sha256sum", "xxhsum")
# The Debian package of each program the initramfs copies from this machine.
PACKAGE_OF = {"zstd": "zstd", "sha256sum": "coreutils", "xxhsum": "xxhash"}

# Drivers for the disks an installer writes to, the media it boots from, and the
# NICs PXE uses; each module's dependencies come along from modules.dep.
MODULE_PREFIXES = (
    "kernel/drivers/ata/", "kernel/drivers/scsi/", "kernel/drivers/nvme/", "kernel/drivers/block/",
    "kernel/drivers/cdrom/", "kernel/drivers/usb/storage/", "kernel/drivers/usb/host/", "kernel/drivers/mmc/",
    "kernel/drivers/virtio/", "kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/ethernet/intel/",
    "kernel/drivers/net/ethernet/realtek/", "kernel/drivers/net/ethernet/broadcom/", "kernel/fs/isofs/",
    "kernel/fs/ext4/", "kernel/crypto/crc32c_generic.ko",      # running from RAM mounts the image's root
)
# Fibre Channel and iSCSI adapters: large, and a disk behind a SAN is not a node's own disk. The
# servers' RAID and SAS controllers (megaraid_sas: Dell PERC; mpt3sas: LSI/Broadcom HBAs;
# smartpqi: HPE Smart Array) stay: the disk a used rack server installs onto is behind one.
MODULE_EXCLUDES = ("kernel/drivers/scsi/lpfc/", "kernel/drivers/scsi/qla2xxx/", "kernel/drivers/scsi/be2iscsi/",
                   "kernel/drivers/scsi/bfa/", "kernel/drivers/scsi/qedf/", "kernel/drivers/scsi/qedi/",
                   "kernel/drivers/scsi/fcoe/", "kernel/drivers/scsi/libfc/", "kernel/drivers/scsi/cxgbi/")


def _versions(names: list[str]) -> list[str]:
    return sorted({n.split("/")[3] for n in names if n.startswith("usr/lib/modules/") and n.count("/") >= 4})


def module_closure(modules_dep: str, prefixes=MODULE_PREFIXES, excludes=MODULE_EXCLUDES) -> set[str]:
    """Modules under `prefixes` (minus `excludes`), plus everything they depend on."""
    depends: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        module, _, deps = line.partition(":")
        depends[module] = deps.split()
    wanted = [m for m in depends if m.startswith(prefixes) and not m.startswith(excludes)]
    closure: set[str] = set()
    while wanted:
        module = wanted.pop()
        if module not in closure:
            closure.add(module)
            wanted += depends.get(module, [])
    return closure


def extract_kernel(rootfs_tar: Path, staging: Path) -> tuple[Path, str]:
    """The image's kernel to staging/vmlinuz and the installer's modules under staging/initramfs."""
    with tarfile.open(rootfs_tar) as tar:
        members = {m.name.removeprefix("./"): m for m in tar}
        versions = _versions(list(members))
        kernels = [v for v in versions if f"boot/vmlinuz-{v}" in members]
        if not kernels:
            raise InstallerError(f"{rootfs_tar.name} has no kernel (boot/vmlinuz-*)",
                                 fix="keep linux-image-amd64 (or -generic) in the image's package list")
        version = kernels[-1]
        base = f"usr/lib/modules/{version}/"
        kernel = staging / "vmlinuz"
        kernel.write_bytes(tar.extractfile(members[f"boot/vmlinuz-{version}"]).read())
        modules = module_closure(tar.extractfile(members[base + "modules.dep"]).read().decode())
        target = staging / "initramfs" / "lib" / "modules" / version
        for name in sorted(modules | {"modules.order", "modules.builtin", "modules.builtin.modinfo"}):
            member = members.get(base + name)
            if member is None or not member.isfile():
                continue
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    # busybox depmod writes the modules.dep and modules.alias that busybox modprobe reads at boot.
    runner.run("initramfs", [BUSYBOX, "depmod", "-b", staging / "initramfs", version])
    return kernel, version


def add_busybox(tree: Path) -> None:
    """A static busybox as /bin/busybox and /bin/sh (the init installs the other applets)."""
    if not BUSYBOX.exists():
        raise InstallerError(f"{BUSYBOX} not found: the initramfs needs a static busybox",
                             fix="apt-get install busybox-static (or run scripts/install-prereqs.sh)")
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    (tree / "bin" / "sh").symlink_to("busybox")


def shared_libraries(program: str, ldd_output: str) -> list[Path]:
    """The files `program` loads, from `ldd`'s report on it: each library's path and the
    program interpreter (the kernel's vDSO is no file)."""
    found = []
    for line in ldd_output.splitlines():
        if match := re.match(r"\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", line):
            found.append(Path(match.group(1)))
        elif "=>" in line and "not found" in line:
            raise InstallerError(f"{program} cannot run here: {line.strip()}",
                                 fix="reinstall it (scripts/install-prereqs.sh)")
    return found


def add_executable(tree: Path, name: str) -> None:
    """This machine's `name` as /bin/`name`, and the libraries it loads at the paths it loads them
    from (what mkinitramfs's copy_exec does): the initramfs has no other C library."""
    program = shutil.which(name)
    if program is None:
        raise InstallerError(f"{name} not found: the installer's initramfs carries it",
                             fix=f"apt-get install {PACKAGE_OF.get(name, name)} (or run scripts/install-prereqs.sh)")
    # ldd fails on a static executable ("not a dynamic executable"): then there is nothing to add.
    report = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(program).resolve(), tree / "bin" / name)
    for library in shared_libraries(program, report):
        inside = tree / library.relative_to("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library.resolve(), inside)   # a file where the loader looks, not a symlink to the host's


def pack(tree: Path, out: Path, step: str = "initramfs") -> None:
    """`tree` as a zstd-compressed newc cpio at `out`: owned by root, times zeroed, the same bytes
    every time."""
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)
    listing = tree.parent / f"{tree.name}.list"
    listing.write_text("".join(f"{p.relative_to(tree)}\n" for p in sorted(tree.rglob("*"))))
    archive = out.with_suffix(".cpio")
    runner.run(step, ["cpio", "--create", "--format=newc", "--reproducible", "--quiet", "--owner=0:0"],
               cwd=tree, stdin=listing, stdout=archive, log=runner.log_path(step))
    # zstd -9, not gzip -6 (what it was): on the installer's 51 MB cpio, 12.3 MB instead of 15.0, made
    # in 0.8 s instead of 1.7, and unpacked by the kernel in a fifth of the time at every boot.
    runner.run(step, ["zstd", "-9", "--quiet", "--force", "--no-progress", "-o", out, archive],
               log=runner.log_path(step), append=True)
    archive.unlink()
    listing.unlink()


def build_initramfs(tree: Path, config: dict[str, str], extent_map: str, out: Path) -> None:
    """Busybox, zstd, the hashers, /init, its config and the image's extent map in `tree` (modules
    already there) -> a zstd-compressed newc cpio at `out`."""
    add_busybox(tree)
    for program in (INFLATER, *HASHERS):
        add_executable(tree, program)
    (tree / "etc").mkdir(exist_ok=True)
    shutil.copy2(installer_files() / "init", tree / "init")
    shutil.copy2(installer_files() / "udhcpc.script", tree / "etc" / "udhcpc.script")
    (tree / "etc" / "installer.conf").write_text(render_config(config))
    (tree / "etc" / "image.map").write_text(extent_map)
    pack(tree, out)


def prepare_boot_files(work: Path, rootfs_tar: Path, config: dict[str, str], payload: Payload) -> tuple[Path, Path]:
    """The image's kernel and the installer initramfs, in `work`."""
    runner.say("installer", f"kernel and drivers from {rootfs_tar.name}")
    kernel, version = extract_kernel(rootfs_tar, work)
    initrd = work / "initrd.img"
    build_initramfs(work / "initramfs", config, render_map(payload.extents), initrd)
    runner.say("installer", f"initramfs: kernel {version}, {initrd.stat().st_size / 2**20:.1f} MiB")
    return kernel, initrd
