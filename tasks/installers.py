"""payload, iso, usb, pxe: installers for the node image (clusteros.installer does the work).

The payload (the raw disk's data extents, gzipped, and their map) is made once
for all installers. Each installer rebuilds when the payload, the kernel's root
file system, the installer's own files or the spec's `installer` section change.
"""

from doit.tools import config_changed

from clusteros import installer, packer, paths, rootfs
from clusteros.spec import rootfs_view
from tasks.context import dist, spec

INSTALLER_CODE = paths.PROJECT_ROOT / "clusteros" / "installer.py"


def task_payload():
    """The image's data for the installers: dist/<name>.data.gz and its extent map."""
    return {"actions": [(installer.build_payload, [dist(".raw"), dist(".data.gz"), dist(".payload.json")])],
            "file_dep": [dist(".raw"), INSTALLER_CODE],
            "targets": [dist(".data.gz"), dist(".payload.json")], "clean": True}


def _inputs(s: dict) -> dict:
    return {"rootfs_tar": rootfs.rootfs_path(rootfs_view(s)), "manifest": dist(".manifest.json"),
            "payload": dist(".payload.json")}


def _file_deps(s: dict) -> list:
    return [*_inputs(s).values(), dist(".data.gz"), *sorted(installer.installer_files().iterdir()), INSTALLER_CODE]


def _unsupported(name: str) -> dict:
    """With Packer's iso base, Ubuntu's installer lays out the disk: the installers need ClusterOS's own."""
    def refuse():
        raise installer.InstallerError(
            f"{name}: the installers write and check ClusterOS's own disk layout, and image.packer.base: iso "
            "lets Ubuntu's installer lay out the disk; build with image.packer.base: native (or builder: native)")
    return {"actions": [refuse], "uptodate": [False]}


def _uptodate(s: dict) -> list:
    return [config_changed({"installer": s["installer"], "name": s["cluster"]["name"]})]


def task_iso():
    """Hybrid installer ISO dist/<name>-installer.iso (BIOS and UEFI, CD and USB)."""
    s = spec()
    if packer.iso_base(s):
        return _unsupported("iso")
    return {"actions": [(installer.build_iso, [], dict(spec=s, iso=dist("-installer.iso"), **_inputs(s)))],
            "file_dep": _file_deps(s), "targets": [dist("-installer.iso")], "uptodate": _uptodate(s),
            "clean": True}


def task_usb():
    """USB installer image dist/<name>-usb.img.gz (the hybrid ISO; prints the dd command)."""
    return {"actions": [(installer.build_usb, [], dict(iso=dist("-installer.iso"), usb_gz=dist("-usb.img.gz")))],
            "file_dep": [dist("-installer.iso")], "targets": [dist("-usb.img.gz")], "clean": True}


def task_pxe():
    """PXE set dist/pxe/: kernel, initrd, image data, iPXE script, dnsmasq example."""
    s = spec()
    if packer.iso_base(s):
        return _unsupported("pxe")
    pxe_dir = paths.dist_dir() / "pxe"
    return {"actions": [(installer.build_pxe, [], dict(spec=s, pxe_dir=pxe_dir, **_inputs(s)))],
            "file_dep": _file_deps(s), "targets": [pxe_dir / "boot.ipxe", pxe_dir / "initrd.img"],
            "uptodate": _uptodate(s), "clean": [(installer.remove_tree, [pxe_dir])]}
