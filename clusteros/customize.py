"""Offline changes to a root file system tree: nothing is booted and nothing is mounted.

Every function takes the tree's path. Files are always *replaced*, never
rewritten in place (`place_bytes`, `place_file`): a tree may be a hard-link
copy of a cached one, and writing through a shared inode would change the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clusteros import paths, runner
from clusteros_node import identity

AGENT_DIR = "usr/local/lib/clusteros"
UNITS_ENABLED = ["systemd-networkd.service", "systemd-resolved.service", "ssh.service",
                 "clusteros-identity.service", "clusteros-growroot.service", "clusteros-ssh-hostkeys.service"]
# The node-agent starts the SLURM daemon of the node's role, and the storage node's NFS server,
# database and slurmdbd; none starts by itself. Nor does munge: its key is the one the agent
# derives from the credential (a machine without one has no key, and no munge). wpasupplicant's
# own D-Bus supplicant is for desktops: clusteros-wifi@ runs one on the node's WLAN device.
UNITS_DISABLED = ["slurmctld.service", "slurmd.service", "slurmdbd.service", "mariadb.service",
                  "nfs-server.service", "munge.service", "wpa_supplicant.service"]
OPTIONAL_UNITS = ["node-agent.service"]
# Work a headless cluster node never needs, that costs it boot time, or reaches for the internet on its own.
UNITS_MASKED = ["e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
                "dpkg-db-backup.timer", "fstrim.timer", "getty@tty1.service", "systemd-pstore.service",
                "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
                "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
                "modprobe@drm.service", "modprobe@dm_mod.service",
                # NFSv4 needs no portmapper and no lock daemon (nfs.conf.d/clusteros.conf).
                "rpcbind.service", "rpcbind.socket", "rpc-statd.service", "rpc-statd-notify.service",
                # pNFS block layouts (a SAN's shared disks): the shared home is plain NFSv4.
                "nfs-blkmap.service",
                # Loaded and mounted at every boot for what a node never does there (disk images
                # by loop device, FUSE's control files, configfs targets, kernel debugging, huge
                # pages): 16 more devices for udev, 8 of them each running nfsrahead. Loop and
                # FUSE devices still load their modules when first opened.
                "modprobe@loop.service", "systemd-repart.service", "modprobe@fuse.service",
                "sys-fs-fuse-connections.mount", "modprobe@configfs.service", "sys-kernel-config.mount",
                "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount"]
# Generators for setups a node never has (encrypted or verity disks, hibernation, SysV scripts): each
# runs at every boot, and under emulation each costs a fraction of a second.
GENERATORS_MASKED = ["systemd-cryptsetup-generator", "systemd-integritysetup-generator",
                     "systemd-veritysetup-generator", "systemd-gpt-auto-generator",
                     "systemd-hibernate-resume-generator", "systemd-debug-generator", "systemd-run-generator",
                     "systemd-rc-local-generator", "systemd-sysv-generator", "systemd-system-update-generator"]
# Kernel drivers a cluster node has no use for (sound, cameras and TV cards, industrial I/O and
# measurement cards, ISDN, and staging drivers): 82 of the kernel's 397 MB, so less to write,
# read back and verify at every install. Storage, network, GPU and InfiniBand drivers all stay.
MODULES_PRUNED = ("sound", "drivers/media", "drivers/staging", "drivers/comedi", "drivers/isdn", "drivers/iio")
# The drivers that stay are stored zstd-compressed, as Ubuntu ships its own: the image's kmod
# reads .ko.zst (the kernel is handed the same bytes), and the 314 MB left become 83 MB.
# The munge key is the one munge's postinst made in the build: a secret every machine made from
# the image, and everyone holding the image, would share.
LEAN_PATTERNS = ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*.log",
                 "var/log/apt/*", "etc/ssh/ssh_host_*", "etc/munge/munge.key", "tmp/*", "var/tmp/*",
                 "var/cache/debconf/*-old", "var/lib/dpkg/*-old")


# --------------------------------------------------------------------------
# Writing into a tree that may share inodes with a cache


def place_bytes(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `target` as a new inode (an existing file is unlinked first, never truncated)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(target, mode)


def place_file(source: Path, target: Path, mode: int | None = None) -> None:
    """Copy `source` to `target` as a new inode, keeping the source's mode unless one is given."""
    if source.is_symlink():
        if target.is_symlink() or target.exists():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.readlink(source))
        return
    place_bytes(target, source.read_bytes(), mode if mode is not None else source.stat().st_mode & 0o7777)


def place_tree(source: Path, tree: Path) -> list[str]:
    """Every file under `source` into the same place under `tree`; returns their tree paths."""
    placed = []
    for path in sorted(source.rglob("*")):
        target = tree / path.relative_to(source)
        if path.is_dir() and not path.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
            continue
        place_file(path, target)
        placed.append(str(target.relative_to(tree)))
    return placed


# --------------------------------------------------------------------------
# What makes a Debian or Ubuntu system a ClusterOS node


def overlay_dirs(distro: str) -> list[Path]:
    """Overlay trees, applied in order: common first, then the distro's own."""
    return [d for d in (paths.IMAGES_DIR / "common" / "overlay", paths.IMAGES_DIR / distro / "overlay") if d.is_dir()]


def overlay_files(distro: str) -> list[Path]:
    return sorted(p for d in overlay_dirs(distro) for p in d.rglob("*") if p.is_file() or p.is_symlink())


def apply_overlay(tree: Path, distro: str) -> None:
    for source in overlay_dirs(distro):
        place_tree(source, tree)


def install_agent(tree: Path, agent_pyz: Path, *, compile_agent: bool = True) -> None:
    """The node-agent, unpacked from its zipapp and compiled by the image's own Python.

    zipimport compiles every module at every start (it writes no bytecode): under
    emulation that costs a node tens of seconds of boot. Unpacked with bytecode
    made here, the agent starts at once. The bytecode is checked by hash, not
    time, so the image stays reproducible.
    """
    target = tree / AGENT_DIR / "node-agent"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with zipfile.ZipFile(agent_pyz) as archive:
        archive.extractall(target)
    if not compile_agent:
        return
    runner.run("image", ["chroot", tree, "/usr/bin/python3", "-m", "compileall", "-q", "-j", "0",
                         "--invalidation-mode", "checked-hash", f"/{AGENT_DIR}/node-agent"],
               log=runner.log_path("image-agent"), timeout=300)


def install_node_spec(tree: Path, node_spec: dict) -> None:
    """The node's spec, and what clusteros-identity copies into place at boot, by MAC."""
    etc = tree / "etc" / "clusteros"
    etc.mkdir(parents=True, exist_ok=True)
    os.chmod(etc, 0o755)
    place_bytes(etc / "spec.json", (json.dumps(node_spec, indent=2, sort_keys=True) + "\n").encode())
    table = etc / "identities"
    if table.exists():
        shutil.rmtree(table)
    for row, files in identity.identity_files(node_spec).items():
        for name, text in files.items():
            place_bytes(table / row / name, text.encode())


def install_owner_key(tree: Path, owner_pubkey: Path) -> None:
    """The owner's public key: what a node checks a credential's signature against. Not a secret."""
    place_bytes(tree / "etc" / "clusteros" / "owner.pub", owner_pubkey.read_bytes())


def configure_mpi(tree: Path, node_spec: dict, architecture: str) -> None:
    """Open MPI over the network the spec chose, and PMIx where Slurm looks for it.

    Open MPI's TCP transport takes the first interfaces that route, and a node has
    two (the LAN, wg0): it is pinned to the chosen one's subnet. Slurm's PMIx plugin
    opens the unversioned libpmix.so, which only the -dev package ships: a link to the
    library itself does, without compilers and headers.
    """
    net = node_spec["services"]["slurm"]["mpi_network"]
    subnet = node_spec["network"]["wireguard" if net == "wg0" else "lan"]["subnet"]
    place_bytes(tree / "etc" / "openmpi" / "openmpi-mca-params.conf", MPI_PARAMS.format(net=net, subnet=subnet).encode())
    triplet = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[architecture]
    link = tree / "usr" / "lib" / triplet / "pmix2" / "lib" / "libpmix.so"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to("libpmix.so.2")


MPI_PARAMS = """# Written by ClusterOS at image build: services.slurm.mpi_network is {net}.
# Debian's own defaults: no UCX, OpenFabrics or libfabric on a cluster of Ethernet nodes.
btl_base_warn_component_unused = 0
mtl = ^ofi
osc = ^ucx,pt2pt
# Shared memory within a node, TCP between nodes, on {net} only.
pml = ob1
btl = self,vader,tcp
btl_tcp_if_include = {subnet}
oob_tcp_if_include = {subnet}
"""


def install_k3s(tree: Path, binary: Path) -> None:
    place_file(binary, tree / "usr" / "local" / "bin" / "k3s", 0o755)


def set_locale_and_time(tree: Path, image: dict) -> None:
    localtime = tree / "etc" / "localtime"
    if localtime.is_symlink() or localtime.exists():
        localtime.unlink()
    localtime.symlink_to(f"/usr/share/zoneinfo/{image['timezone']}")
    place_bytes(tree / "etc" / "timezone", f"{image['timezone']}\n".encode())
    place_bytes(tree / "etc" / "default" / "locale", f"LANG={image['locale']}\n".encode())
    place_bytes(tree / "etc" / "hostname", b"clusteros\n")


def add_users(tree: Path, users: list[dict]) -> None:
    """Each user with sudo and key login; no password. A user the spec gives no key has none in the
    image: the credential brings one (the generated test key), for the machines it reaches."""
    log = runner.log_path("image-users")
    log.unlink(missing_ok=True)
    sudoers = []
    for user in users:
        name = user["name"]
        runner.run("image", ["useradd", "--root", tree, "--create-home", "--shell", user["shell"],
                             "--user-group", name], log=log, append=True)
        # '*' is "no password" without locking the account: key logins still work.
        runner.run("image", ["usermod", "--root", tree, "--password", "*", name], log=log, append=True)
        _authorize(tree, name, user["ssh_keys"])
        if user["sudo"]:
            sudoers.append(f"{name} ALL=(ALL) NOPASSWD:ALL\n")
    place_bytes(tree / "etc" / "sudoers.d" / "clusteros",
                ("# Users from cluster.yaml (image.users). Passwords are disabled: keys only.\n"
                 + "".join(sudoers)).encode(), 0o440)


def _authorize(tree: Path, name: str, keys: list[str]) -> None:
    ssh_dir = tree / "home" / name / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    place_bytes(ssh_dir / "authorized_keys", "".join(k.strip() + "\n" for k in keys).encode(), 0o600)
    uid, gid = user_ids(tree, name)
    for path in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, uid, gid)


def user_ids(tree: Path, name: str) -> tuple[int, int]:
    for line in (tree / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise LookupError(f"user {name!r} is not in {tree}/etc/passwd")   # useradd just made it: a bug


def resolved_after_sysinit(unit: str) -> str:
    """systemd-resolved's unit, not holding up boot: not before sysinit.target or network.target.

    Debian starts resolved before both, so everything (SSH included) waits for its start, five
    seconds under emulation. Nothing on a node resolves names that early; programs that do order
    themselves after nss-lookup.target, which resolved still comes before.
    """
    lines = []
    for line in unit.splitlines():
        if line.startswith("Before="):
            kept = [u for u in line.removeprefix("Before=").split() if u not in ("sysinit.target", "network.target")]
            line = "Before=" + " ".join(kept)
        elif line == "WantedBy=sysinit.target":
            line = "WantedBy=multi-user.target"
        lines.append(line)
    return ("# ClusterOS: Debian's unit, no longer before sysinit.target and network.target "
            "(clusteros/customize.py).\n" + "\n".join(lines) + "\n")


def override_resolved(tree: Path) -> None:
    vendor = tree / "lib" / "systemd" / "system" / "systemd-resolved.service"
    if not vendor.exists():
        return
    place_bytes(tree / "etc" / "systemd" / "system" / vendor.name, resolved_after_sysinit(vendor.read_text()).encode())
    (tree / "etc" / "systemd" / "system" / "sysinit.target.wants" / vendor.name).unlink(missing_ok=True)


def set_units(tree: Path) -> None:
    override_resolved(tree)
    log = runner.log_path("image-units")
    present = [u for u in UNITS_ENABLED + OPTIONAL_UNITS if unit_exists(tree, u)]
    runner.run("image", ["systemctl", "--root", tree, "enable", *present], log=log)
    if disable := [u for u in UNITS_DISABLED if unit_exists(tree, u)]:
        runner.run("image", ["systemctl", "--root", tree, "disable", *disable], log=log, append=True)
    runner.run("image", ["systemctl", "--root", tree, "mask", *UNITS_MASKED], log=log, append=True)
    runner.run("image", ["systemctl", "--root", tree, "set-default", "multi-user.target"], log=log, append=True)
    for generator in GENERATORS_MASKED:
        link = tree / "etc" / "systemd" / "system-generators" / generator
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to("/dev/null")


# Debian's and Ubuntu's sshd PAM stack runs /etc/update-motd.d at every SSH connection for a
# dynamic MOTD (Debian's: one uname; Ubuntu's: a dozen scripts): a third of an emulated node's
# CPU for a connection, and the tests connect hundreds of times. The static /etc/motd still shows.
DYNAMIC_MOTD = re.compile(r"^session\s+optional\s+pam_motd\.so\s+motd=/run/motd\.dynamic.*\n", re.MULTILINE)


def drop_dynamic_motd(tree: Path) -> None:
    pam = tree / "etc" / "pam.d" / "sshd"
    text = pam.read_text()
    if DYNAMIC_MOTD.search(text):
        place_bytes(pam, DYNAMIC_MOTD.sub("", text).encode())


def unit_exists(tree: Path, unit: str) -> bool:
    return any((tree / d / unit).exists() for d in ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"))


def make_lean(tree: Path) -> None:
    """Leave no caches, logs, host keys, munge key or machine identity inside the image."""
    for pattern in LEAN_PATTERNS:
        for path in tree.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "partial":
                path.unlink()
    place_bytes(tree / "etc" / "machine-id", b"", 0o444)


def mark_updated(tree: Path, epoch: int) -> None:
    """Tell systemd that /etc and /var are up to date with /usr (systemd-update-done's stamps).

    Without them every first boot of every node runs the ConditionNeedsUpdate= units
    (sysusers, hwdb, ldconfig, the journal catalog): work the image build has done.
    """
    for stamp in (tree / "etc" / ".updated", tree / "var" / ".updated"):
        place_bytes(stamp, f"# Written by ClusterOS's image build, as systemd-update-done would.\n"
                           f"TIMESTAMP_NSEC={epoch * 10**9}\n".encode())
        os.utime(stamp, (epoch, epoch))


def prune_modules(tree: Path) -> None:
    """Leave out MODULES_PRUNED, compress what stays, and have the image's own depmod index it."""
    for version in sorted(p.name for p in (tree / "usr" / "lib" / "modules").iterdir()):
        kernel = tree / "usr" / "lib" / "modules" / version / "kernel"
        for folder in MODULES_PRUNED:
            shutil.rmtree(kernel / folder, ignore_errors=True)
        compress_modules(kernel)
        runner.run("image", ["chroot", tree, "/sbin/depmod", version], log=runner.log_path("image-depmod"), timeout=300)


def compress_modules(folder: Path) -> None:
    """Every plain .ko under `folder` replaced by its .ko.zst (those already compressed are left)."""
    plain = sorted(str(p) for p in folder.rglob("*.ko"))
    jobs = max(1, min(os.cpu_count() or 1, 8))
    batches = [batch for batch in (plain[i::jobs] for i in range(jobs)) if batch]

    def compress(numbered: tuple[int, list[str]]) -> None:
        number, batch = numbered
        runner.run("image", ["zstd", "--quiet", "--rm", "-3", "--", *batch],
                   log=runner.log_path(f"image-modules-{number}"), timeout=600)
    with ThreadPoolExecutor(jobs) as pool:   # zstd takes its files one at a time: a process per core
        list(pool.map(compress, enumerate(batches)))


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
