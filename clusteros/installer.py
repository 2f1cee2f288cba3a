"""Installers: the node image on a hybrid ISO, a USB disk image, and a PXE set.

All three boot the node image's own kernel with a small initramfs: static
busybox, the storage and network drivers the installer needs (taken from the
image's kernel, with their dependencies), /etc/installer.conf made from the
spec, and images/installer/init, which writes the image to a disk, reads it
back against its sha256, and reboots. The image travels as its
data: the raw disk's data extents, gzipped, with a map of where each goes and
its sha256 (as bmaptool does), so an install writes and reads back the image's
~0.7 GiB of data, not its 4 GiB of mostly holes.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clusteros import paths, runner
from clusteros.atomic import atomic_path, write_json
from clusteros.errors import ClusterOSError
from clusteros.image import sha256_file

BUSYBOX = Path("/bin/busybox")      # busybox-static: one static binary, runs in any initramfs
VOLUME_ID = "CLUSTEROS"
CONSOLES = "console=ttyS0,115200n8 console=tty0"   # the last one reads the keyboard: tty0
MERGE_GAP = 1024 * 1024

# Drivers for the disks an installer writes to, the media it boots from, and the
# NICs PXE uses; each module's dependencies come along from modules.dep.
MODULE_PREFIXES = (
    "kernel/drivers/ata/", "kernel/drivers/scsi/", "kernel/drivers/nvme/", "kernel/drivers/block/",
    "kernel/drivers/cdrom/", "kernel/drivers/usb/storage/", "kernel/drivers/usb/host/", "kernel/drivers/mmc/",
    "kernel/drivers/virtio/", "kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/ethernet/intel/",
    "kernel/drivers/net/ethernet/realtek/", "kernel/drivers/net/ethernet/broadcom/", "kernel/fs/isofs/",
    "kernel/fs/ext4/", "kernel/crypto/crc32c_generic.ko",      # running from RAM mounts the image's root
)
# Large and never needed to write a disk.
MODULE_EXCLUDES = ("kernel/drivers/scsi/lpfc/", "kernel/drivers/scsi/qla2xxx/", "kernel/drivers/scsi/mpt3sas/",
                   "kernel/drivers/scsi/be2iscsi/", "kernel/drivers/scsi/bfa/", "kernel/drivers/scsi/qedf/",
                   "kernel/drivers/scsi/qedi/", "kernel/drivers/scsi/fcoe/", "kernel/drivers/scsi/libfc/",
                   "kernel/drivers/scsi/cxgbi/", "kernel/drivers/scsi/smartpqi/", "kernel/drivers/scsi/megaraid/")


class InstallerError(ClusterOSError):
    pass


def installer_files() -> Path:
    """images/installer: the installer's /init and its DHCP script."""
    return paths.IMAGES_DIR / "installer"


# --------------------------------------------------------------------------
# The installer's settings


def installer_config(installer: dict, manifest: dict, payload: "Payload") -> dict[str, str]:
    """The settings /init reads, from the spec's `installer` section, the manifest and the payload."""
    return {
        "IMAGE_NAME": manifest["name"],
        "IMAGE_BYTES": str(manifest["outputs"]["raw"]["bytes"]),
        "ROOT_FS_UUID": manifest["disk"]["root_fs_uuid"],
        "DATA_BYTES": str(payload.data_bytes),
        "DATA_GZ_SHA256": payload.gz_sha256,
        "MEDIUM_ID": medium_id(payload.gz_sha256),
        "INSTALL": "auto" if installer["unattended"] else "ask",
        "TARGET": installer["target"],
        "ON_DONE": installer["on_done"],
        "IMAGE_URL": "",
    }


def medium_id(gz_sha256: str) -> str:
    """Names the installer medium that carries this image; /init looks for it among the disks."""
    return f"clusteros-{gz_sha256[:16]}"


# --------------------------------------------------------------------------
# The payload: the image's data, without its holes


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class Payload:
    """image.data.gz (the raw disk's data extents, back to back, gzipped) and their map."""
    data_gz: Path
    extents: tuple[Extent, ...]
    gz_sha256: str

    @property
    def data_bytes(self) -> int:
        return sum(e.length for e in self.extents)


def data_extents(raw: Path, merge_gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """(offset, length) of the sparse raw disk's data, from SEEK_DATA/SEEK_HOLE.

    Holes closer than `merge_gap` are written as zeros with their neighbours:
    fewer, longer writes for the installer.
    """
    spans: list[list[int]] = []
    with open(raw, "rb") as f:
        fd, size, position = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:   # no data after position
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            if spans and start - spans[-1][1] < merge_gap:
                spans[-1][1] = end
            else:
                spans.append([start, end])
            position = end
    return [(start, end - start) for start, end in spans]


def render_map(extents) -> str:
    return "".join(f"{e.offset} {e.length} {e.sha256}\n" for e in extents)


def build_payload(raw: Path, data_gz: Path, description: Path) -> None:
    """Read the raw disk's data extents once: hash each, and stream them into pigz.

    `description` (JSON) lists the extents with their sha256 and the gzip's own sha256.
    """
    extents = []
    cores = os.cpu_count() or 1
    runner.say("payload", f"packing the data of {raw.name} (its holes are left out)")
    with atomic_path(data_gz) as tmp:
        with open(tmp, "wb") as out:
            pigz = subprocess.Popen(["pigz", "--processes", str(cores), "--no-name", "--stdout"],
                                    stdin=subprocess.PIPE, stdout=out)
            try:
                with open(raw, "rb") as f:
                    for offset, length in data_extents(raw):
                        digest = hashlib.sha256()
                        f.seek(offset)
                        left = length
                        while left:
                            chunk = f.read(min(left, 4 * 1024 * 1024))
                            digest.update(chunk)
                            pigz.stdin.write(chunk)
                            left -= len(chunk)
                        extents.append(Extent(offset, length, digest.hexdigest()))
            finally:
                pigz.stdin.close()
                code = pigz.wait()
        if code != 0:
            raise InstallerError(f"pigz failed (exit {code}) packing {raw.name}")
        payload = Payload(data_gz, tuple(extents), sha256_file(tmp))
        write_json(description, {"data_gz": data_gz.name, "gz_sha256": payload.gz_sha256,
                                 "extents": [[e.offset, e.length, e.sha256] for e in extents]})
    runner.say("payload", f"done: {payload.data_bytes / 2**20:.0f} MiB of data in {len(extents)} extents, "
               f"{data_gz.stat().st_size / 2**20:.0f} MiB gzipped")


def load_payload(description: Path) -> Payload:
    data = json.loads(description.read_text())
    return Payload(description.with_name(data["data_gz"]),
                   tuple(Extent(*e) for e in data["extents"]), data["gz_sha256"])


# --------------------------------------------------------------------------
# What the installer is told, and its boot menus


def render_config(config: dict[str, str]) -> str:
    return "# Made by `doit iso/usb/pxe` from cluster.yaml; clusteros.* kernel options override it.\n" + \
        "".join(f"{key}={shlex.quote(value)}\n" for key, value in config.items())


def grub_config(name: str, config: dict[str, str]) -> str:
    """The ISO's boot menu: the spec's choice first; the others a keypress away."""
    asked = "asks before erasing a disk"
    auto = f"unattended: erases {'the only empty disk' if config['TARGET'] == 'auto' else config['TARGET']}"
    entries = [("ask", f"Install {name} ({asked})", CONSOLES),
               ("auto", f"Install {name} ({auto})", CONSOLES),
               ("ask", f"Install {name} on the serial console ({asked})", "console=tty0 console=ttyS0,115200n8"),
               ("ram", f"Run {name} from RAM (no disk is touched)", CONSOLES)]
    if config["INSTALL"] == "auto":
        entries[0], entries[1] = entries[1], entries[0]
    lines = [
        "# Made by `doit iso` from cluster.yaml.",
        "serial --unit=0 --speed=115200",
        "terminal_input console serial",
        "terminal_output console serial",
        "set default=0",
        f"set timeout={3 if config['INSTALL'] == 'auto' else 10}",
        "",
    ]
    for mode, title, consoles in entries:
        lines += [f'menuentry "{title}" {{',
                  f"    linux /boot/vmlinuz {consoles} quiet clusteros.install={mode}",
                  "    initrd /boot/initrd.img",
                  "}"]
    return "\n".join(lines) + "\n"


def ipxe_script(name: str, config: dict[str, str]) -> str:
    """PXE menu: install to the disk, unattended or asking. vmlinuz and initrd.img load relative
    to the script; the installer fetches the image itself, from the TFTP server by default."""
    return "\n".join([
        "#!ipxe",
        f"# {name}: made by `doit pxe`. Serve this directory over TFTP (see dnsmasq.conf.example).",
        "# Over HTTP instead (much faster): set image-url http://<server>/<path>/image.data.gz",
        "set image-url tftp://${next-server}/image.data.gz",
        f"set install {config['INSTALL']}",
        f"menu ClusterOS {name}",
        f"item install Install to disk (mode ${{install}}, target {config['TARGET']})",
        "item ask Install to disk, asking before erasing",
        "item ram Run from RAM (no disk is touched; needs the image's data size + 512 MiB of memory)",
        "item shell iPXE shell",
        "choose --default install --timeout 5000 choice || goto install",
        "goto ${choice}",
        ":ram",
        "set install ram",
        "goto install",
        ":ask",
        "set install ask",
        ":install",
        f"kernel vmlinuz {CONSOLES} quiet clusteros.install=${{install}} clusteros.image=${{image-url}}",
        "initrd initrd.img",
        "boot",
        ":shell",
        "shell",
    ]) + "\n"


def dnsmasq_example(name: str) -> str:
    return f"""# dnsmasq: PXE-boot {name} nodes from this directory (a sketch: set your interface and range).
interface=eth0
dhcp-range=10.42.0.100,10.42.0.200,12h
enable-tftp
tftp-root=/srv/clusteros/pxe
# Plain PXE ROMs chain-load iPXE first; iPXE (it sends user class iPXE) gets the menu.
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe
dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi
dhcp-boot=tag:ipxe,boot.ipxe
"""


# --------------------------------------------------------------------------
# Kernel and drivers from the image's root file system


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
            raise InstallerError(f"{rootfs_tar.name} has no kernel (boot/vmlinuz-*); is linux-image in the package list?")
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


def build_initramfs(tree: Path, config: dict[str, str], extent_map: str, out: Path) -> None:
    """Busybox, /init, its config and the image's extent map in `tree` (modules already there)
    -> a gzipped newc cpio at `out`."""
    if not BUSYBOX.exists():
        raise InstallerError(f"{BUSYBOX} not found: the installer needs a static busybox\n"
                             "  fix: apt-get install busybox-static (or run scripts/install-prereqs.sh)")
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    (tree / "etc").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    (tree / "bin" / "sh").symlink_to("busybox")   # for /init's #!; it installs the other applets
    shutil.copy2(installer_files() / "init", tree / "init")
    shutil.copy2(installer_files() / "udhcpc.script", tree / "etc" / "udhcpc.script")
    (tree / "etc" / "installer.conf").write_text(render_config(config))
    (tree / "etc" / "image.map").write_text(extent_map)
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)
    listing = tree.parent / "initramfs.list"
    listing.write_text("".join(f"{p.relative_to(tree)}\n" for p in sorted(tree.rglob("*"))))
    archive = out.with_suffix(".cpio")
    runner.run("initramfs", ["sh", "-c", 'cd "$0" && cpio --create --format=newc --reproducible --quiet '
                             '--owner=0:0 < "$1" > "$2"', tree, listing, archive])
    with open(archive, "rb") as src, open(out, "wb") as dst, gzip.GzipFile(fileobj=dst, mode="wb", mtime=0) as gz:
        shutil.copyfileobj(src, gz, 4 * 1024 * 1024)
    archive.unlink()


# --------------------------------------------------------------------------
# The three installers


def prepare_boot_files(work: Path, rootfs_tar: Path, config: dict[str, str], payload: Payload) -> tuple[Path, Path]:
    """The image's kernel and the installer initramfs, in `work`."""
    runner.say("installer", f"kernel and drivers from {rootfs_tar.name}")
    kernel, version = extract_kernel(rootfs_tar, work)
    initrd = work / "initrd.img"
    build_initramfs(work / "initramfs", config, render_map(payload.extents), initrd)
    runner.say("installer", f"initramfs: kernel {version}, {initrd.stat().st_size / 2**20:.1f} MiB")
    return kernel, initrd


def _work_dir(prefix: str):
    parent = (paths.dist_dir() / "tmp").resolve()
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=parent)


def build_iso(*, spec: dict, rootfs_tar: Path, manifest: Path, payload: Path, iso: Path) -> None:
    """Hybrid ISO (grub-mkrescue): boots as a CD and as a disk, under BIOS and UEFI."""
    data = load_payload(payload)
    image_manifest = json.loads(manifest.read_text())
    config = installer_config(spec["installer"], image_manifest, data)
    name = spec["cluster"]["name"]
    with _work_dir("iso-") as work_name:
        work = Path(work_name)
        kernel, initrd = prepare_boot_files(work, rootfs_tar, config, data)
        medium = work / "medium"
        (medium / "boot" / "grub").mkdir(parents=True)
        (medium / "clusteros").mkdir()
        shutil.move(kernel, medium / "boot" / "vmlinuz")
        shutil.move(initrd, medium / "boot" / "initrd.img")
        (medium / "boot" / "grub" / "grub.cfg").write_text(grub_config(name, config))
        _link_or_copy(data.data_gz, medium / "clusteros" / "image.data.gz")
        (medium / "clusteros" / "medium-id").write_text(config["MEDIUM_ID"] + "\n")
        runner.say("iso", f"grub-mkrescue: {iso.name} ({data.data_gz.stat().st_size / 2**20:.0f} MiB of image)")
        with atomic_path(iso) as tmp:
            env = {**os.environ, "SOURCE_DATE_EPOCH": str(image_manifest["source_date_epoch"])}
            runner.run("iso", ["grub-mkrescue", "--output", tmp, medium, "--", "-volid", VOLUME_ID], env=env)
    runner.say("iso", f"done: {iso} ({iso.stat().st_size / 2**20:.0f} MiB)")


def build_usb(*, iso: Path, usb_gz: Path) -> None:
    """The hybrid ISO is already a disk image; compressed, it is what Etcher or dd take."""
    cores = os.cpu_count() or 1
    runner.say("usb", f"{iso.name} -> {usb_gz.name}")
    with atomic_path(usb_gz) as tmp:
        runner.run("usb", ["sh", "-c", 'pigz --processes "$0" --no-name --stdout "$1" > "$2"', str(cores), iso, tmp])
    runner.say("usb", f"done: {usb_gz} ({usb_gz.stat().st_size / 2**20:.0f} MiB). Write it with:\n"
               f"  zcat {usb_gz} | sudo dd of=/dev/sdX bs=4M conv=fsync status=progress\n"
               "  CHECK sdX with lsblk first: every byte on that device is replaced.")


def build_pxe(*, spec: dict, rootfs_tar: Path, manifest: Path, payload: Path, pxe_dir: Path) -> None:
    """dist/pxe: kernel, initrd, image data, iPXE script, dnsmasq example; replaced whole."""
    data = load_payload(payload)
    config = installer_config(spec["installer"], json.loads(manifest.read_text()), data)
    name = spec["cluster"]["name"]
    with _work_dir("pxe-") as work_name:
        work = Path(work_name)
        kernel, initrd = prepare_boot_files(work, rootfs_tar, config, data)
        out = work / "pxe"
        out.mkdir()
        shutil.move(kernel, out / "vmlinuz")
        shutil.move(initrd, out / "initrd.img")
        _link_or_copy(data.data_gz, out / "image.data.gz")
        (out / "boot.ipxe").write_text(ipxe_script(name, config))
        (out / "dnsmasq.conf.example").write_text(dnsmasq_example(name))
        _replace_dir(out, pxe_dir)
    runner.say("pxe", f"done: {pxe_dir}/ (boot.ipxe, vmlinuz, initrd.img, image.data.gz)")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)   # the image is hundreds of MiB; dist/tmp is on the same file system
    except OSError:
        shutil.copyfile(source, target)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap `new` in for `target`: at no moment is there a half-filled target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    shutil.move(new, target)
    shutil.rmtree(old, ignore_errors=True)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
