"""The node image: rootfs tar + overlay + node-agent + spec -> dist/<name>.qcow2.

Nothing is booted and nothing is mounted: the tree is unpacked into a work
directory, customized offline (systemctl --root, useradd --root), written into
the disk file by mkfs.ext4 -d, and made bootable by clusteros.disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from clusteros import disk, paths, runner
from clusteros.atomic import atomic_path, write_json

# File times inside the image, unless SOURCE_DATE_EPOCH says otherwise (reproducible builds).
DEFAULT_EPOCH = 1735689600  # 2025-01-01

KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200n8"
AGENT_PATH = "usr/local/lib/clusteros/node-agent.pyz"
UNITS_ENABLED = ["systemd-networkd.service", "systemd-resolved.service", "ssh.service",
                 "clusteros-identity.service", "clusteros-growroot.service", "clusteros-ssh-hostkeys.service"]
# The node-agent starts the SLURM daemon of the node's role; none starts by itself.
UNITS_DISABLED = ["slurmctld.service", "slurmd.service"]
OPTIONAL_UNITS = ["node-agent.service"]
# Jobs that cost a node minutes of boot or reach for the internet on their own.
UNITS_MASKED = ["e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer"]


def overlay_dirs(distro: str) -> list[Path]:
    """Overlay trees, applied in order: common first, then the distro's own."""
    return [d for d in (paths.IMAGES_DIR / "common" / "overlay", paths.IMAGES_DIR / distro / "overlay") if d.is_dir()]


def overlay_files(distro: str) -> list[Path]:
    return sorted(p for d in overlay_dirs(distro) for p in d.rglob("*") if p.is_file() or p.is_symlink())


def source_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Customizing the tree


def apply_overlay(tree: Path, distro: str) -> None:
    for src in overlay_dirs(distro):
        shutil.copytree(src, tree, symlinks=True, dirs_exist_ok=True)


def install_k3s(tree: Path, binary: Path) -> None:
    target = tree / "usr" / "local" / "bin" / "k3s"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, target)
    os.chmod(target, 0o755)


def install_node_files(tree: Path, node_spec: dict, agent_pyz: Path, secret: Path) -> None:
    etc = tree / "etc" / "clusteros"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "spec.json").write_text(json.dumps(node_spec, indent=2, sort_keys=True) + "\n")
    key = etc / "cluster.secret"
    key.write_bytes(secret.read_bytes())
    os.chmod(key, 0o600)
    os.chmod(etc, 0o755)
    agent = tree / AGENT_PATH
    agent.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(agent_pyz, agent)
    os.chmod(agent, 0o755)


def add_clusteros_files(tree: Path, distro: str, node_spec: dict, agent_pyz: Path, secret: Path,
                        k3s_binary: Path | None) -> None:
    """What makes a Debian or Ubuntu system a ClusterOS node: the overlay, the node-agent, its spec, K3s."""
    apply_overlay(tree, distro)
    install_node_files(tree, node_spec, agent_pyz, secret)
    if k3s_binary is not None:
        install_k3s(tree, k3s_binary)


def write_node_files_tar(out: Path, *, distro: str, node_spec: dict, agent_pyz: Path, secret: Path,
                         k3s_binary: Path | None) -> None:
    """The ClusterOS files alone, as a tar to unpack over an installed system (Packer's iso base)."""
    with tempfile.TemporaryDirectory(prefix="node-files-", dir=out.parent) as work:
        tree = Path(work)
        add_clusteros_files(tree, distro, node_spec, agent_pyz, secret, k3s_binary)
        with atomic_path(out) as tmp:
            runner.run("image", ["tar", "--create", "--file", tmp, "--directory", tree, "--sort=name",
                                 "--owner=0", "--group=0", "--numeric-owner", f"--mtime=@{source_epoch()}",
                                 *sorted(os.listdir(tree))],   # not ".": its mode would land on /
                       log=runner.log_path("image-node-files"))


def set_locale_and_time(tree: Path, image: dict) -> None:
    localtime = tree / "etc" / "localtime"
    localtime.unlink(missing_ok=True)
    localtime.symlink_to(f"/usr/share/zoneinfo/{image['timezone']}")
    (tree / "etc" / "timezone").write_text(image["timezone"] + "\n")
    (tree / "etc" / "default" / "locale").write_text(f"LANG={image['locale']}\n")
    (tree / "etc" / "hostname").write_text("clusteros\n")


def add_users(tree: Path, users: list[dict], test_pubkey: str) -> None:
    sudoers = []
    for user in users:
        name = user["name"]
        runner.run("image", ["useradd", "--root", tree, "--create-home", "--shell", user["shell"],
                             "--user-group", name], log=runner.log_path("image-users"), append=True)
        # '*' is "no password" without locking the account: key logins still work.
        runner.run("image", ["usermod", "--root", tree, "--password", "*", name],
                   log=runner.log_path("image-users"), append=True)
        keys = user["ssh_keys"] or [test_pubkey]
        home = tree / "home" / name
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text("".join(k.strip() + "\n" for k in keys))
        uid, gid = _ids(tree, name)
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, uid, gid)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        if user["sudo"]:
            sudoers.append(f"{name} ALL=(ALL) NOPASSWD:ALL")
    sudo_file = tree / "etc" / "sudoers.d" / "clusteros"
    sudo_file.parent.mkdir(exist_ok=True)
    sudo_file.write_text("# Users from cluster.yaml (image.users). Passwords are disabled: keys only.\n"
                         + "".join(line + "\n" for line in sudoers))
    os.chmod(sudo_file, 0o440)


def _ids(tree: Path, name: str) -> tuple[int, int]:
    for line in (tree / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise KeyError(name)


def write_fstab(tree: Path, ids: disk.DiskIds) -> None:
    esp_uuid = f"{ids.esp_volume[:4]}-{ids.esp_volume[4:]}"
    (tree / "etc" / "fstab").write_text(
        "# <file system>  <mount point>  <type>  <options>  <dump>  <pass>\n"
        f"UUID={ids.root_fs}  /  ext4  defaults,noatime,errors=remount-ro  0  1\n"
        f"UUID={esp_uuid}  /boot/efi  vfat  umask=0077,nofail  0  2\n")
    (tree / "boot" / "efi").mkdir(parents=True, exist_ok=True)


def write_grub_config(tree: Path, ids: disk.DiskIds) -> None:
    grub = tree / "boot" / "grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(disk.grub_config(ids, KERNEL_CMDLINE))


def enable_units(tree: Path) -> None:
    log = runner.log_path("image-units")
    present = [u for u in UNITS_ENABLED + OPTIONAL_UNITS if _unit_exists(tree, u)]
    runner.run("image", ["systemctl", "--root", tree, "enable", *present], log=log)
    disable = [u for u in UNITS_DISABLED if _unit_exists(tree, u)]
    if disable:
        runner.run("image", ["systemctl", "--root", tree, "disable", *disable], log=log, append=True)
    runner.run("image", ["systemctl", "--root", tree, "mask", *UNITS_MASKED], log=log, append=True)


def _unit_exists(tree: Path, unit: str) -> bool:
    return any((tree / d / unit).exists() for d in ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"))


def make_lean(tree: Path) -> None:
    """Leave no caches, logs, host keys or machine identity inside the image."""
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*",
                    "var/log/*.log", "var/log/apt/*", "etc/ssh/ssh_host_*", "tmp/*", "var/tmp/*",
                    "var/cache/debconf/*-old", "var/lib/dpkg/*-old"):
        for path in tree.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "partial":
                path.unlink()
    (tree / "etc" / "machine-id").write_text("")


def clamp_times(tree: Path, epoch: int) -> None:
    """Every file time at or before the epoch, so content alone decides the image."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            if os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(tree, (epoch, epoch))


def installed_packages(tree: Path) -> dict[str, str]:
    """Package -> version, read from dpkg's status file."""
    packages, name, version, installed = {}, None, None, False
    for line in (tree / "var/lib/dpkg/status").read_text(errors="replace").splitlines() + [""]:
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: "):
            version = line.split(": ", 1)[1]
        elif line.startswith("Status: "):
            installed = line.endswith(" installed")
        elif not line:
            if name and version and installed:
                packages[name] = version
            name, version, installed = None, None, False
    return dict(sorted(packages.items()))


# --------------------------------------------------------------------------
# The whole stage


def build_image(*, spec: dict, node_spec: dict, rootfs_tar: Path, agent_pyz: Path, secret: Path,
                test_pubkey: Path, qcow2: Path, manifest: Path, inputs: dict, k3s_binary: Path | None = None) -> None:
    started = time.monotonic()
    image = spec["image"]
    disk_bytes = disk.parse_size(image["disk_size"])
    ids = disk.DiskIds.from_seed(json.dumps(inputs, sort_keys=True))
    epoch = source_epoch()
    work_parent = (paths.dist_dir() / "tmp").resolve()
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="image-", dir=work_parent) as work_name:
        work = Path(work_name)
        tree = work / "root"
        tree.mkdir()
        runner.say("image", f"unpacking {rootfs_tar.name}")
        runner.run("image", ["tar", "--extract", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                             "--file", rootfs_tar, "--directory", tree], log=runner.log_path("image-unpack"))
        runner.say("image", "customizing: overlay, node-agent, spec, users, units")
        add_clusteros_files(tree, image["distro"], node_spec, agent_pyz, secret, k3s_binary)
        set_locale_and_time(tree, image)
        add_users(tree, image["users"], test_pubkey.read_text().strip())
        write_fstab(tree, ids)
        write_grub_config(tree, ids)
        enable_units(tree)
        packages = installed_packages(tree)
        make_lean(tree)
        clamp_times(tree, epoch)

        raw = work / "disk.raw"
        runner.say("image", f"writing a {image['disk_size']} GPT disk: BIOS boot, ESP, ext4 root")
        disk.write_partition_table(raw, ids, disk_bytes)
        disk.make_root_filesystem(raw, tree, ids, disk_bytes, epoch)
        core, efi = disk.build_grub_images(work, ids)
        disk.make_esp(raw, work, ids, efi)
        disk.install_bios_boot(raw, core)
        raw_sha = sha256_file(raw)

        runner.say("image", f"converting to {qcow2.name}")
        with atomic_path(qcow2) as tmp:
            runner.run("image", ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp],
                       log=runner.log_path("image-qcow2"))
            qcow2_sha = sha256_file(tmp)
            qcow2_size = tmp.stat().st_size
            write_json(manifest, {
                "name": spec["cluster"]["name"],
                "distro": image["distro"], "suite": image["suite"], "architecture": image["architecture"],
                "source_date_epoch": epoch,
                "disk": {"size": disk_bytes, "root_fs_uuid": ids.root_fs, "disk_uuid": ids.disk},
                "inputs": inputs,
                "outputs": {"qcow2": {"file": qcow2.name, "sha256": qcow2_sha, "bytes": qcow2_size},
                            "raw": {"file": qcow2.with_suffix(".raw").name, "sha256": raw_sha, "bytes": disk_bytes}},
                "packages": packages,
                "k3s": {"sha256": sha256_file(k3s_binary)} if k3s_binary is not None else None,
            })
    runner.say("image", f"done: {qcow2} ({qcow2_size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f}s")
