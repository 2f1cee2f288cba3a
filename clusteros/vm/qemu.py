"""The QEMU command line of a test-cluster node, and the firmware it boots."""

from __future__ import annotations

import shutil
from pathlib import Path

from clusteros.accel import Accel
from clusteros.errors import ClusterOSError
from clusteros.vm.layout import VMNode

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


def node_argv(node: VMNode, machine_dir: Path, disk: Path, acc: Accel, firmware: str, lan_sock: Path) -> list[str]:
    """A node: its disk, the cluster LAN on the switch, an uplink with SSH forwarded, VNC on 127.0.0.1."""
    argv = ["qemu-system-x86_64", "-name", f"{node.name},process=clusteros-{node.name}",
            "-machine", "q35", *acc.qemu_args, "-smp", str(node.cpus), "-m", str(node.memory),
            "-drive", f"file={disk},if=virtio,format=qcow2,discard=unmap",
            "-netdev", f"vde,id=lan,sock={lan_sock}",
            "-device", f"virtio-net-pci,netdev=lan,mac={node.lan_mac}",
            "-netdev", f"user,id=uplink,hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=uplink,mac={node.uplink_mac}",
            "-device", "virtio-rng-pci",
            "-vga", "std", "-display", "none", "-vnc", f"127.0.0.1:{node.vnc_port - 5900}",
            "-monitor", "none"]
    if firmware == "uefi":
        argv += uefi_args(machine_dir)
    return argv
