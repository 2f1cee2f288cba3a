"""The root file system's mmdebstrap command and cache key, for both distros (nothing is downloaded)."""

from pathlib import Path

import pytest

from clusteros import rootfs
from clusteros.spec import check_spec_data, rootfs_view

ROOT = Path(__file__).resolve().parents[2]


def view(text: str) -> dict:
    return rootfs_view(check_spec_data(f"cluster: {{name: lab}}\n{text}".encode(), "t", ROOT))


@pytest.mark.parametrize("distro,suite,mirror,keyring,components,kernel", [
    ("debian", "bookworm", "http://deb.debian.org/debian", "debian-archive-keyring.gpg", "main", "linux-image-amd64"),
    ("ubuntu", "noble", "http://archive.ubuntu.com/ubuntu", "ubuntu-archive-keyring.gpg", "main,universe",
     "linux-image-generic"),
])
def test_the_command_names_the_distros_archive_keyring_and_packages(distro, suite, mirror, keyring, components,
                                                                    kernel, tmp_path):
    v = view(f"image: {{distro: {distro}, packages: [htop]}}\n")
    argv = rootfs.mmdebstrap_command(v, tmp_path / "out.tar", tmp_path / "debs")
    assert argv[0] == "mmdebstrap" and argv[-3:] == [suite, str(tmp_path / "out.tar"), mirror]
    assert f"--keyring=/usr/share/keyrings/{keyring}" in argv
    assert f"--components={components}" in argv and "--architectures=amd64" in argv
    included = next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(",")
    assert {"htop", kernel, "systemd", "openssh-server", "wireguard-tools", "slurmd"} <= set(included)
    assert included == sorted(set(included)), "sorted and without repeats"
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in argv
    assert f"--setup-hook=sync-in {tmp_path / 'debs'} /var/cache/apt/archives/" in argv


def test_the_cache_key_is_the_inputs_and_nothing_else():
    base = view("")
    assert rootfs.cache_key(base) == rootfs.cache_key(view("vm: {memory: 4096}\n"))
    assert rootfs.cache_key(base) != rootfs.cache_key(view("image: {packages: [htop]}\n"))
    assert rootfs.cache_key(base) != rootfs.cache_key(view("image: {mirror: 'http://mirror.example/debian'}\n"))
    assert rootfs.rootfs_path(base).name == f"rootfs-debian-bookworm-{rootfs.cache_key(base)}.tar"


@pytest.mark.parametrize("distro,components,wanted", [
    ("debian", "main,non-free-firmware", {"firmware-realtek", "firmware-iwlwifi"}),
    ("ubuntu", "main,universe", {"linux-firmware"}),
])
def test_firmware_asked_for_brings_its_packages_and_component(distro, components, wanted, tmp_path):
    v = view(f"image: {{distro: {distro}, firmware: [realtek, iwlwifi]}}\n")
    argv = rootfs.mmdebstrap_command(v, tmp_path / "out.tar", tmp_path / "debs")
    assert f"--components={components}" in argv
    included = set(next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(","))
    assert wanted <= included
    free = view(f"image: {{distro: {distro}}}\n")
    assert not {p for p in rootfs.packages(free) if p.startswith(("firmware-", "linux-firmware"))}, "none by default"
    assert rootfs.cache_key(free) != rootfs.cache_key(v)


def test_the_initramfs_is_configured_before_the_kernel_makes_it_and_its_configuration_is_in_the_key(tmp_path,
                                                                                                  monkeypatch):
    v = view("")
    argv = rootfs.mmdebstrap_command(v, tmp_path / "out.tar", tmp_path / "debs")
    hook = rootfs.initramfs_config_dir() / "hooks" / "clusteros-modules"
    assert f'--essential-hook=install -D -m 755 {hook} "$1"/etc/initramfs-tools/hooks/clusteros-modules' in argv
    conf = rootfs.initramfs_config_dir() / "conf.d" / "clusteros.conf"
    assert f'--essential-hook=install -D -m 644 {conf} "$1"/etc/initramfs-tools/conf.d/clusteros.conf' in argv
    assert "zstd" in rootfs.packages(v), "COMPRESS=zstd needs the zstd program in the tree"

    import shutil
    copy = tmp_path / "initramfs"
    shutil.copytree(rootfs.initramfs_config_dir(), copy)
    monkeypatch.setattr(rootfs, "initramfs_config_dir", lambda: copy)
    before = rootfs.cache_key(v)
    with open(copy / "conf.d" / "clusteros.conf", "a") as f:
        f.write("COMPRESSLEVEL=19\n")
    assert rootfs.cache_key(v) != before, "a changed initramfs configuration is a new root file system"
