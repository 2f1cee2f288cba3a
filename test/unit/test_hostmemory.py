"""The node-agent's reclaim of cold page cache in a VM (clusteros_node.hostmemory), on stand-in
sysfs and procfs files: which machines it acts on, what it asks the kernel for, and how often."""

import errno
from pathlib import Path

import pytest

from clusteros_node import hostmemory
from clusteros_node.hostmemory import HostMemory

MEMINFO = """MemTotal:         983040 kB
MemFree:          783360 kB
Active(file):      39936 kB
Inactive(file):    43008 kB
"""


def balloon(root: Path, features: str) -> Path:
    device = root / "virtio_balloon" / "virtio3"
    device.mkdir(parents=True)
    (device / "features").write_text(features + "\n")
    return root / "virtio_balloon"


REPORTING = "0100010000000000000000000000110010000000100000000000000000000000"   # a QEMU node's, read in a guest
NOT_REPORTING = "0100000000000000000000000000110010000000100000000000000000000000"


@pytest.fixture
def host(tmp_path):
    """A guest's files: meminfo, memory.reclaim and the reporting order as the driver leaves it (9)."""
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "memory.reclaim").write_text("")
    (tmp_path / "order").write_text("9\n")
    refaulted(tmp_path, 0)
    return tmp_path


def refaulted(host: Path, pages: int) -> None:
    (host / "vmstat").write_text(f"workingset_nodes 491\nworkingset_refault_anon 0\nworkingset_refault_file {pages}\n")


def agent_part(host: Path, balloons: Path, emulated: bool, probes: list | None = None) -> HostMemory:
    def is_emulated() -> bool:
        if probes is not None:
            probes.append(1)
        return emulated
    return HostMemory(0.0, balloons=balloons, order=host / "order", meminfo=host / "meminfo",
                      reclaim=host / "memory.reclaim", vmstat=host / "vmstat", is_emulated=is_emulated)


def test_a_balloon_counts_only_if_its_device_offers_free_page_reporting(tmp_path):
    assert hostmemory.reporting_balloon(balloon(tmp_path / "a", REPORTING))
    assert not hostmemory.reporting_balloon(balloon(tmp_path / "b", NOT_REPORTING))
    assert not hostmemory.reporting_balloon(tmp_path / "no-driver")
    assert not hostmemory.reporting_balloon(balloon(tmp_path / "c", "01"))   # too short to say


def test_the_inactive_page_cache_is_read_from_meminfo():
    assert hostmemory.inactive_file_bytes(MEMINFO) == 43008 * 1024
    with pytest.raises(ValueError, match="Inactive"):
        hostmemory.inactive_file_bytes("MemTotal: 1 kB\n")


def test_under_emulation_every_free_page_is_reported_and_the_cold_cache_reclaimed(host, tmp_path):
    part = agent_part(host, balloon(tmp_path, REPORTING), emulated=True)
    part.tick(100.0)
    assert (host / "order").read_text() == "0\n"
    assert (host / "memory.reclaim").read_text() == f"{43008 * 1024}\n"


def test_under_kvm_the_reporting_keeps_its_2_mib_blocks(host, tmp_path):
    part = agent_part(host, balloon(tmp_path, REPORTING), emulated=False)
    part.tick(100.0)
    assert (host / "order").read_text() == "9\n", "no host huge page split under KVM"
    assert (host / "memory.reclaim").read_text() == f"{43008 * 1024}\n"


def test_without_a_reporting_balloon_nothing_is_touched(host, tmp_path):
    probes = []
    for balloons in (balloon(tmp_path, NOT_REPORTING), tmp_path / "none"):
        agent_part(host, balloons, emulated=True, probes=probes).tick(100.0)
    assert (host / "memory.reclaim").read_text() == "" and (host / "order").read_text() == "9\n"
    assert probes == [], "no systemd-detect-virt on a machine with nothing to give back"


def test_it_reclaims_once_a_round_from_the_start_and_asks_about_the_emulation_once(host, tmp_path):
    probes = []
    part = agent_part(host, balloon(tmp_path, REPORTING), emulated=True, probes=probes)
    part.tick(hostmemory.RECLAIM_EVERY - 1)
    assert (host / "memory.reclaim").read_text() == "", "the first round comes RECLAIM_EVERY after the start"
    part.tick(100.0)
    (host / "memory.reclaim").write_text("")
    part.tick(100.0 + hostmemory.RECLAIM_EVERY - 1)
    assert (host / "memory.reclaim").read_text() == "", "not before RECLAIM_EVERY"
    (host / "order").write_text("9\n")   # the driver loaded again, and set its order back
    part.tick(100.0 + hostmemory.RECLAIM_EVERY)
    assert (host / "memory.reclaim").read_text() != "" and (host / "order").read_text() == "0\n"
    assert probes == [1]


def test_a_small_inactive_cache_is_left_alone(host):
    (host / "meminfo").write_text("Inactive(file):     2048 kB\n")
    assert hostmemory.reclaim_cold_cache(host / "meminfo", host / "memory.reclaim") == 0
    assert (host / "memory.reclaim").read_text() == ""


class Refusing:
    """memory.reclaim as the kernel answers it: EAGAIN when it freed less than asked."""

    def __init__(self, code: int):
        self.code = code

    def write_text(self, text: str) -> None:
        raise OSError(self.code, "refused")


def test_reclaiming_less_than_asked_is_not_an_error_but_a_refusal_is(host):
    assert hostmemory.reclaim_cold_cache(host / "meminfo", Refusing(errno.EAGAIN)) == 43008 * 1024
    with pytest.raises(PermissionError):
        hostmemory.reclaim_cold_cache(host / "meminfo", Refusing(errno.EACCES))


def test_the_pages_read_back_after_their_eviction_are_read_from_vmstat(host):
    refaulted(host, 25612)
    assert hostmemory.refaulted_file_bytes((host / "vmstat").read_text()) == 25612 * 4096
    with pytest.raises(ValueError, match="workingset_refault_file"):
        hostmemory.refaulted_file_bytes("pgpgin 1\n")


def reclaimed_at(part: HostMemory, host: Path, times: list[float]) -> list[float]:
    """The rounds (of those at `times`) that wrote memory.reclaim."""
    done = []
    for now in times:
        (host / "memory.reclaim").write_text("")
        part.tick(now)
        if (host / "memory.reclaim").read_text():
            done.append(now)
    return done


def test_a_reclaim_that_came_back_doubles_the_wait_up_to_the_longest_and_one_that_did_not_resets_it(host, tmp_path):
    part = agent_part(host, balloon(tmp_path, REPORTING), emulated=True)
    pages = 0
    done = []
    for now in (30.0 * n for n in range(1, 60)):
        if reclaimed_at(part, host, [now]):   # and half of it is read back in before the next round
            done.append(now)
            pages += 43008 // 4 // 2
            refaulted(host, pages)
    waits = [b - a for a, b in zip(done, done[1:])]
    assert waits == [60.0, 120.0, 240.0, 480.0, 480.0], "each wait twice the last, up to the longest"
    # A reclaim of which nothing is read back: the rounds after it reclaim again.
    last = done[-1] + hostmemory.LONGEST_WAIT
    assert reclaimed_at(part, host, [last, last + 30, last + 60]) == [last, last + 30, last + 60]


def test_a_big_cache_is_reclaimed_at_the_next_round_however_long_the_wait(host, tmp_path):
    part = agent_part(host, balloon(tmp_path, REPORTING), emulated=True)
    for now in (30.0, 90.0):   # all of each reclaim comes back: the wait after 90 is 120 s
        assert reclaimed_at(part, host, [now - 30, now]) == [now]
        refaulted(host, int(now) * 43008 // 4)
    assert reclaimed_at(part, host, [120.0, 150.0]) == []
    (host / "meminfo").write_text(f"Inactive(file):   {hostmemory.BIG // 1024} kB\n")   # a job wrote its output
    assert reclaimed_at(part, host, [165.0, 180.0]) == [180.0], "at the next round, not before"
