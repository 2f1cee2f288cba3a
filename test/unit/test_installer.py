"""Installer logic: the payload's extents, the installer's settings, its boot menus, its drivers."""

import subprocess
from pathlib import Path

import pytest

from clusteros.installer import InstallerError, initramfs, payload, settings

MIB = 1024 * 1024


def sparse_file(path, size, data_at):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in data_at:
            f.seek(offset)
            f.write(b"\xab" * length)
    return path


def test_extents_are_the_data_of_a_sparse_file_with_close_holes_merged(tmp_path):
    raw = sparse_file(tmp_path / "disk.raw", 64 * MIB,
                      [(0, 4096), (512 * 1024, 4096), (10 * MIB, 2 * MIB), (40 * MIB, 4096)])
    extents = payload.install_extents(raw)
    # 0 and 512 KiB are less than 1 MiB apart: one extent, the hole between written as zeros.
    assert extents[0][0] == 0 and extents[0][1] >= 512 * 1024 + 4096
    assert [e[0] for e in extents[1:]] == [10 * MIB, 40 * MIB]
    assert sum(length for _, length in extents) < 4 * MIB, "the holes are left out"


def test_a_file_without_data_has_no_extents(tmp_path):
    assert payload.install_extents(sparse_file(tmp_path / "empty.raw", 8 * MIB, [])) == []


@pytest.mark.needs("zstd", "xxhsum")
def test_payload_packs_the_extents_and_hashes_each(tmp_path):
    import hashlib
    raw = sparse_file(tmp_path / "disk.raw", 32 * MIB, [(0, 4096), (20 * MIB, 8192)])
    payload.build_payload(raw, tmp_path / "data.zst", tmp_path / "payload.json")
    packed = payload.load_payload(tmp_path / "payload.json")
    assert packed.data == tmp_path / "data.zst"
    assert packed.data_sha256 == hashlib.sha256((tmp_path / "data.zst").read_bytes()).hexdigest()
    data = subprocess.run(["zstd", "-dc", str(tmp_path / "data.zst")], capture_output=True, check=True).stdout
    assert len(data) == packed.data_bytes == sum(e.length for e in packed.extents)
    with open(raw, "rb") as f:
        for extent in packed.extents:
            f.seek(extent.offset)
            # as the installer's initramfs checks it: its xxhsum on the bytes read back
            printed = subprocess.run(["xxhsum", "-H1"], input=f.read(extent.length), capture_output=True,
                                     check=True).stdout.split()[0].decode()
            assert printed == extent.xxh64
            assert extent.offset % payload.ALIGN == extent.length % payload.ALIGN == 0, "O_DIRECT can write it"
    assert payload.render_map(packed.extents).splitlines()[0] == f"0 {packed.extents[0].length} {packed.extents[0].xxh64}"


def a_payload(tmp_path: Path):
    (tmp_path / "image.data.zst").write_bytes(b"z" * 3000)
    return payload.Payload(tmp_path / "image.data.zst",
                           (payload.Extent(0, 4096, "a" * 16), payload.Extent(MIB, 8192, "b" * 16)), "c" * 64)


MANIFEST = {"name": "lab", "disk": {"root_fs_uuid": "975bd3d4-28d6-5004-983e-edb4e73eb1e8"},
            "outputs": {"raw": {"bytes": 4 * 2**30, "sha256": "d" * 64}}}


def test_config_follows_the_spec(tmp_path):
    config = settings.installer_config({"unattended": True, "target": "/dev/sdb", "on_done": "poweroff"},
                                        MANIFEST, a_payload(tmp_path))
    assert config["INSTALL"] == "auto" and config["TARGET"] == "/dev/sdb" and config["ON_DONE"] == "poweroff"
    assert config["IMAGE_BYTES"] == str(4 * 2**30) and config["DATA_BYTES"] == str(4096 + 8192)
    assert config["DATA_FILE_BYTES"] == "3000"
    assert config["MEDIUM_ID"] == "clusteros-" + "c" * 16
    asked = settings.installer_config({"unattended": False, "target": "auto", "on_done": "reboot"}, MANIFEST, a_payload(tmp_path))
    assert asked["INSTALL"] == "ask"


def test_config_is_valid_shell_even_for_odd_values(tmp_path):
    config = settings.installer_config({"unattended": False, "target": "auto", "on_done": "reboot"},
                                        {**MANIFEST, "name": "it's $(reboot)"}, a_payload(tmp_path))
    conf = tmp_path / "installer.conf"
    conf.write_text(settings.render_config(config))
    out = subprocess.run(["sh", "-c", '. "$0"; echo "$IMAGE_NAME"', str(conf)], capture_output=True, text=True)
    assert out.stdout == "it's $(reboot)\n"


@pytest.mark.parametrize("unattended", [True, False])
def test_the_boot_menu_starts_with_what_the_spec_asks(unattended, tmp_path):
    config = settings.installer_config({"unattended": unattended, "target": "auto", "on_done": "reboot"},
                                        MANIFEST, a_payload(tmp_path))
    menu = settings.grub_config("lab", config)
    first = menu[menu.index("menuentry"):].splitlines()
    assert ("unattended" in first[0]) == unattended
    assert f"clusteros.install={'auto' if unattended else 'ask'}" in first[1]
    assert "console=tty0 " not in first[1].split("quiet")[0].split("console=ttyS0")[0], "tty0 last: it reads the keyboard"
    assert menu.count("menuentry") == 4 and "clusteros.install=ram" in menu


def test_ipxe_script_loads_relative_to_itself_and_names_the_image(tmp_path):
    config = settings.installer_config({"unattended": True, "target": "auto", "on_done": "reboot"}, MANIFEST, a_payload(tmp_path))
    script = settings.ipxe_script("lab", config)
    assert script.startswith("#!ipxe\n")
    assert "kernel ${boot-url}vmlinuz " in script and "initrd ${boot-url}initrd.img" in script
    assert not [line for line in script.splitlines() if line.startswith("set boot-url")], "unset: iPXE makes it nothing, so both load relative to the script"
    assert "clusteros.image=${image-url}" in script and "tftp://${next-server}/image.data.zst" in script
    assert "clusteros.image=${image-url} BOOTIF=01-${netX/mac:hexhyp}\n" in script, "the installer's DHCP: on the NIC it booted from"


def test_module_closure_brings_dependencies_and_leaves_out_the_rest():
    modules_dep = "\n".join([
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko",
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko",
        "kernel/net/core/failover.ko:",
        "kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko",
        "kernel/drivers/ata/libahci.ko:",
        "kernel/drivers/scsi/lpfc/lpfc.ko: kernel/drivers/scsi/scsi_transport_fc.ko",
        "kernel/sound/core/snd.ko:",
    ])
    assert initramfs.module_closure(modules_dep) == {
        "kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko",
        "kernel/drivers/ata/ahci.ko", "kernel/drivers/ata/libahci.ko"}


def test_ldd_report_gives_each_library_and_the_loader_but_not_the_vdso():
    report = ("\tlinux-vdso.so.1 (0x00007ffd1b5f2000)\n"
              "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f39632f5000)\n"
              "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3963113000)\n"
              "\t/lib64/ld-linux-x86-64.so.2 (0x00007f3963450000)\n")
    assert initramfs.shared_libraries("pigz", report) == [
        Path("/lib/x86_64-linux-gnu/libz.so.1"), Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib64/ld-linux-x86-64.so.2")]
    assert initramfs.shared_libraries("busybox", "\tnot a dynamic executable\n") == []
    with pytest.raises(InstallerError, match="pigz cannot run here: libz.so.1 => not found"):
        initramfs.shared_libraries("pigz", "\tlibz.so.1 => not found\n")


@pytest.mark.needs("zstd", "chroot")
def test_the_inflater_runs_in_a_tree_that_has_nothing_else(tmp_path):
    """zstd and the libraries it loads, alone in a tree (as in the initramfs), inflate a zstd stream."""
    tree = tmp_path / "tree"
    initramfs.add_executable(tree, initramfs.INFLATER)
    data = bytes(range(256)) * 4096
    (tree / "data.zst").write_bytes(subprocess.run(["zstd", "-c"], input=data, capture_output=True, check=True).stdout)
    out = subprocess.run(["chroot", str(tree), "/bin/zstd", "-dcq", "/data.zst"], capture_output=True, check=True)
    assert out.stdout == data
