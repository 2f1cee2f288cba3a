"""Memory a node in a virtual machine gives back to its host.

A host keeps every page its guest ever touched. The guest frees memory all the time, and a
balloon with free page reporting (QEMU's virtio-balloon, free-page-reporting=on) hands what
is free back to the host; but a node's page cache is not free: a booted node has read ~80 MB
of files once (its boot, its daemons' start) and keeps them, while the host caches the same
disk image a second time. So where the machine has such a balloon, the agent asks the kernel
every RECLAIM_EVERY seconds to reclaim the page cache nobody used lately (the inactive file
list, through the root cgroup's memory.reclaim), and the balloon reports those pages.

A reclaim has a price under emulation: a page of code read back in lands on another page of guest
memory, and QEMU translates its code again (every 30 s, a third of an idle node's CPU). So the
kernel's own count of pages read back soon after their eviction (/proc/vmstat's
workingset_refault_file) sets the pace: when more than a quarter of what a reclaim asked for came
back by the next round, the cache was in use, and the wait for the next reclaim doubles, up to
LONGEST_WAIT; when it did not, the wait is RECLAIM_EVERY again. A cache of BIG or more (a job's
output, written and not read) is reclaimed at the next round whatever the wait.

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
VMSTAT = Path("/proc/vmstat")
RECLAIM_EVERY = 30.0
LONGEST_WAIT = 480.0
SMALLEST = 4 << 20             # less than this inactive cache is not worth a reclaim
BIG = 64 << 20                 # this much is reclaimed at the next round, however long the wait
PAGE = 4096


def reporting_balloon(balloons: Path = BALLOONS) -> bool:
    """A virtio balloon is bound whose device offers free page reporting."""
    for device in sorted(balloons.glob("virtio*")):
        features = system.read_text(device / "features").strip()
        if len(features) > REPORTING_FEATURE and features[REPORTING_FEATURE] == "1":
            return True
    return False


def emulated() -> bool:
    """The virtual machine is QEMU without KVM: systemd-detect-virt says "qemu" for TCG, "kvm" for KVM."""
    return system.query("systemd-detect-virt", "--vm", check=False).strip() == "qemu"


def inactive_file_bytes(meminfo: str) -> int:
    """The page cache on the inactive list (not used lately), from /proc/meminfo's text."""
    kib = system.meminfo_kib(meminfo, "Inactive(file)")
    if kib is None:
        raise ValueError("/proc/meminfo has no Inactive(file) line")
    return kib * 1024


def refaulted_file_bytes(vmstat: str) -> int:
    """Page cache read back in soon after its eviction, since boot, from /proc/vmstat's text."""
    for line in vmstat.splitlines():
        name, _, value = line.partition(" ")
        if name == "workingset_refault_file":
            return int(value) * PAGE
    raise ValueError("/proc/vmstat has no workingset_refault_file line")


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
    loaded late, or loaded again, is seen at the next round), a reclaim of the cold cache when its
    wait is over or the cache is BIG."""

    def __init__(self, started: float, balloons: Path = BALLOONS, order: Path = REPORTING_ORDER,
                 meminfo: Path = MEMINFO, reclaim: Path = ROOT_RECLAIM, vmstat: Path = VMSTAT, is_emulated=emulated):
        self.balloons, self.order, self.meminfo, self.reclaim = balloons, order, meminfo, reclaim
        self.vmstat, self.is_emulated, self.emulation = vmstat, is_emulated, None
        self.round = self.last = started
        self.wait = RECLAIM_EVERY
        self.asked = self.refaulted = 0

    def tick(self, now: float) -> None:
        if now - self.round < RECLAIM_EVERY:
            return
        self.round = now
        if not reporting_balloon(self.balloons):
            return
        if self.asked:   # the round after a reclaim: was what it evicted read back in meanwhile?
            came_back = (refaulted_file_bytes(self.vmstat.read_text()) - self.refaulted) * 4 > self.asked
            self.wait = min(2 * self.wait, LONGEST_WAIT) if came_back else RECLAIM_EVERY
            self.asked = 0
        if now - self.last < self.wait and inactive_file_bytes(self.meminfo.read_text()) < BIG:
            return
        if self.emulation is None:
            self.emulation = self.is_emulated()
        if self.emulation:
            report_every_page(self.order)
        self.last, self.refaulted = now, refaulted_file_bytes(self.vmstat.read_text())
        self.asked = reclaim_cold_cache(self.meminfo, self.reclaim)
