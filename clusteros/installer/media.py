"""The hybrid ISO (a CD and a disk, BIOS and UEFI) and the USB image made from it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from clusteros import runner
from clusteros.atomic import atomic_path, link_or_copy, work_dir
from clusteros.hashing import sha256_file
from clusteros.installer.initramfs import prepare_boot_files
from clusteros.installer.payload import load_payload
from clusteros.installer.settings import grub_config, installer_config

VOLUME_ID = "CLUSTEROS"


def build_iso(*, spec: dict, rootfs_tar: Path, manifest: Path, payload: Path, iso: Path) -> None:
    """Hybrid ISO (grub-mkrescue): boots as a CD and as a disk, under BIOS and UEFI."""
    data = load_payload(payload)
    image_manifest = json.loads(manifest.read_text())
    config = installer_config(spec["installer"], image_manifest, data)
    name = spec["cluster"]["name"]
    with work_dir("iso-") as work:
        kernel, initrd = prepare_boot_files(work, rootfs_tar, config, data)
        medium = work / "medium"
        (medium / "boot" / "grub").mkdir(parents=True)
        (medium / "clusteros").mkdir()
        shutil.move(kernel, medium / "boot" / "vmlinuz")
        shutil.move(initrd, medium / "boot" / "initrd.img")
        (medium / "boot" / "grub" / "grub.cfg").write_text(grub_config(name, config))
        link_or_copy(data.data, medium / "clusteros" / "image.data.zst")
        (medium / "clusteros" / "medium-id").write_text(config["MEDIUM_ID"] + "\n")
        with runner.step("iso", f"grub-mkrescue: {iso.name} ({data.data.stat().st_size / 2**20:.0f} MiB of image)"), \
                atomic_path(iso) as tmp:
            env = {**os.environ, "SOURCE_DATE_EPOCH": str(image_manifest["source_date_epoch"])}
            runner.run("iso", ["grub-mkrescue", "--output", tmp, medium, "--", "-volid", VOLUME_ID], env=env,
                       timeout=1800)
    runner.say("iso", f"{iso}: {iso.stat().st_size / 2**20:.0f} MiB")


def build_usb(*, iso: Path, usb_gz: Path, usb_sha: Path) -> None:
    """The hybrid ISO is already a disk image; compressed, it is what Etcher, dd or `clusteros flash` take.
    `usb_sha` names the image's sha256 and size, which the flasher checks the stick against."""
    cores = os.cpu_count() or 1
    with runner.step("usb", f"{iso.name} -> {usb_gz.name}"), atomic_path(usb_gz) as tmp:
        runner.run("usb", ["pigz", "--processes", str(cores), "--no-name", "--stdout", iso], stdout=tmp, timeout=3600)
    with atomic_path(usb_sha) as tmp:
        tmp.write_text(f"{sha256_file(iso)}  {usb_gz.name.removesuffix('.gz')}  {iso.stat().st_size}\n")
    runner.say("usb", f"{usb_gz} ({usb_gz.stat().st_size / 2**20:.0f} MiB): shareable, it holds no secret. "
               "A stick made from it asks to join (clusteros approve).\n"
               f"  Your own stick, whose nodes join by themselves: clusteros owner-stick FILE (then write FILE),\n"
               f"  or write {usb_gz.name} and then {usb_gz.name.replace('-usb.img.gz', '-usb-credential.bin')} at the "
               "first MiB after it.")
