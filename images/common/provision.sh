#!/bin/sh
# Provisioning for image.builder: packer. Packer boots the base and runs this
# over SSH as root. Put site-specific steps in the marked section; the rest
# leaves the disk ready to be copied to many nodes.
#
# CLUSTEROS_BASE=native: the base is the native build, already a ClusterOS node.
# CLUSTEROS_BASE=iso: a fresh Ubuntu install (its packages came with autoinstall);
#   Packer uploaded the ClusterOS files to /tmp/clusteros-node-files.tar, and the
#   CLUSTEROS_UNITS_* lists say which units to enable, disable and mask.
set -eu
# shellcheck source=/dev/null
echo "provision: $(. /etc/os-release; echo "$PRETTY_NAME") for cluster ${CLUSTEROS_CLUSTER:-?}," \
     "base ${CLUSTEROS_BASE:-native}"

if [ "${CLUSTEROS_BASE:-native}" = iso ]; then
    # --no-overwrite-dir: /etc, /usr keep their own owners and modes.
    tar --extract --no-overwrite-dir --preserve-permissions --file /tmp/clusteros-node-files.tar --directory /
    rm -f /tmp/clusteros-node-files.tar
    # The node-agent's bytecode, made by this system's own Python (it starts at once at every boot).
    python3 -m compileall -q --invalidation-mode checked-hash /usr/local/lib/clusteros/node-agent
    # Booted (Packer's VM): systemd must see the new units. In a chroot there is no manager to tell.
    if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
    for unit in $CLUSTEROS_UNITS_ENABLE; do
        for dir in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
            if [ -e "$dir/$unit" ]; then systemctl enable "$unit"; break; fi
        done
    done
    for unit in $CLUSTEROS_UNITS_DISABLE; do systemctl disable "$unit" 2>/dev/null || true; done
    # shellcheck disable=SC2086  # one word per unit
    systemctl mask $CLUSTEROS_UNITS_MASK
    # cloud-init set the installer's network and hostname; the node's come from the spec now.
    mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
    # No dynamic MOTD at every SSH connection (customize.drop_dynamic_motd says why).
    sed -i '/^session[[:space:]]*optional[[:space:]]*pam_motd.so[[:space:]]*motd=\/run\/motd.dynamic/d' /etc/pam.d/sshd
    rm -f /etc/netplan/*.yaml
fi

# The agent must not form a one-node cluster, or write keys, while we work.
systemctl stop node-agent.service slurmd.service slurmctld.service 2>/dev/null || true
systemctl is-system-running --wait >/dev/null 2>&1 || true

# ---- site-specific steps go here (packages, files, users) ------------------
# Example: apt-get update && apt-get install -y --no-install-recommends htop
# ---------------------------------------------------------------------------

# Record how this image was made.
printf 'builder=packer\nprovisioned=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > /etc/clusteros/build-info

# Generalize: every node made from this disk must make its own identity at first boot.
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id
: > /etc/machine-id
rm -rf /var/lib/clusteros     # keys, members, any credential: each node makes or is given its own
rm -f /etc/chrony/sources.d/clusteros.sources /etc/munge/munge.key
rm -f /etc/slurm/slurm.conf
printf 'clusteros\n' > /etc/hostname
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
if journalctl --rotate >/dev/null 2>&1; then journalctl --vacuum-time=1s >/dev/null 2>&1 || true; fi
rm -f /home/*/.bash_history /root/.bash_history
sync
echo "provision: done"
