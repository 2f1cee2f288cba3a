"""The QEMU command line of a test-cluster node, and the firmware it boots."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from clusteros.accel import Accel
from clusteros.errors import ClusterOSError
from clusteros.vm.layout import VMNode

VNC_SOCKET = "vnc.sock"   # Machine.vnc_socket: removed with the machine's other runtime files
OVMF_CODE = [Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_CODE.fd"),
             Path("/usr/share/ovmf/OVMF.fd"), Path("/usr/share/qemu/OVMF.fd")]


def ovmf_code() -> Path:
    """The first OVMF firmware found where Debian and Ubuntu install it."""
    for path in OVMF_CODE:
        if path.exists():
            return path
    raise ClusterOSError("UEFI firmware is needed but no OVMF was found in " + ", ".join(map(str, OVMF_CODE)),
                         fix="apt-get install ovmf")


def uefi_args(machine_dir: Path) -> list[str]:
    """OVMF's code (read-only) and this machine's own copy of its variables."""
    code = ovmf_code()
    variables = machine_dir / "OVMF_VARS.fd"
    if not variables.exists():
        shutil.copyfile(code.with_name(code.name.replace("CODE", "VARS")), variables)
    return ["-drive", f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,file={variables}"]


@dataclass(frozen=True)
class Boot:
    """How a node's QEMU starts it: the image's kernel directly, or through firmware and GRUB."""

    firmware: str                 # "bios" or "uefi": used when there is no kernel to load directly
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""

    @property
    def direct(self) -> bool:
        return self.kernel is not None

    def describe(self) -> str:
        return f"direct kernel boot ({self.kernel.name})" if self.direct else f"{self.firmware} firmware and GRUB"


def boot_of(spec: dict, manifest: dict, image_dir: Path) -> Boot:
    """Direct boot when the spec asks for it and the image has VM boot files (a native build)."""
    files = manifest.get("vm_boot")
    if spec["vm"]["boot"] != "direct" or not files:
        return Boot(spec["vm"]["firmware"])
    return Boot(spec["vm"]["firmware"], (image_dir / files["kernel"]).resolve(),
                (image_dir / files["initrd"]).resolve(), files["cmdline"])


def machine_args(boot: Boot, machine_dir: Path) -> list[str]:
    """A q35 without what a node never uses (HPET, SATA, SMBus, VMware port, USB, default devices).

    Booted directly, its console is the serial port alone; through firmware it keeps a screen and a
    keyboard, for GRUB's menu: VNC on a unix socket in the node's own 0700 folder, so no other user
    of the host can reach it (a TCP port on 127.0.0.1 would be open to all of them).
    """
    machine = "q35,hpet=off,sata=off,smbus=off,vmport=off,usb=off"
    if boot.direct:
        return ["-machine", f"{machine},i8042=off", "-nodefaults", "-vga", "none", "-display", "none",
                "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", boot.cmdline]
    screen = ["-vga", "std", "-display", "none", "-vnc", f"unix:{machine_dir / VNC_SOCKET}"]
    return ["-machine", machine, "-nodefaults", *screen] + (uefi_args(machine_dir) if boot.firmware == "uefi" else [])


def fw_cfg_args(files: dict[str, Path]) -> list[str]:
    """Each file as a systemd system credential of that name (QEMU reads it once, at start)."""
    return [arg for name, path in files.items()
            for arg in ("-fw_cfg", f"name=opt/io.systemd.credentials/{name},file={path}")]


# Entropy from the host, and the guest's free memory given back to it (free page reporting): a
# job's 300 MB, once freed, leave the QEMU process within seconds instead of staying resident.
EVERY_MACHINE = ["-device", "virtio-rng-pci", "-device", "virtio-balloon-pci,free-page-reporting=on",
                 "-monitor", "none"]


def node_argv(node: VMNode, machine_dir: Path, disk: Path, acc: Accel, boot: Boot, lan_sock: Path) -> list[str]:
    """A node: its disk, the cluster LAN on the switch, an uplink with SSH forwarded to 127.0.0.1."""
    # romfile=: no iPXE option ROM for firmware to run on NICs that never netboot.
    rom = ",romfile=" if boot.direct else ""
    return ["qemu-system-x86_64", "-name", f"{node.name},process=clusteros-{node.name}",
            *machine_args(boot, machine_dir), *acc.qemu_args, "-smp", str(node.cpus), "-m", str(node.memory),
            "-drive", f"file={disk},if=none,id=disk,format=qcow2,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk",
            "-netdev", f"vde,id=lan,sock={lan_sock}",
            "-device", f"virtio-net-pci,netdev=lan,mac={node.lan_mac}{rom}",
            "-netdev", f"user,id=uplink,hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=uplink,mac={node.uplink_mac}{rom}",
            *EVERY_MACHINE]


def netboot_argv(node: VMNode, machine_dir: Path, disk: Path, acc: Accel, lan_sock: Path, memory: int,
                 cpus: int) -> list[str]:
    """A machine that netboots from the cluster LAN (SeaBIOS and the NIC's iPXE ROM), with an empty
    disk it should never touch: a node of the rack that nothing was installed on yet. Like a rack
    machine set to netboot, it tries again when a boot finds nothing (a DHCP offer lost on a busy
    LAN, the server not up yet): SeaBIOS restarts it 5 s after "No bootable device"."""
    return ["qemu-system-x86_64", "-name", f"{node.name},process=clusteros-{node.name}",
            *machine_args(Boot("bios"), machine_dir), *acc.qemu_args, "-smp", str(cpus), "-m", str(memory),
            "-boot", "reboot-timeout=5000",
            "-drive", f"file={disk},if=none,id=disk,format=qcow2",
            "-device", "virtio-blk-pci,drive=disk,bootindex=2",
            "-netdev", f"vde,id=lan,sock={lan_sock}",
            "-device", f"virtio-net-pci,netdev=lan,mac={node.lan_mac},bootindex=1",
            "-netdev", f"user,id=uplink,hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=uplink,mac={node.uplink_mac},romfile=",
            *EVERY_MACHINE]
