"""The installers, booted in QEMU as a user would boot them.

Three machines install at once, each onto an empty virtual disk that the
firmware tries first (so a machine boots the installer only while its disk is
empty, as a fleet does): the ISO as a CD under BIOS, the USB image as a USB
stick under UEFI, and PXE under BIOS with iPXE: its boot script from QEMU's built-in TFTP, then
the kernel, initrd and image over HTTP from this host, as `clusteros-node serve-pxe` serves
them (its own rewrite of boot.ipxe). The image over QEMU's TFTP, one 1428-byte block per round
trip through its user network, cost about 45 CPU-seconds of emulation; the installer's TFTP
fetch, boot.ipxe's default for a set served by plain dnsmasq, is tested against dnsmasq in
test_serve_pxe_lan.py.
Each machine must reboot from its disk into the node image (these are the image's
BIOS and UEFI boots: the raw disk as it lands on hardware). The stick's machine (UEFI)
answers SSH, and the smoke checks of a booted node run on it. The ISO's machine
(SeaBIOS) boots until its console says sshd listens, with its name and host key,
and is stopped: its name and key are held against the stick's machine's, two
machines installed from one image. The PXE machine boots its disk (SeaBIOS, the
disk's GRUB, the image's kernel and initramfs mounting its root from virtio) and is
stopped once the root is mounted. Every installed system kept running costs the
suite its agent forming a cluster of one (slurmctld, K3s) and the checks' commands
under emulation, while the cluster's tests wait for the CPU: the ISO's machine, run
on to the checks, took 224 CPU-seconds of the host against 154 now (back-to-back
suites, 2026-11-29). Two
refusals must leave every disk untouched: the asking installer (booted from
its kernel and initrd) answered with Enter, and the ISO as a CD under UEFI
with two empty disks. A machine netbooted from a running node (dnsmasq, not
QEMU's TFTP) that runs the image from RAM: test_cluster_trust.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from clusteros import accel, credentials, secrets, wifi
from clusteros.cli import main as clusteros
from clusteros.spec import load_spec
from clusteros.vm import ports, qemu
from clusteros.vm.machine import Machine
from clusteros.vm.node import SSH_READY as READY_PREFIX, Node, retry
from clusteros.vm.ssh import SSHTarget

from clusteros_node import k3s, messages, pxeserve, slurm

from ..local_http import serve_directory
from ..secret_scan import Needles, scan
from .conftest import DIST, ROOT, behind_the_cluster, build, relocatable, untouched

pytestmark = pytest.mark.e2e

INSTALL_TIMEOUT = 375    # with KVM; scaled under TCG
SSH_BASE_PORT = 2290
ACCEL = accel.choose("auto")
# A dist of their own, built from the same sources on the unattended spec: the cluster's test
# worker builds dist/e2e on the e2e spec at the same time (and its stranger's PXE set there).
BUILT = DIST / "installers"
MACHINES = BUILT / "vm-installers"


@dataclass
class Install:
    medium: str
    node: Node
    disk: Path


def handle(machine: Machine, spec: dict, port: int | None = None) -> Node:
    """A node handle on a test machine (its SSH forward, if it has one, on 127.0.0.1:`port`)."""
    return Node(machine.name, machine, SSHTarget(port or 0, "admin", secrets.test_key_path(spec)),
                scale=ACCEL.scale(1.0))


@pytest.fixture(scope="module")
def unattended_spec(tmp_path_factory) -> Path:
    """The e2e spec, but unattended: what a fleet operator sets."""
    text = relocatable(Path(os.environ["CLUSTEROS_SPEC"]).read_text())
    assert "  unattended: false\n" in text
    path = tmp_path_factory.mktemp("spec") / "cluster.yaml"
    path.write_text(text.replace("  unattended: false\n", "  unattended: true\n"))
    return path


@pytest.fixture(scope="module", autouse=True)
def installers_dist():
    """The dist `clusteros` finds here, run in this process as a user runs it after `doit usb`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLUSTEROS_DIST", str(BUILT.relative_to(ROOT)))
        yield BUILT


@pytest.fixture(scope="module")
def built(unattended_spec) -> Path:
    """The installers' dist: the image, the ISO, the USB image and the PXE set (and so the
    cluster's keys, made by the first build on a fresh machine)."""
    build("iso", "usb", "pxe", "gz", env={"CLUSTEROS_SPEC": str(unattended_spec)}, behind=True)   # gz: the secret scan reads it
    return BUILT


@pytest.fixture(scope="module")
def installers(built, unattended_spec) -> dict:
    """The shareable installers, and the owner's stick as the README makes it: `clusteros flash --credential`
    onto a stick (a loop device here), which must hold what `clusteros owner-stick` writes to a file."""
    made = MACHINES / "owner-stick.img"
    made.parent.mkdir(parents=True, exist_ok=True)
    assert clusteros(["owner-stick", str(made), "--spec", str(unattended_spec)]) == 0
    assert made.stat().st_mode & 0o777 == 0o600
    usb = flashed_stick(MACHINES / "usb.img", unattended_spec)
    with open(usb, "rb") as stick, open(made, "rb") as expected:
        assert stick.read(made.stat().st_size) == expected.read(), "the flashed stick is the owner's stick"
    made.unlink()
    return {"iso": built / "democluster-installer.iso", "usb": usb, "pxe": built / "pxe",
            "spec": load_spec(unattended_spec)}


@pytest.fixture(scope="module")
def pxe_served(installers) -> Path:
    """The PXE set as `clusteros-node serve-pxe` serves it, from this host: QEMU's TFTP gives iPXE the
    folder's boot.ipxe, which points at the HTTP server here (10.0.2.2 is this host, to a machine
    on QEMU's user network) for the kernel, the initrd and the image. Up while the module runs."""
    served = MACHINES / "pxe-served"
    with serve_directory(served) as url:
        port = int(url.rsplit(":", 1)[1])
        lan = pxeserve.Lan("eth0", "10.0.2.2", "10.0.2.0/24", None)
        pxeserve.prepare(installers["pxe"], served, pxeserve.Plan(lan, dhcp_range="", boot="auto", http_port=port))
        yield served


def flashed_stick(backing: Path, spec_file: Path) -> Path:
    """A 2 GiB stick (a loop device on `backing`), written and read back by `clusteros flash --credential`."""
    backing.unlink(missing_ok=True)
    fd = os.open(backing, os.O_WRONLY | os.O_CREAT, 0o600)
    os.ftruncate(fd, 2 * 2**30)
    os.close(fd)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:   # --force: a loop device does not say it is removable
        assert clusteros(["flash", device, "--credential", "--yes", "--force", "--spec", str(spec_file)]) == 0
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    return backing


def empty_disk(path: Path, size: str = "6G") -> Path:
    path.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), size], check=True, capture_output=True)
    return path


# The PC hardware each install runs on: its target disk's controller (the installer must find
# it, and the installed system boot from it) and its NIC (the installed system's uplink).
HARDWARE = {
    "iso": {"disk": "ide-hd,bus=ide.0", "root": "/dev/sda", "nic": "igb"},         # SATA (AHCI); a server's Intel NIC
    "usb": {"disk": "nvme,serial=CLUSTEROS0001", "root": "/dev/nvme0n1", "nic": "e1000e"},
    "pxe": {"disk": "virtio-blk-pci", "root": "/dev/vda", "nic": "virtio-net-pci"},
}


def qemu_base(machine: Machine, disk: Path, firmware: str, controller: str = "virtio-blk-pci",
              adapter: tuple[str, ...] = ()) -> list[str]:
    """`adapter`: the -device arguments of the host adapter `controller` sits on, if it needs one."""
    argv = ["qemu-system-x86_64", "-name", f"{machine.name},process=clusteros-test-{machine.name}",
            "-machine", "q35", *ACCEL.qemu_args, "-m", "1024", "-smp", "1",
            # detect-zeroes: the zeros the installer writes over the image's holes (and the old
            # backup GPT) stay holes in the qcow2, as on a thin-provisioned disk: 1 GB, not 4.
            "-drive", f"file={disk},if=none,id=target,format=qcow2,discard=unmap,detect-zeroes=unmap",
            *adapter, "-device", f"{controller},drive=target,bootindex=0",
            "-display", "none", "-monitor", "none"]
    if firmware == "uefi":
        (machine.directory / "OVMF_VARS.fd").unlink(missing_ok=True)
        argv += qemu.uefi_args(machine.directory)
    return argv


def start_install(medium: str, built: dict, number: int, pxe_served: Path) -> Install:
    machine = Machine(f"install-{medium}", MACHINES / medium)
    machine.directory.mkdir(parents=True, exist_ok=True)
    disk = empty_disk(machine.directory / "disk.qcow2")
    port = SSH_BASE_PORT + number
    owner = ports.port_owner(port)
    assert owner is None, f"port {port} is taken by {owner}"
    forward = f"hostfwd=tcp:127.0.0.1:{port}-:22"
    hardware = HARDWARE[medium]
    base = qemu_base(machine, disk, FIRMWARE[medium], hardware["disk"])
    if medium == "iso":
        argv = base + [
            "-cdrom", str(built["iso"]),    # in place of q35's empty default CD drive
            "-netdev", f"user,id=net,{forward}", "-device", f"{hardware['nic']},netdev=net"]
    elif medium == "usb":
        argv = base + [
            "-device", "qemu-xhci",
            "-drive", f"file={built['usb']},if=none,id=stick,format=raw,readonly=on",
            "-device", "usb-storage,drive=stick,bootindex=1",
            "-netdev", f"user,id=net,{forward}", "-device", f"{hardware['nic']},netdev=net"]
    else:
        argv = base + [
            "-netdev", f"user,id=net,{forward},tftp={pxe_served},bootfile=boot.ipxe",
            "-device", f"{hardware['nic']},netdev=net,bootindex=1"]
    behind_the_cluster(machine.launch(argv))
    return Install(medium, handle(machine, built["spec"], port), disk)


@pytest.fixture(scope="module")
def installs(installers, pxe_served):
    started = {medium: start_install(medium, installers, number, pxe_served)
               for number, medium in enumerate(("iso", "usb", "pxe"))}
    yield started
    for install in started.values():
        install.node.machine.stop(timeout=0)   # nothing to keep: no need to wait out slurmd's stop
        install.disk.unlink(missing_ok=True)   # its serial log stays; the disk is GBs a later test needs


def wait_installed_and_up(install: Install) -> str:
    """Wait for the installer's success line, then for SSH on the installed system; return its root device."""
    wait_for_installer(install.node, "installed and verified", install.medium)
    return install.node.wait_until_succeeds("findmnt --noheadings --output SOURCE /", timeout=150).strip()


def wait_for_installer(node, success: str, what: str) -> None:
    """Until the console matches the regex `success`; an installer error or a QEMU that exited fails at once."""
    def done() -> None:
        text = node.machine.console_text()
        if "clusteros-installer: ERROR" in text or not node.machine.is_alive():
            pytest.fail(f"{what}: the installer failed or QEMU exited:\n{text[-3000:]}")
        assert re.search(success, text), f"{what}: not there yet; the console ends:\n{text[-3000:]}"
    node.retry(done, INSTALL_TIMEOUT, every=5)


def direct_boot(name: str, pxe: Path, iso: Path, disks: list[Path], cmdline: str) -> Machine:
    """The installer from its kernel and initrd, with the ISO attached as its medium."""
    machine = Machine(name, MACHINES / name, stop_timeout=5)
    machine.directory.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-system-x86_64", "-name", f"{name},process=clusteros-test-{name}",
            "-machine", "q35", *ACCEL.qemu_args, "-m", "768", "-smp", "1", "-no-reboot",
            "-kernel", str(pxe / "vmlinuz"), "-initrd", str(pxe / "initrd.img"),
            "-append", f"console=ttyS0,115200n8 console=tty0 {cmdline}",
            "-drive", f"file={iso},if=none,id=cd,media=cdrom,readonly=on", "-device", "ide-cd,drive=cd",
            "-display", "none", "-monitor", "none"]
    for number, disk in enumerate(disks):
        argv += ["-drive", f"file={disk},if=none,id=d{number},format=qcow2", "-device", f"virtio-blk-pci,drive=d{number}"]
    behind_the_cluster(machine.launch(argv))
    return machine


def wait_gone(machine: Machine, timeout: float = 30) -> None:
    def gone() -> None:
        assert not machine.is_alive(), f"{machine.name} did not power off:\n" + "\n".join(machine.serial_tail())
    retry(gone, timeout, scale=ACCEL.scale(1.0), every=1)


# The refusals run while the three installs are under way: they need no disk of theirs.
@pytest.mark.usefixtures("installs")
def test_asking_installer_given_no_answer_wipes_nothing(installers):
    disk = empty_disk(MACHINES / "refuse-disk.qcow2")
    with direct_boot("refuse-ask", installers["pxe"], installers["iso"], [disk], "clusteros.install=ask") as machine:
        node = handle(machine, installers["spec"])
        node.wait_for_console_text("or press Enter to cancel:", timeout=150)
        # The answer comes from the keyboard, as from a person at the screen: just Enter.
        machine.execute("send-key", keys=[{"type": "qcode", "data": "ret"}])
        node.wait_for_console_text("Cancelled: nothing was written.", timeout=30)
        wait_gone(machine)
    assert untouched(disk)


@pytest.mark.usefixtures("installs")
def test_unattended_auto_target_refuses_two_empty_disks(installers):
    """The ISO as a CD under UEFI (its default menu entry: unattended, target auto), two empty disks:
    one behind an LSI MegaRAID SAS controller (a Dell PERC's kind: the installer must see it), one virtio."""
    machine = Machine("refuse-two", MACHINES / "refuse-two", stop_timeout=5)
    machine.directory.mkdir(parents=True, exist_ok=True)
    disks = [empty_disk(machine.directory / f"disk{n}.qcow2", "5G") for n in (1, 2)]
    argv = qemu_base(machine, disks[0], "uefi", "scsi-hd,bus=raid.0",
                     adapter=("-device", "megasas-gen2,id=raid")) + [
        "-drive", f"file={disks[1]},if=none,id=second,format=qcow2", "-device", "virtio-blk-pci,drive=second",
        "-drive", f"file={installers['iso']},if=none,id=cd,media=cdrom,readonly=on", "-device", "ide-cd,drive=cd,bootindex=1",
        "-no-reboot", "-net", "none"]
    with machine:
        behind_the_cluster(machine.launch(argv))
        handle(machine, installers["spec"]).wait_for_console_text("nothing more was written", timeout=150)
        assert "more than one empty disk ( sda vda )" in machine.console_text()
        wait_gone(machine)
    assert all(untouched(d) for d in disks)


# What needs no booted machine runs while the three installs are under way too (the secret scan
# reads GBs): once the checks below are done with them, the machines stop.

@pytest.mark.usefixtures("installs")
def test_pxe_set_has_what_a_boot_server_needs(installers):
    names = {p.name for p in installers["pxe"].iterdir()}
    assert names == {"vmlinuz", "initrd.img", "image.data.zst", "boot.ipxe", "dnsmasq.conf.example", "undionly.kpxe",
                     "snponly.efi"}
    assert installers["pxe"].joinpath("boot.ipxe").read_text().startswith("#!ipxe")


# PC and server hardware the installs above do not run on (QEMU has no r8169, tg3, mpt3sas or smartpqi):
# the installer must at least carry their drivers. The installs boot on AHCI, NVMe, USB storage (xHCI),
# igb, e1000e and virtio.
PC_DRIVERS = {"ahci", "nvme", "sd_mod", "sr_mod", "usb-storage", "uas", "xhci-pci", "megaraid_sas", "mpt3sas", "smartpqi",
              "e1000e", "igb", "r8169", "tg3",
              "virtio_net", "virtio_blk"}


@pytest.mark.usefixtures("installs")
def test_the_installer_carries_the_drivers_of_common_pc_disks_and_nics(installers):
    listing = subprocess.run(f"zstd -dc {installers['pxe'] / 'initrd.img'} | cpio -t --quiet", shell=True,
                             capture_output=True, text=True, check=True).stdout.split()
    carried = {Path(name).name.removesuffix(".ko") for name in listing if name.endswith(".ko")}
    assert PC_DRIVERS <= carried, f"missing: {sorted(PC_DRIVERS - carried)}"


def secrets_of(spec: dict) -> Needles:
    """Every generation's cluster secret and what derives from it, the owner's and the test key's
    private halves, the test key's public half (no image may let it in), and the WiFi passphrase and
    the key derived from it."""
    needles = Needles({"test public key": secrets.test_key_path(spec).with_suffix(".pub").read_text().split()[1].encode()})
    needles |= Needles.for_private_key("test private key", secrets.test_key_path(spec))
    needles |= Needles.for_private_key("owner private key", secrets.owner_key_path(spec))
    for number in range(1, credentials.generation(spec) + 1):
        secret = credentials.secret_bytes(spec, number)
        needles |= Needles.for_secret(f"secret {number}", secret)
        needles |= Needles.for_secret(f"munge key {number}", slurm.munge_key(secret))
        needles |= Needles.for_secret(f"announce key {number}", messages.announce_key(secret))
        needles |= Needles({f"k3s token {number}": k3s.token(secret).encode()})
    if wifi_spec := spec["network"].get("wifi"):
        passphrase = wifi.read_passphrase(wifi_spec)[1]
        needles |= Needles({"WiFi passphrase": passphrase.encode()})
        needles |= Needles.for_secret("WiFi key", bytes.fromhex(wifi.derive_psk(wifi_spec["ssid"], passphrase)))
    return needles


@pytest.mark.usefixtures("installs")
def test_no_shareable_artifact_holds_a_secret_or_the_test_key(installers):
    """Every byte of each, decompressed where it is compressed; the owner's part as the control."""
    spec, needles = installers["spec"], secrets_of(installers["spec"])
    shareable = [BUILT / f"democluster.{suffix}" for suffix in ("qcow2", "raw", "raw.gz", "data.zst")] + [
        installers["iso"], BUILT / "democluster-usb.img.gz", installers["pxe"]]
    found = scan(shareable, needles)
    assert found.findings == []
    assert found.read_bytes > 2 * 2**30, "the disks' data was read, not just their headers"
    part = BUILT / "democluster-usb-credential.bin"
    assert part.stat().st_mode & 0o777 == 0o600
    in_part = scan([part], needles).findings
    assert any(f.endswith("(hex)") and ": secret " in f for f in in_part), \
        "the owner's part holds the credential: the scan would see a leak"
    assert any(f.endswith(": WiFi key (hex)") for f in in_part), "and the WiFi key, so a node joins the network"
    assert credentials.generation(spec) >= 1


FIRMWARE = {"iso": "bios", "usb": "uefi", "pxe": "bios"}
# The console's line once sshd listens (clusteros-ssh-ready): a machine the spec does not list is
# named node-<the first 8 hex digits of its machine id>.
SSH_READY = re.escape(READY_PREFIX) + r"(node-[0-9a-f]{8}): ED25519 (SHA256:[\w+/]{43})"


@dataclass
class Booted:
    name: str            # its host name, made from its own machine id
    host_key: str        # its SSH host key's fingerprint
    root: str | None     # the device its running root file system is on (None: not asked, it was stopped)


def console_identity(node: Node) -> tuple[str, str]:
    """The name and host key fingerprint the console said once sshd listened."""
    line = node.wait_for_console_text(re.escape(READY_PREFIX) + r"[^\r\n]*[\r\n]", timeout=30).group(0)   # a whole line
    match = re.fullmatch(SSH_READY, line.strip())
    assert match, f"{node.name}: not the line clusteros-ssh-ready prints for a machine the spec does not list: {line!r}"
    return match.group(1), match.group(2)


@pytest.fixture(scope="module")
def installed(installs, installers) -> dict[str, Booted]:
    """Each machine installed and booted from its disk: the PXE machine as far as its root file
    system, the ISO's until sshd listens (both then stopped), the stick's up, for the checks."""
    pxe = installs["pxe"].node
    wait_for_installer(pxe, "installed and verified", "pxe")
    wait_for_installer(pxe, booted_from(HARDWARE["pxe"]["root"]), "pxe, booting its disk")
    pxe.machine.stop(timeout=0)   # nothing on it to keep
    iso = installs["iso"].node
    wait_for_installer(iso, "installed and verified", "iso")
    wait_for_installer(iso, booted_from(HARDWARE["iso"]["root"]) + ".*" + re.escape(READY_PREFIX), "iso, booting its disk")
    iso_booted = Booted(*console_identity(iso), root=None)
    iso.machine.stop(timeout=0)
    usb = installs["usb"]
    root = wait_installed_and_up(usb)
    return {"iso": iso_booted, "usb": Booted(*console_identity(usb.node), root=root)}


def booted_from(disk: str) -> str:
    """The installer's reboot, the disk's GRUB menu, then the image's kernel and initramfs mounting
    its root (the disk's third partition: clusteros/disk.py) from `disk`. Nothing else in a machine
    holds that GRUB or that file system: only the disk the installer wrote."""
    return (r"(?s)reboot: Restarting system.*GNU GRUB.*\*ClusterOS"
            rf".*EXT4-fs \({Path(disk).name}3\): mounted filesystem")


def on_usb(installs, command: str) -> str:
    return installs["usb"].node.succeed(command).strip()


@pytest.mark.parametrize("medium", ("iso", "usb"))
def test_installer_writes_the_disk_and_the_machine_boots_from_it(installed, installs, medium):
    """The ISO's machine: its console (the installer's reboot, the disk's GRUB, the root mounted from
    the disk, then sshd listening: `installed` waited for all of it); the stick's machine: its
    running system's root is on that disk."""
    disk = HARDWARE[medium]["root"]
    if medium == "iso":
        assert re.search(booted_from(disk), installs[medium].node.machine.console_text()), "iso: booted from its disk"
    else:
        assert installed[medium].root.startswith(disk), f"usb: root is {installed[medium].root}, not on the installed disk"
        assert "serial CLUSTEROS0001" in installs[medium].node.machine.console_text(), \
            "the list names each disk's serial"
    assert_listed_the_disks(installs[medium], disk)


def test_pxe_installer_writes_the_disk_and_the_firmware_boots_it(installed, installs):
    """What `installed` waited for, said here: SeaBIOS booted the virtio disk the installer wrote,
    its GRUB the image's kernel, whose initramfs mounted the root file system from that disk."""
    text, disk = installs["pxe"].node.machine.console_text(), HARDWARE["pxe"]["root"]
    assert f"installed and verified: every extent on {disk}" in text
    assert re.search(booted_from(disk), text)
    assert_listed_the_disks(installs["pxe"], disk)


def assert_listed_the_disks(install: Install, disk: str) -> None:
    text = install.node.machine.console_text()
    assert f"{disk}  6144 MiB" in text and "(empty)" in text, f"{install.medium}: the installer listed the disks it saw"


# The smoke checks of a booted node, on the stick's machine: the image's raw disk as it lands on
# hardware, under OVMF (the ISO's machine, under SeaBIOS, reached sshd: `installed`).

def test_boots_with_systemd_as_pid_1_under_its_firmware(installed, installs):
    assert on_usb(installs, "ps -p 1 -o comm=") == "systemd"
    assert on_usb(installs, "test -d /sys/firmware/efi && echo uefi || echo bios") == FIRMWARE["usb"]


def test_kernel_log_is_readable(installed, installs):
    assert on_usb(installs, "sudo dd if=/dev/kmsg bs=8192 count=1 status=none | wc -c") != "0"


def test_cluster_tools_and_units_are_installed(installed, installs):
    on_usb(installs, "command -v wg && test -x /usr/sbin/slurmd && test -x /usr/sbin/slurmctld "
                     "&& command -v munge && test -r /usr/local/lib/clusteros/node-agent/__main__.py")
    assert on_usb(installs, "systemctl is-enabled node-agent.service") == "enabled"


def test_ssh_is_keys_only_without_root(installed, installs):
    config = on_usb(installs, "sudo sshd -T")
    assert "passwordauthentication no" in config and "permitrootlogin no" in config


def test_each_machine_makes_its_own_machine_id_host_key_and_name(installed, installs):
    """Two machines installed from one image: nothing that must be a machine's own came with it
    (the names are made from the machine ids: clusteros-identity)."""
    iso, usb = installed["iso"], installed["usb"]
    assert iso.name != usb.name and iso.host_key != usb.host_key
    installs["usb"].node.wait_for_unit("clusteros-identity.service")
    assert on_usb(installs, "hostname") == usb.name, "the console named the machine as it names itself"
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id := on_usb(installs, "cat /etc/machine-id")), machine_id
    assert usb.name == "node-" + machine_id[:8], "a machine the spec does not list is named by its machine id"
    assert usb.host_key in on_usb(installs, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")


def test_root_file_system_fills_the_disk(installed, installs):
    # growroot runs once at boot; wait for it rather than race it.
    on_usb(installs, "systemctl is-active --wait clusteros-growroot.service || "
                     "timeout 120 sh -c 'until systemctl is-active -q clusteros-growroot; do sleep 2; done'")
    size = int(on_usb(installs, "df --output=size -B1 / | tail -1"))
    assert size > 5.5 * 1024**3, f"a 4 GiB image on a 6 GiB disk: / is {size} bytes"


def test_the_owners_stick_gives_its_machine_the_credential(installed, installs):
    usb = installs["usb"].node
    assert usb.succeed("sudo stat -c '%a %U' /var/lib/clusteros/credential.json").strip() == "600 root"
    usb.fail("test -r /var/lib/clusteros/credential.json")   # not for the login user
    # It holds the credential: a cluster of one, led by itself.
    status = usb.wait_until_succeeds("clusteros-node status --json | grep -q '\"generation\"' "
                                     "&& clusteros-node status --json", timeout=90)
    assert json.loads(status)["credential"]["generation"] >= 1
