"""The test VMs' own way in: the image's kernel and a small initramfs for a virtio disk.

The image boots on hardware through firmware, GRUB and the distribution's
initrd, which carries every driver a PC may need (36 MB, seconds to unpack and
probe under emulation). A test VM has one virtio disk: QEMU loads the image's
kernel itself (-kernel), with an initramfs of static busybox, the five modules
that reach an ext4 root on virtio (in dependency order) and images/vm-boot/init.
Both are made from the image's own tree, in the image stage, so they always
match the disk. The firmware and GRUB paths stay proven by the image's
installer tests (and by `vm.boot: firmware`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from clusteros import paths, runner
from clusteros.atomic import atomic_path
from clusteros.installer.initramfs import add_busybox, pack

# The modules between the kernel and an ext4 root on a virtio disk (ext4 wants crc32c through a
# "soft" dependency that modules.dep does not list, so it is named here), and the NIC driver: with
# the NICs there when systemd starts, the node's identity is settled without waiting for udev.
VM_MODULES = ["kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko",
              "kernel/crypto/crc32c_generic.ko", "kernel/fs/ext4/ext4.ko", "kernel/drivers/net/virtio_net.ko"]
# Said on the kernel command line of every test VM: less to print, to probe and to check under
# emulation, none of it changing what the node does. cfg80211 (which networkd's start loads, for
# nothing on a node without WiFi) stays allowed where the spec has WiFi.
VM_CMDLINE = ("console=ttyS0,115200n8 quiet tsc=reliable no_timer_check mitigations=off init_on_alloc=0 "
              "cryptomgr.notests 8250.nr_uarts=1")
VM_BLACKLIST = ["kvm", "kvm_amd", "kvm_intel", "pcspkr", "iTCO_wdt"]


def init_script() -> Path:
    return paths.IMAGES_DIR / "vm-boot" / "init"


def recipe_key() -> str:
    """What the initramfs is made of besides the image's kernel: its /init and its module list."""
    import hashlib
    return hashlib.sha256(init_script().read_bytes() + " ".join(VM_MODULES).encode()).hexdigest()[:16]


def kernel_version(tree: Path) -> str:
    versions = sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))
    if not versions:
        raise LookupError(f"{tree}/boot holds no kernel")   # the rootfs stage installs one: a bug if not
    return versions[-1]


def plain(module: str) -> str:
    """A module's path as stored uncompressed: kernel/fs/ext4/ext4.ko.zst -> kernel/fs/ext4/ext4.ko."""
    return module.removesuffix(".zst")


def load_order(modules_dep: str, wanted: list[str]) -> list[str]:
    """`wanted` and everything they depend on, each after its dependencies, each once.

    Names are compared uncompressed; the paths returned are modules.dep's own (perhaps .ko.zst)."""
    stored: dict[str, str] = {}
    depends: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        module, _, deps = line.partition(":")
        stored[plain(module)] = module
        depends[plain(module)] = [plain(d) for d in deps.split()]
    order: list[str] = []

    def visit(module: str) -> None:
        if stored.get(module, module) in order:
            return
        for dependency in depends.get(module, []):
            visit(dependency)
        order.append(stored.get(module, module))
    for module in wanted:
        visit(module)
    return order


def copy_module(source: Path, target: Path) -> None:
    """`source` to `target` uncompressed: the initramfs's busybox insmod reads plain .ko files only."""
    if source.name.endswith(".zst"):
        runner.run("image", ["zstd", "--quiet", "--decompress", "--force", "-o", target, source],
                   log=runner.log_path("image-vm-initrd-modules"), timeout=60)
    else:
        shutil.copyfile(source, target)


def build(tree: Path, kernel: Path, initrd: Path, work: Path) -> str:
    """The kernel of `tree` to `kernel`, and the VM initramfs to `initrd`; returns the kernel version."""
    version = kernel_version(tree)
    modules_dir = tree / "usr" / "lib" / "modules" / version
    order = load_order((modules_dir / "modules.dep").read_text(), VM_MODULES)
    staging = work / "vm-initramfs"
    (staging / "lib" / "modules").mkdir(parents=True)
    (staging / "etc").mkdir()
    for module in order:
        copy_module(modules_dir / module, staging / "lib" / "modules" / Path(plain(module)).name)
    (staging / "etc" / "modules.order").write_text("".join(Path(plain(m)).name + "\n" for m in order))
    add_busybox(staging)
    shutil.copyfile(init_script(), staging / "init")
    os.chmod(staging / "init", 0o755)
    with atomic_path(initrd) as tmp:
        pack(staging, tmp, step="image-vm-initrd")
    with atomic_path(kernel) as tmp:
        shutil.copyfile(tree / "boot" / f"vmlinuz-{version}", tmp)
    return version


def cmdline(root_fs_uuid: str, wifi: bool) -> str:
    blacklist = VM_BLACKLIST + ([] if wifi else ["cfg80211"])
    return f"root=UUID={root_fs_uuid} ro {VM_CMDLINE} module_blacklist={','.join(blacklist)}"
