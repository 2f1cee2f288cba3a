"""The node image: rootfs tar + ClusterOS files -> dist/<name>.qcow2 and its manifest.

Two layers, so that changing a ClusterOS file costs seconds, not a rebuild:

- the base tree: the rootfs tar unpacked and given what depends only on it and
  on the spec's users and locale (users, keys, time zone, a lean tree with
  clamped times). It is kept in dist/tmp/base-tree/ between builds, keyed by
  exactly those inputs.
- the ClusterOS layer: overlay, node-agent, node spec, K3s, units, fstab and
  GRUB's menu. Each build makes a hard-link copy of the base tree (no data is
  copied), puts the layer in as new files, and mkfs.ext4 -d writes the root
  file system straight into the disk file.

Nothing is booted and nothing is mounted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from clusteros import customize, disk, paths, runner, vmboot
from clusteros.atomic import atomic_path, work_dir, write_json
from clusteros.manifest import image_manifest

# File times inside the image, unless SOURCE_DATE_EPOCH says otherwise (reproducible builds).
DEFAULT_EPOCH = 1735689600  # 2025-01-01
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200n8"
# Bump when the base tree is made differently, so trees made the old way are not reused.
BASE_RECIPE = 6


def source_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))


@dataclass(frozen=True)
class ImageInputs:
    """Everything a node image is made from. The same inputs give the same disk."""

    name: str
    image: dict                          # the spec's image section
    node_spec: dict                      # baked as /etc/clusteros/spec.json
    agent_pyz: Path
    owner_pubkey: Path                   # public: nodes check credentials against it
    rootfs_tar: Path | None = None       # native builds
    k3s_binary: Path | None = None
    spec_inputs: dict = field(default_factory=dict)   # what the disk's UUIDs are seeded from

    @property
    def distro(self) -> str:
        return self.image["distro"]

    def base_key(self) -> str:
        """What the base tree depends on, hashed."""
        material = {"recipe": BASE_RECIPE, "rootfs": self.rootfs_tar.name if self.rootfs_tar else None,
                    "users": self.image["users"], "timezone": self.image["timezone"],
                    "locale": self.image["locale"], "epoch": source_epoch()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    def disk_ids(self) -> disk.DiskIds:
        return disk.DiskIds.from_seed(json.dumps(self.spec_inputs, sort_keys=True))


# --------------------------------------------------------------------------
# The ClusterOS layer (also what Packer's iso base unpacks over a fresh install)


def add_clusteros_files(tree: Path, inputs: ImageInputs, *, compile_agent: bool = True) -> None:
    """What makes a Debian or Ubuntu system a ClusterOS node: the overlay, the node-agent, its spec, K3s."""
    customize.apply_overlay(tree, inputs.distro)
    customize.install_agent(tree, inputs.agent_pyz, compile_agent=compile_agent)
    customize.install_node_spec(tree, inputs.node_spec)
    customize.install_owner_key(tree, inputs.owner_pubkey)
    customize.configure_mpi(tree, inputs.node_spec, inputs.image["architecture"])
    if inputs.k3s_binary is not None:
        customize.install_k3s(tree, inputs.k3s_binary)


def write_node_files_tar(out: Path, inputs: ImageInputs) -> None:
    """The ClusterOS files alone, as a tar to unpack over an installed system (Packer's iso base).

    The agent's bytecode is left to the target's own Python (provision.sh compiles it).
    """
    with tempfile.TemporaryDirectory(prefix="node-files-", dir=out.parent) as work:
        tree = Path(work)
        add_clusteros_files(tree, inputs, compile_agent=False)
        with atomic_path(out) as tmp:
            runner.run("image", ["tar", "--create", "--file", tmp, "--directory", tree, "--sort=name",
                                 "--owner=0", "--group=0", "--numeric-owner", f"--mtime=@{source_epoch()}",
                                 *sorted(os.listdir(tree))],   # not ".": its mode would land on /
                       log=runner.log_path("image-node-files"))


# --------------------------------------------------------------------------
# The base tree, kept between builds


def base_tree(inputs: ImageInputs) -> Path:
    """dist/tmp/base-tree, made from the rootfs tar when its inputs changed (or it is missing)."""
    work = _work_parent()
    tree, stamp = work / "base-tree", work / "base-tree.key"
    key = inputs.base_key()
    if tree.is_dir() and stamp.exists() and stamp.read_text().strip() == key:
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="base-tree-", dir=work) as building:
        new = Path(building) / "root"
        new.mkdir()
        with runner.step("image", f"unpacking {inputs.rootfs_tar.name} into the base tree"):
            runner.run("image", ["tar", "--extract", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                                 "--file", inputs.rootfs_tar, "--directory", new],
                       log=runner.log_path("image-unpack"), timeout=1800)
        with runner.step("image", "base tree: users, locale, a lean tree"):
            customize.set_locale_and_time(new, inputs.image)
            customize.add_users(new, inputs.image["users"])
            customize.make_lean(new)
            customize.prune_modules(new)
            customize.clamp_times(new, source_epoch())
            customize.mark_updated(new, source_epoch())
        os.replace(new, tree)
    stamp.write_text(key + "\n")
    return tree


def _work_parent() -> Path:
    parent = (paths.dist_dir() / "tmp").resolve()
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def layered_tree(base: Path, into: Path, inputs: ImageInputs, ids: disk.DiskIds) -> dict[str, str]:
    """A hard-link copy of `base` at `into` with the ClusterOS layer; returns the installed packages."""
    runner.run("image", ["cp", "--archive", "--link", base, into], log=runner.log_path("image-tree"))
    add_clusteros_files(into, inputs)
    customize.place_bytes(into / "etc" / "fstab", disk.fstab(ids).encode())
    customize.place_bytes(into / "boot" / "grub" / "grub.cfg", disk.grub_config(ids, KERNEL_CMDLINE).encode())
    (into / "boot" / "efi").mkdir(parents=True, exist_ok=True)
    customize.set_units(into)
    customize.drop_dynamic_motd(into)
    customize.clamp_times(into, source_epoch())
    return customize.installed_packages(into)


# --------------------------------------------------------------------------
# The whole stage


def vm_boot(inputs: ImageInputs, work: Path, kernel: Path, initrd: Path) -> str:
    """The test VMs' kernel and initramfs, made again only when the base tree or their recipe changed."""
    stamp = kernel.with_suffix(".vm-boot.key")
    key = f"{inputs.base_key()} {vmboot.recipe_key()}"
    if kernel.exists() and initrd.exists() and stamp.exists() and stamp.read_text().split("\n")[0] == key:
        return stamp.read_text().split("\n")[1]
    with runner.step("image", f"the test VMs' kernel and initramfs ({kernel.name}, {initrd.name})"):
        version = vmboot.build(work / "root", kernel, initrd, work)
    stamp.write_text(f"{key}\n{version}\n")
    return version


def vm_boot_files(qcow2: Path) -> tuple[Path, Path]:
    """The kernel and VM initramfs beside dist/<name>.qcow2 (clusteros.vmboot)."""
    return qcow2.with_suffix(".vmlinuz"), qcow2.with_suffix(".vm-initrd.img")


def build_image(inputs: ImageInputs, qcow2: Path, manifest: Path) -> None:
    disk_bytes = disk.parse_size(inputs.image["disk_size"])
    ids = inputs.disk_ids()
    base = base_tree(inputs)
    kernel, initrd = vm_boot_files(qcow2)
    with work_dir("image-") as work:
        with runner.step("image", "the ClusterOS layer on a link copy of the base tree"):
            packages = layered_tree(base, work / "root", inputs, ids)
        version = vm_boot(inputs, work, kernel, initrd)
        raw = work / "disk.raw"
        with runner.step("image", f"writing a {inputs.image['disk_size']} GPT disk: BIOS boot, ESP, ext4 root"):
            disk.assemble(raw, work / "root", work, ids, disk_bytes, source_epoch())
        with runner.step("image", f"converting to {qcow2.name}"), atomic_path(qcow2) as tmp:
            runner.run("image", ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-W", raw, tmp],
                       log=runner.log_path("image-qcow2"), timeout=1800)
            record = image_manifest(
                name=inputs.name, image=inputs.image, epoch=source_epoch(), builder={"name": "native"},
                disk={"size": disk_bytes, "root_fs_uuid": ids.root_fs, "disk_uuid": ids.disk},
                inputs=inputs.spec_inputs, qcow2=tmp, qcow2_name=qcow2.name, packages=packages,
                k3s_binary=inputs.k3s_binary)
            record["vm_boot"] = {"kernel": kernel.name, "initrd": initrd.name, "kernel_version": version,
                                 "cmdline": vmboot.cmdline(ids.root_fs, "wifi" in inputs.node_spec["network"])}
            write_json(manifest, record)
    runner.say("image", f"{qcow2}: {qcow2.stat().st_size / 2**20:.0f} MiB")
