"""Which accelerator QEMU should use, decided by running a real guest.

/dev/kvm can exist and still not work (no vmx/svm flag: QEMU aborts setting
MSRs, or the guest hangs). The probe starts the same machine and CPU model the
test VMs use, with SeaBIOS as the guest, and waits for SeaBIOS to reach its
boot menu on the debug console: proof that guest code really runs under KVM.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from clusteros.errors import UsageError

PROBE_TIMEOUT = 10.0
MARKERS = (b"Booting from", b"No bootable device")
# Under TCG a guest runs roughly this many times slower than under KVM.
TCG_SLOWDOWN = 4


@dataclass(frozen=True)
class Accel:
    name: str            # "kvm" or "tcg"
    reason: str          # why: shown in status output

    @property
    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        # QEMU's default CPU model: "max" makes TCG emulate costly extensions for nothing.
        # tb-size: TCG's cache of translated code, by default 1 GiB, which a booted node fills and
        # keeps resident. Measured on the 3-node cluster (bench/run.py): 96 MiB holds a node's hot
        # code (RSS ~390 MB then, ~460 MB with the 11-27 image, instead of ~1 GB; boot within a few
        # seconds); 64 MiB starts to retranslate.
        return ["-accel", "tcg,thread=multi,tb-size=96"]

    def scale(self, seconds: float) -> float:
        """Boot timeouts are written for KVM; TCG gets more time."""
        return seconds * (TCG_SLOWDOWN if self.name == "tcg" else 1)


def probe_kvm(qemu: str = "qemu-system-x86_64", timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist (no KVM module, or not passed into this machine)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user (add yourself to the kvm group)"
    with tempfile.TemporaryDirectory(prefix="kvm-probe-") as tmp:
        debugcon = Path(tmp) / "debugcon"
        argv = [qemu, "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-nodefaults", "-display", "none",
                "-monitor", "none", "-serial", "none", "-m", "64", "-no-reboot",
                "-debugcon", f"file:{debugcon}", "-global", "isa-debugcon.iobase=0x402"]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError:
            return False, f"{qemu} is not installed"
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if debugcon.exists() and any(m in debugcon.read_bytes() for m in MARKERS):
                    return True, "a KVM guest ran to its boot menu"
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                    return False, f"a KVM guest failed: {err[0] if err else f'exit {proc.returncode}'}"
                time.sleep(0.05)
            return False, f"a KVM guest made no progress in {timeout:.0f}s"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()


def choose(setting: str) -> Accel:
    """auto: KVM when the probe passes, else TCG (said loudly). kvm: KVM or a clear error."""
    if setting == "tcg":
        return Accel("tcg", "vm.accel is tcg")
    ok, reason = probe_kvm()
    if ok:
        return Accel("kvm", reason)
    if setting == "kvm":
        raise UsageError(f"vm.accel: kvm was asked for, but KVM does not work here: {reason}",
                         fix="set vm.accel to auto or tcg in cluster.yaml")
    return Accel("tcg", f"KVM unusable ({reason}); software emulation, boots are ~{TCG_SLOWDOWN}x slower")
