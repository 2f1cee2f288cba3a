"""Installers: the node image on a hybrid ISO, a USB disk image, and a PXE set.

All three boot the node image's own kernel with a small initramfs: static
busybox, the storage and network drivers the installer needs (taken from the
image's kernel, with their dependencies), /etc/installer.conf made from the
spec, and images/installer/init, which writes the image to a disk, reads it
back against each extent's XXH64, and reboots. The image travels as its data: the
raw disk's data extents, zstd-compressed (checked against its sha256 before
anything is written), with a map of where each goes and its XXH64 (as bmaptool
does with SHA-256), so an install writes and reads back the image's ~0.7 GiB of
data, not its 4 GiB of mostly holes.

- payload: the image's data extents and their map
- settings: what /init is told, and the boot menus (GRUB, iPXE, dnsmasq)
- initramfs: the kernel and its drivers from the rootfs, and the cpio
- media: the hybrid ISO and the USB image
- pxe: the PXE set
"""

from __future__ import annotations

from pathlib import Path

from clusteros import paths
from clusteros.errors import ClusterOSError


class InstallerError(ClusterOSError):
    pass


def installer_files() -> Path:
    """images/installer: the installer's /init and its DHCP script."""
    return paths.IMAGES_DIR / "installer"
