"""The test VMs' direct boot: which modules their initramfs loads, in what order, and the unit changes
that keep early boot short."""

import os

from clusteros import customize, vmboot

MODULES_DEP = """kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko
"""


def test_every_module_comes_after_what_it_needs_and_only_once():
    order = vmboot.load_order(MODULES_DEP, vmboot.VM_MODULES)
    assert len(order) == len(set(order))
    for line in MODULES_DEP.splitlines():
        module, _, deps = line.partition(":")
        if module in order:
            assert all(order.index(dep) < order.index(module) for dep in deps.split()), module
    assert "kernel/drivers/scsi/sr_mod.ko" not in order, "nothing a virtio VM does not need"
    assert order.index("kernel/crypto/crc32c_generic.ko") < order.index("kernel/fs/ext4/ext4.ko"), \
        "ext4's soft dependency, which modules.dep does not list"


def test_compressed_modules_are_found_by_their_plain_names_and_come_in_the_same_order():
    zst = "\n".join(line.replace(".ko", ".ko.zst") for line in MODULES_DEP.splitlines()) + "\n"
    plain_order = vmboot.load_order(MODULES_DEP, vmboot.VM_MODULES)
    assert vmboot.load_order(zst, vmboot.VM_MODULES) == [m + ".zst" for m in plain_order]


def test_the_image_stores_its_modules_compressed_and_the_vm_initramfs_gets_them_back_plain(tmp_path):
    kernel = tmp_path / "kernel"
    (kernel / "fs" / "ext4").mkdir(parents=True)
    module = bytes(range(256)) * 64 + b"\x00" * 4096
    (kernel / "fs" / "ext4" / "ext4.ko").write_bytes(module)
    (kernel / "crc.ko.zst").write_bytes(b"left as it is")
    customize.compress_modules(kernel)
    assert sorted(p.name for p in kernel.rglob("*")) == ["crc.ko.zst", "ext4", "ext4.ko.zst", "fs"]
    assert (kernel / "crc.ko.zst").read_bytes() == b"left as it is"
    stored = kernel / "fs" / "ext4" / "ext4.ko.zst"
    assert stored.stat().st_size < len(module) / 4
    vmboot.copy_module(stored, tmp_path / "ext4.ko")
    assert (tmp_path / "ext4.ko").read_bytes() == module


def test_the_command_line_names_the_root_and_leaves_wifi_alone_where_the_spec_has_it():
    plain = vmboot.cmdline("1234", wifi=False)
    assert plain.startswith("root=UUID=1234 ro console=ttyS0") and "cfg80211" in plain
    assert "cfg80211" not in vmboot.cmdline("1234", wifi=True)


VENDOR_RESOLVED = """[Unit]
DefaultDependencies=no
Before=sysinit.target network.target nss-lookup.target shutdown.target initrd-switch-root.target
Wants=nss-lookup.target

[Install]
WantedBy=sysinit.target
Alias=dbus-org.freedesktop.resolve1.service
"""


def test_resolved_no_longer_holds_up_early_boot_but_still_comes_before_name_lookups():
    unit = customize.resolved_after_sysinit(VENDOR_RESOLVED)
    assert "Before=nss-lookup.target shutdown.target initrd-switch-root.target" in unit
    assert "WantedBy=multi-user.target" in unit and "sysinit.target" not in unit.split("\n", 1)[1]
    assert unit.startswith("# ClusterOS:")


DEBIAN_SSHD_PAM_SESSION = """session    optional     pam_keyinit.so force revoke
@include common-session
# Print the message of the day upon successful login.
session    optional     pam_motd.so  motd=/run/motd.dynamic
session    optional     pam_motd.so noupdate
session    optional     pam_mail.so standard noenv # [1]
"""


def test_ssh_logins_no_longer_run_the_dynamic_motd_scripts_and_the_cached_tree_is_untouched(tmp_path):
    cached = tmp_path / "base" / "etc" / "pam.d" / "sshd"
    cached.parent.mkdir(parents=True)
    cached.write_text(DEBIAN_SSHD_PAM_SESSION)
    layered = tmp_path / "layer" / "etc" / "pam.d" / "sshd"
    layered.parent.mkdir(parents=True)
    os.link(cached, layered)   # the image's tree is a hard-link copy of the cached base tree

    customize.drop_dynamic_motd(tmp_path / "layer")

    assert "motd.dynamic" not in layered.read_text()
    assert "pam_motd.so noupdate" in layered.read_text() and "@include common-session" in layered.read_text()
    assert cached.read_text() == DEBIAN_SSHD_PAM_SESSION
    customize.drop_dynamic_motd(tmp_path / "layer")   # again: nothing left to drop, nothing else changes
    assert layered.read_text() == DEBIAN_SSHD_PAM_SESSION.replace(
        "session    optional     pam_motd.so  motd=/run/motd.dynamic\n", "")
