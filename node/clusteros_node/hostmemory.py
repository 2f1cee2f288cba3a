"""Memory a node in a virtual machine gives back to its host.

A host keeps every page its guest ever touched. The guest frees memory all the time, and a
balloon with free page reporting (QEMU's virtio-balloon, free-page-reporting=on) hands what
is free back to the host; but a node's page cache is not free: a booted node has read ~80 MB
of files once (its boot, its daemons' start) and keeps them, while the host caches the same
disk image a second time. So where the machine has such a balloon, the agent asks the kernel
every RECLAIM_EVERY seconds to reclaim the page cache nobody used lately (the inactive file
list, through the root cgroup's memory.reclaim), and the balloon reports those pages.

Reclaimed cache leaves in single scattered pages, which the kernel reports only in blocks of
2 MiB (pageblock order) unless told otherwise: under emulation (TCG) every free page is
reported, since QEMU's software MMU gains nothing from the host's huge pages; under KVM the
2 MiB default stays, so the host never splits a huge page that backs the guest.

On real hardware, or without a reporting balloon, none of this runs.
"""

from __future__ import annotations

import errno
from pathlib import Path

from clusteros_node import system

BALLOONS = Path("/sys/bus/virtio/drivers/virtio_balloon")
REPORTING_FEATURE = 5          # VIRTIO_BALLOON_F_REPORTING, a position in the device's features
REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
ROOT_RECLAIM = Path("/sys/fs/cgroup/memory.reclaim")
MEMINFO = Path("/proc/meminfo")
RECLAIM_EVERY = 30.0
SMALLEST = 4 << 20             # less than this inactive cache is not worth a reclaim


def reporting_balloon(balloons: Path = BALLOONS) -> bool:
    """A virtio balloon is bound whose device offers free page reporting."""
    for device in sorted(balloons.glob("virtio*")):
        features = system.read_text(device / "features").strip()
        if len(features) > REPORTING_FEATURE and features[REPORTING_FEATURE] == "1":
            return True
    return False


def emulated() -> bool:
    """The virtual machine is QEMU without KVM: systemd-detect-virt says "qemu" for TCG, "kvm" for KVM."""
    return system.run("systemd-detect-virt", "--vm", check=False).strip() == "qemu"


def inactive_file_bytes(meminfo: str) -> int:
    """The page cache on the inactive list (not used lately), from /proc/meminfo's text."""
    kib = system.meminfo_kib(meminfo, "Inactive(file)")
    if kib is None:
        raise ValueError("/proc/meminfo has no Inactive(file) line")
    return kib * 1024


def reclaim_cold_cache(meminfo: Path = MEMINFO, reclaim: Path = ROOT_RECLAIM) -> int:
    """Ask the kernel to reclaim as much as the inactive page cache holds; the bytes asked for."""
    amount = inactive_file_bytes(meminfo.read_text())
    if amount < SMALLEST:
        return 0
    try:
        reclaim.write_text(f"{amount}\n")
    except OSError as exc:
        if exc.errno != errno.EAGAIN:   # EAGAIN: it reclaimed less than asked (pages in use, dirty): fine
            raise
    return amount


def report_every_page(order: Path = REPORTING_ORDER) -> None:
    """Free pages reported one by one, not in 2 MiB blocks (the balloon's driver sets the block at load)."""
    if system.read_text(order).strip() != "0":
        order.write_text("0\n")


class HostMemory:
    """The agent's part: every RECLAIM_EVERY seconds from `started` (the boot's own reads get a round
    to be read again, and kept, before the first), if the machine has a reporting balloon (a driver
    loaded late, or loaded again, is seen at the next round), a reclaim of the cold cache."""

    def __init__(self, started: float, balloons: Path = BALLOONS, order: Path = REPORTING_ORDER,
                 meminfo: Path = MEMINFO, reclaim: Path = ROOT_RECLAIM, is_emulated=emulated):
        self.balloons, self.order, self.meminfo, self.reclaim = balloons, order, meminfo, reclaim
        self.is_emulated, self.emulation = is_emulated, None
        self.last = started

    def tick(self, now: float) -> None:
        if now - self.last < RECLAIM_EVERY:
            return
        self.last = now
        if not reporting_balloon(self.balloons):
            return
        if self.emulation is None:
            self.emulation = self.is_emulated()
        if self.emulation:
            report_every_page(self.order)
        reclaim_cold_cache(self.meminfo, self.reclaim)
