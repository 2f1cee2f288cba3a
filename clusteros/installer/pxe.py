"""The PXE set: kernel, initrd, image data, iPXE script, iPXE chain-loaders and a dnsmasq configuration,
in one folder. No secret is in it: a machine it boots is a stranger until the owner approves it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clusteros import runner
from clusteros.atomic import link_or_copy, replace_dir, work_dir
from clusteros.installer.initramfs import prepare_boot_files
from clusteros.installer.payload import load_payload
from clusteros.errors import ClusterOSError
from clusteros.installer.settings import CHAINLOADERS, dnsmasq_example, installer_config, ipxe_script


def build_pxe(*, spec: dict, rootfs_tar: Path, manifest: Path, payload: Path, pxe_dir: Path) -> None:
    """dist/pxe: kernel, initrd, image data, iPXE script, dnsmasq example; replaced whole."""
    data = load_payload(payload)
    config = installer_config(spec["installer"], json.loads(manifest.read_text()), data)
    name = spec["cluster"]["name"]
    with runner.step("pxe", f"the PXE set in {pxe_dir}/"), work_dir("pxe-") as work:
        kernel, initrd = prepare_boot_files(work, rootfs_tar, config, data)
        out = work / "pxe"
        out.mkdir()
        shutil.move(kernel, out / "vmlinuz")
        shutil.move(initrd, out / "initrd.img")
        link_or_copy(data.data, out / "image.data.zst")
        (out / "boot.ipxe").write_text(ipxe_script(name, config))
        (out / "dnsmasq.conf.example").write_text(dnsmasq_example(name))
        for file, source in CHAINLOADERS.items():
            _copy_chainloader(Path(source), out / file)
        replace_dir(out, pxe_dir)
    runner.say("pxe", f"{pxe_dir}/: boot.ipxe, vmlinuz, initrd.img, image.data.zst, dnsmasq.conf.example, "
                      f"{', '.join(CHAINLOADERS)}")


def _copy_chainloader(source: Path, target: Path) -> None:
    if not source.is_file():
        raise ClusterOSError(f"{source} is missing: the PXE set hands it to machines whose firmware is not iPXE",
                             fix="install Debian's ipxe package (scripts/install-prereqs.sh does)")
    shutil.copyfile(source, target)
