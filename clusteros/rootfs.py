"""The root file system: mmdebstrap, cached by a key of exactly its inputs.

The tar lands in <cache>/rootfs/rootfs-<key>.tar, shared by every checkout, and
the downloaded .debs in <cache>/apt-archives so a rebuild after a package-list
change downloads only what is new.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clusteros import paths, runner
from clusteros.atomic import atomic_path

# Bump when the way the tree is made changes (hooks, dpkg filters), so caches
# built the old way are not reused.
RECIPE_VERSION = 2

KEYRINGS = {
    "debian": "/usr/share/keyrings/debian-archive-keyring.gpg",
    "ubuntu": "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
}
COMPONENTS = {"debian": ["main"], "ubuntu": ["main", "universe"]}
# image.firmware: Debian splits non-free firmware by vendor into its non-free-firmware component
# (bookworm on); Ubuntu ships it all as linux-firmware, in main.
FIRMWARE_COMPONENT = {"debian": "non-free-firmware"}
FIRMWARE_PACKAGES = {"debian": lambda name: f"firmware-{name}", "ubuntu": lambda name: "linux-firmware"}

# Documentation, man pages and translations never reach the image. These filters
# also stay in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap) so later installs stay lean.
DPKG_FILTERS = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
]


def initramfs_config_dir() -> Path:
    """images/common/initramfs: how the image's own initramfs is made (/etc/initramfs-tools)."""
    return paths.IMAGES_DIR / "common" / "initramfs"


def initramfs_config_files() -> list[Path]:
    return sorted(p for p in initramfs_config_dir().rglob("*") if p.is_file())


def package_list_file(distro: str) -> Path:
    return paths.IMAGES_DIR / distro / "packages"


def read_package_list(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def packages(view: dict) -> list[str]:
    """Base set for the distro plus the spec's extra packages and firmware, sorted, without repeats."""
    base = read_package_list(package_list_file(view["distro"]))
    firmware = {FIRMWARE_PACKAGES[view["distro"]](name) for name in view.get("firmware", [])}
    return sorted(set(base) | set(view["packages"]) | firmware)


def components(view: dict) -> list[str]:
    """The archive's components: the distro's own, and non-free firmware when the spec asks for some."""
    extra = FIRMWARE_COMPONENT.get(view["distro"]) if view.get("firmware") else None
    return COMPONENTS[view["distro"]] + ([extra] if extra else [])


def cache_key(view: dict) -> str:
    """Hash of everything that shapes the tree: distro, suite, mirror, arch, packages, recipe,
    the initramfs's configuration."""
    material = {
        "recipe": RECIPE_VERSION,
        "distro": view["distro"],
        "suite": view["suite"],
        "mirror": view["mirror"],
        "architecture": view["architecture"],
        "packages": packages(view),
        "initramfs": {str(p.relative_to(initramfs_config_dir())): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in initramfs_config_files()},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_path(view: dict) -> Path:
    return paths.cache_dir() / "rootfs" / f"rootfs-{view['distro']}-{view['suite']}-{cache_key(view)}.tar"


def archive_cache() -> Path:
    return paths.cache_dir() / "apt-archives"


def mmdebstrap_command(view: dict, output: Path, apt_cache: Path) -> list[str]:
    distro = view["distro"]
    argv = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--format=tar",
        f"--architectures={view['architecture']}",
        f"--components={','.join(components(view))}",
        f"--keyring={KEYRINGS[distro]}",
        f"--include={','.join(packages(view))}",
        # The .debs are kept outside the tree and fed back in on the next build.
        "--skip=essential/unlink",
        f"--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/ {apt_cache}",
        f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/",
        # Before the kernel's package makes the first initramfs, so that it is made our way.
        *(f"--essential-hook=install -D -m {p.stat().st_mode & 0o777:o} {p} "
          f"\"$1\"/etc/initramfs-tools/{p.relative_to(initramfs_config_dir())}" for p in initramfs_config_files()),
        f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}",
        # An empty machine-id makes every node generate its own at first boot.
        "--customize-hook=truncate -s 0 \"$1\"/etc/machine-id",
        "--customize-hook=rm -f \"$1\"/var/lib/dbus/machine-id \"$1\"/initrd.img.old \"$1\"/vmlinuz.old",
    ]
    argv += [f"--dpkgopt={rule}" for rule in DPKG_FILTERS]
    argv += [view["suite"], str(output), view["mirror"]]
    return argv


def _progress(line: str) -> str | None:
    # mmdebstrap's own "I:" lines say which phase it is in; dpkg's chatter is for the log.
    return line if line.startswith(("I: ", "W: ", "E: ")) else None


def build_rootfs(view: dict, target: Path) -> None:
    """Build the root file system tar at `target` (written atomically)."""
    apt_cache = archive_cache()
    apt_cache.mkdir(parents=True, exist_ok=True)
    with runner.step("rootfs", f"mmdebstrap {view['distro']} {view['suite']} from {view['mirror']}, "
                               f"{len(packages(view))} packages"), atomic_path(target) as tmp:
        # A mirror that stops answering must not hang the build forever.
        runner.run("rootfs", mmdebstrap_command(view, tmp, apt_cache), show=_progress, timeout=3600)
    runner.say("rootfs", f"{target}: {target.stat().st_size / 2**20:.0f} MiB")
