"""`clusteros doctor`: can this machine build and test the configuration in the spec?

Lists every external tool the chosen builders need, with its version, says
whether KVM really works, and names the package that provides what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clusteros import accel, rootfs

# (what, how to find it, Debian package, needed for)
Check = tuple[str, str, str, str]

COMMON: list[Check] = [
    ("qemu-img", "qemu-img", "qemu-utils", "image"),
    ("mkfs.ext4", "mkfs.ext4", "e2fsprogs", "image"),
    ("mkfs.vfat", "mkfs.vfat", "dosfstools", "image"),
    ("mcopy", "mcopy", "mtools", "image"),
    ("sfdisk", "sfdisk", "fdisk", "image"),
    ("grub-mkimage", "grub-mkimage", "grub-common", "image"),
    ("GRUB for BIOS", "/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin", "image"),
    ("GRUB for UEFI", "/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin", "image"),
    ("useradd", "useradd", "passwd", "image"),
    ("zstd", "zstd", "zstd", "image"),
    ("systemctl", "systemctl", "systemd", "image"),
    ("ssh-keygen", "ssh-keygen", "openssh-client", "keys"),
    ("pigz", "pigz", "pigz", "gz, iso, usb, pxe"),
    ("qemu-system-x86_64", "qemu-system-x86_64", "qemu-system-x86", "test_vm"),
    ("vde_switch", "vde_switch", "vde2", "test_vm"),
    ("ssh", "ssh", "openssh-client", "test_vm"),
    ("SeaBIOS", "/usr/share/seabios/bios-256k.bin", "seabios", "test_vm"),
    ("OVMF (UEFI)", "/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf", "test_vm, iso"),
    ("xorriso", "xorriso", "xorriso", "iso, usb"),
    ("grub-mkrescue", "grub-mkrescue", "grub-common", "iso, usb"),
    ("cpio", "cpio", "cpio", "iso, usb, pxe"),
    ("static busybox", "/bin/busybox", "busybox-static", "iso, usb, pxe"),
    ("xxhsum", "xxhsum", "xxhash", "iso, usb, pxe"),
    ("iPXE ROMs", "/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu", "PXE tests"),
]
NATIVE: list[Check] = [
    ("mmdebstrap", "mmdebstrap", "mmdebstrap", "rootfs"),
]
PACKER: list[Check] = [
    ("packer", "packer", "packer", "image (packer)"),
]
KEYRING_PACKAGES = {"debian": "debian-archive-keyring", "ubuntu": "ubuntu-keyring"}


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    package: str
    needed_for: str


def _version(program: str) -> str:
    for flag in ("--version", "-V", "version"):
        try:
            out = subprocess.run([program, flag], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (out.stdout or out.stderr).strip().splitlines()
        if out.returncode == 0 and text:
            return text[0][:70]
    return "installed"


def _check(check: Check) -> Finding:
    name, locator, package, needed_for = check
    if locator.startswith("/"):
        ok = Path(locator).exists()
        return Finding(name, ok, locator if ok else f"missing: {locator}", package, needed_for)
    found = shutil.which(locator) or next(
        (str(Path(d) / locator) for d in ("/usr/sbin", "/sbin") if (Path(d) / locator).exists()), None)
    if not found:
        return Finding(name, False, "not installed", package, needed_for)
    return Finding(name, True, _version(found), package, needed_for)


def checks_for(spec: dict) -> list[Check]:
    distro = spec["image"]["distro"]
    keyring = (f"{distro} archive keyring", rootfs.KEYRINGS[distro], KEYRING_PACKAGES[distro], "rootfs")
    builder = NATIVE if spec["image"]["builder"] == "native" else NATIVE + PACKER
    return COMMON + builder + [keyring]


def diagnose(spec: dict, probe=accel.probe_kvm) -> tuple[list[Finding], Finding]:
    findings = [_check(c) for c in checks_for(spec)]
    ok, reason = probe()
    setting = spec["vm"]["accel"]
    kvm = Finding("KVM", ok or setting != "kvm",
                  f"works: {reason}" if ok else f"unusable, TCG will be used: {reason}", "qemu-system-x86", "test_vm")
    if not ok and setting == "kvm":
        kvm.detail = f"vm.accel is kvm but KVM is unusable: {reason}"
    return findings, kvm


def report(spec: dict, probe=accel.probe_kvm) -> tuple[str, bool]:
    findings, kvm = diagnose(spec, probe)
    rows = findings + [kvm]
    width = max(len(f.name) for f in rows)
    lines = [f"ClusterOS doctor: builder {spec['image']['builder']}, {spec['image']['distro']} "
             f"{spec['image']['suite']}, vm.accel {spec['vm']['accel']}", ""]
    for f in rows:
        mark = "ok " if f.ok else "MISSING" if f is not kvm else "NO "
        lines.append(f"  {mark:7} {f.name:<{width}}  {f.detail}   [{f.needed_for}]")
    if os.geteuid() != 0:
        lines.append("\n  note: building images needs root (mmdebstrap --mode=root, useradd --root).")
    missing = sorted({f.package for f in findings if not f.ok})
    ready = not missing and kvm.ok
    if missing:
        lines.append(f"\n  fix: apt-get install {' '.join(missing)}   (or run scripts/install-prereqs.sh)")
    lines.append("\n  ready: this machine can build and test this configuration." if ready
                 else "\n  not ready: see above.")
    return "\n".join(lines), ready
