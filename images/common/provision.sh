#!/bin/sh
# Provisioning for image.builder: packer. Packer boots the base image (the
# native build) and runs this over SSH as root. Put site-specific steps in the
# marked section; the rest leaves the disk ready to be copied to many nodes.
set -eu
echo "provision: $(. /etc/os-release; echo "$PRETTY_NAME") for cluster ${CLUSTEROS_CLUSTER:-?}"

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
rm -rf /var/lib/clusteros/wireguard /var/lib/clusteros/known-nodes.json
rm -f /etc/slurm/slurm.conf
printf 'clusteros\n' > /etc/hostname
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
journalctl --rotate >/dev/null 2>&1 && journalctl --vacuum-time=1s >/dev/null 2>&1 || true
rm -f /home/*/.bash_history /root/.bash_history
sync
echo "provision: done"
