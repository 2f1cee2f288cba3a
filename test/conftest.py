"""Shared by every test: import paths, the rule for tests that need a tool, and what each of
the two test workers runs.

`@pytest.mark.needs("packer")`: where the tool is missing the test is skipped
with the reason in pytest's summary (`-ra`); in CI (CI set), where every tool is
installed, a missing tool fails the test instead: nothing is silently skipped there.
"""

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "node"))


def pytest_runtest_setup(item):
    for marker in item.iter_markers("needs"):
        missing = [tool for tool in marker.args if shutil.which(tool) is None and not Path(tool).exists()]
        if not missing:
            continue
        reason = f"needs {', '.join(missing)}: scripts/install-prereqs.sh installs it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI installs every tool: a missing one is a failure there)")
        pytest.skip(reason)


# -- the two test workers (pytest-xdist, --numprocesses=2 in pyproject.toml) ----------------------

# They share one 3-node cluster, booted once. test_image comes last among them: its rebuild edits
# a source file, and so the image test_vm runs from.
CLUSTER_MODULES = re.compile(r"test/e2e/(test_cluster\w*|test_image)\.py$")
CLUSTER_UNIT = "the 3-node cluster"


def work_unit(nodeid: str) -> str:
    """What one worker runs whole, in order: the 3-node cluster's modules together, every other e2e
    module by itself (its module-scoped machines, its fixed names and ports), each unit test alone.

    The cluster's goes first, to one worker; the unit tests to the other while the first builds the
    image; then the installers' (ORDER, below)."""
    path = nodeid.split("::", 1)[0]
    if CLUSTER_MODULES.match(path):
        return CLUSTER_UNIT
    return path if path.startswith("test/e2e/") else nodeid


# The order the units are handed out in (xdist's own order, by test count, is off; a worker takes
# the next unit when its own has two tests left). The cluster's first, to one worker; then the unit
# tests, one at a time, to the other, while the first builds the image (on a fresh machine, most of
# two minutes of packages fetched and unpacked on one core, which the installers' build waits for
# too); then the installers, the other long one; then Packer's two VMs, the longest chain of what is
# left (build, then boot), beside the cluster's last modules; then serve-pxe's LAN (half a minute)
# and the rack's agents (a minute), each to whichever worker asks first. Packer's module runs its
# short test first, so that when the installers end before the cluster's modules its worker asks
# early and takes the shorter of the two, leaving the rack to the cluster's worker. Measured on clean
# clones: with the rack and serve-pxe's LAN before Packer, the installers' worker ran Packer last,
# alone, while the other had only the unit tests left (726 and 764 s, 2026-11-28 evening); with the
# rack before serve-pxe's LAN, Packer's worker asked first, took the rack and ended a minute after
# the other (785 s, 22:45); in this order, at 23:08, the installers ended last and the cluster's
# worker took both, the two ending 31 s apart. The unit tests came last until 2026-11-29, when the
# suite was CPU-bound on both cores from the first boot on, but for the first two minutes.
UNIT_TESTS = "the unit tests"
ORDER = (CLUSTER_UNIT, UNIT_TESTS, "test/e2e/test_installers.py", "test/e2e/test_packer.py",
         "test/e2e/test_serve_pxe_lan.py", "test/e2e/test_rack.py")


def unit_order(nodeid: str) -> int:
    unit = UNIT_TESTS if nodeid.startswith("test/unit/") else work_unit(nodeid)
    return ORDER.index(unit) if unit in ORDER else len(ORDER)


def pytest_collection_modifyitems(session, config, items):
    if hasattr(config, "workerinput"):   # an xdist worker: its collection is what the units are made of
        items.sort(key=lambda item: unit_order(item.nodeid))   # stable: each module's own order stays


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    config.option.loadscopereorder = False   # unit_order's, not the test count's
    # xdist's own groups (xdist_group marks, --dist loadgroup) ride on rewritten test ids, which
    # pytest 9.2 no longer lets a plugin rewrite: they silently stop grouping (pytest-xdist #1386).
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return Scheduler(config, log)
