#!/usr/bin/env bash
# Install everything ClusterOS needs on Debian 12+ or Ubuntu 22.04+, as root:
# the external tools (apt) and the Python package with its test tools (.venv).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log=dist/logs/install-prereqs.log
mkdir -p "$(dirname "$log")"

packages=(
    python3 python3-venv python3-pip          # the tool itself
    mmdebstrap debian-archive-keyring         # rootfs
    qemu-utils e2fsprogs dosfstools mtools fdisk grub-common grub-pc-bin grub-efi-amd64-bin passwd
    pigz zstd openssh-client ca-certificates  # image (zstd: its kernel modules), gz, keys
    qemu-system-x86 vde2 seabios ovmf         # test_vm
    packer                                    # image.builder: packer
    xorriso cpio busybox-static ipxe-qemu     # iso, usb, pxe (and booting them in tests)
    xxhash                                    # the installers read the disk back with xxhsum
    ipxe dnsmasq-base                         # the PXE set's iPXE chain-loaders; the serve-pxe tests
    shellcheck                                # the tests lint every shell script
    nftables                                  # the tests check the node firewall's ruleset
)
# Ubuntu's archive keyring lets a host build Ubuntu images (image.distro: ubuntu).
# Debian 12's archive does not carry it; `clusteros doctor` says so when it is needed.
if apt-cache policy ubuntu-keyring 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    packages+=(ubuntu-keyring)
fi

# QEMU from bookworm-backports on Debian 12 (10.0 there, 7.2 in bookworm itself): its TCG runs
# the same guest on less host CPU (a node booted to `srun`, 2026-11-28: 42 CPU-seconds against 46,
# 11 against 16 for a minute idle), and without KVM the test cluster is nearly all emulation.
# Ubuntu 24.04 has 8.2 in its own archive.
QEMU_PACKAGES=(qemu-system-x86 qemu-utils)
BACKPORTS=""
# shellcheck source=/dev/null  # the running system's; read in a subshell
release=$( (. /etc/os-release && echo "${ID:-}:${VERSION_CODENAME:-}") 2>/dev/null || true)
if [ "$release" = debian:bookworm ]; then
    BACKPORTS=bookworm-backports
    for q in "${QEMU_PACKAGES[@]}"; do
        for i in "${!packages[@]}"; do
            if [ "${packages[$i]}" = "$q" ]; then unset 'packages[i]'; fi
        done
    done
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-prereqs: run as root (apt-get install, and image builds need root)" >&2
    exit 2
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# QEMU 8 or later: from backports where the release's own is older (see BACKPORTS above).
stale=()
if [ -n "$BACKPORTS" ]; then
    for q in "${QEMU_PACKAGES[@]}"; do
        version=$(dpkg-query -W -f='${Version}' "$q" 2>/dev/null || true)
        if [ -z "$version" ] || dpkg --compare-versions "$version" lt 1:8; then stale+=("$q"); fi
    done
    if [ ${#stale[@]} -gt 0 ] && ! grep -rqs "$BACKPORTS" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
            "$BACKPORTS" /usr/share/keyrings/debian-archive-keyring.gpg > /etc/apt/sources.list.d/clusteros-backports.sources
    fi
fi

# apt-get, its output to the log; on failure the log's last lines, and exit 1.
apt_get() {
    if ! DEBIAN_FRONTEND=noninteractive apt-get "$@" >>"$log" 2>&1; then
        echo "install-prereqs: apt-get failed; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

if [ ${#missing[@]} -gt 0 ] || [ ${#stale[@]} -gt 0 ]; then
    apt_get update
else
    echo "install-prereqs: system packages already installed"
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-prereqs: apt-get install ${missing[*]} (log: $log)"
    apt_get install -y --no-install-recommends "${missing[@]}"
fi
if [ ${#stale[@]} -gt 0 ]; then
    echo "install-prereqs: apt-get install -t $BACKPORTS ${stale[*]} (log: $log)"
    apt_get install -y --no-install-recommends -t "$BACKPORTS" "${stale[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "install-prereqs: creating .venv"
    python3 -m venv .venv
fi
echo "install-prereqs: pip install -e .[dev] into .venv (log: $log)"
if ! .venv/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]' >>"$log" 2>&1; then
    echo "install-prereqs: pip failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
echo "install-prereqs: done. Use .venv/bin/doit and .venv/bin/clusteros (or: . .venv/bin/activate)"
