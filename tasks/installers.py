"""payload, iso, usb, pxe: installers for the node image (clusteros.installer does the work).

The payload (the raw disk's data extents, zstd-compressed, and their map) is made once
for all installers. Each installer rebuilds when the payload, the kernel's root
file system, the installer's own files or the spec's `installer` section change.
"""

from doit.tools import config_changed

from clusteros import credentials, packer, paths, rootfs
from clusteros.atomic import remove_tree
from clusteros.errors import UsageError
from clusteros.installer import InstallerError, installer_files, media, owner_part, payload, pxe
from clusteros.spec import rootfs_view
from tasks.code import code_deps
from tasks.context import dist, spec


def task_payload():
    """The image's data for the installers: dist/<name>.data.zst and its extent map."""
    return {"actions": [(payload.build_payload, [dist(".raw"), dist(".data.zst"), dist(".payload.json")])],
            "file_dep": [dist(".raw"), *code_deps("clusteros.installer.payload")],
            "targets": [dist(".data.zst"), dist(".payload.json")], "clean": True}


def _inputs(s: dict) -> dict:
    return {"rootfs_tar": rootfs.rootfs_path(rootfs_view(s)), "manifest": dist(".manifest.json"),
            "payload": dist(".payload.json")}


def _installer(s: dict, builder, module: str, targets: list, **outputs) -> dict:
    """An installer task, or, with Packer's iso base, one that refuses with the fix."""
    if packer.iso_base(s):
        return _unsupported(builder.__name__.removeprefix("build_"))
    return {"actions": [(builder, [], dict(spec=s, **_inputs(s), **outputs))],
            "file_dep": [*_inputs(s).values(), dist(".data.zst"), *sorted(installer_files().iterdir()),
                         *code_deps(module)],
            "targets": targets,
            "uptodate": [config_changed({"installer": s["installer"], "name": s["cluster"]["name"]})],
            "clean": True}


def _unsupported(name: str) -> dict:
    """With Packer's iso base, Ubuntu's installer lays out the disk: the installers need ClusterOS's own."""
    def refuse():
        raise InstallerError(f"{name}: the installers write and check ClusterOS's own disk layout, and "
                             "image.packer.base: iso lets Ubuntu's installer lay out the disk",
                             fix="build with image.packer.base: native (or builder: native)")
    return {"actions": [refuse], "uptodate": [False]}


def task_iso():
    """Hybrid installer ISO dist/<name>-installer.iso (BIOS and UEFI, CD and USB)."""
    return _installer(spec(), media.build_iso, "clusteros.installer.media", [dist("-installer.iso")],
                      iso=dist("-installer.iso"))


def _credential_block() -> bytes:
    s = spec()
    return owner_part.block(credentials.ensure_bundle(s).read_bytes(), credentials.ssh_keys_text(s))


def _credential_part() -> None:
    owner_part.write_block(dist("-usb-credential.bin"), _credential_block())


def _credential_part_current() -> bool:
    """The owner's part says what the credential says now (a rotation, or network.wifi's key, changes it).
    Compared, not hashed into doit's database: that would keep a digest of the key there."""
    part = dist("-usb-credential.bin")
    return part.exists() and part.read_bytes() == _credential_block()


def task_usb():
    """USB installer dist/<name>-usb.img.gz (shareable) and the owner's credential part (0600) for their sticks."""
    return {"actions": [(media.build_usb, [], dict(iso=dist("-installer.iso"), usb_gz=dist("-usb.img.gz"),
                                                   usb_sha=dist("-usb.img.sha256"))),
                        _credential_part],
            "file_dep": [dist("-installer.iso"), *code_deps("clusteros.installer.media", "clusteros.installer.owner_part",
                                                            "clusteros.credentials")],
            "task_dep": ["keys"],
            "targets": [dist("-usb.img.gz"), dist("-usb.img.sha256"), dist("-usb-credential.bin")],
            "uptodate": [_credential_part_current], "clean": True}


def _flash(device: str, yes: bool, credential: bool, force: bool) -> None:
    from clusteros import flash
    if not device:
        raise UsageError("no device named", fix="doit flash --device /dev/sdX (see `lsblk`)")
    flash.flash(device, dist("-usb.img.gz"), dist("-usb.img.sha256"),
                credential=dist("-usb-credential.bin") if credential else None, yes=yes, force=force)


def task_flash():
    """Write the USB installer to a stick, then read it back: `doit flash --device /dev/sdX [--credential]`."""
    params = [{"name": "device", "long": "device", "type": str, "default": "", "help": "the stick, e.g. /dev/sdb"},
              {"name": "yes", "long": "yes", "type": bool, "default": False, "help": "erase it without asking"},
              {"name": "credential", "long": "credential", "type": bool, "default": False,
               "help": "add your credential after the installer: a node installed from it joins by itself"},
              {"name": "force", "long": "force", "type": bool, "default": False,
               "help": "write a disk that does not say it is removable"}]
    return {"actions": [_flash], "params": params, "task_dep": ["usb"], "uptodate": [False], "verbosity": 2}


def task_pxe():
    """PXE set dist/pxe/: kernel, initrd, image data, iPXE script and chain-loaders, dnsmasq configuration."""
    pxe_dir = paths.dist_dir() / "pxe"
    task = _installer(spec(), pxe.build_pxe, "clusteros.installer.pxe", [pxe_dir / "boot.ipxe", pxe_dir / "initrd.img"],
                      pxe_dir=pxe_dir)
    if "clean" in task:
        task["clean"] = [(remove_tree, [pxe_dir])]
    return task
