"""Shared by every test: import paths, and the rule for tests that need a tool.

`@pytest.mark.needs("packer")`: where the tool is missing the test is skipped
with the reason in pytest's summary (`-ra`); in CI (CI set), where every tool is
installed, a missing tool fails the test instead: nothing is silently skipped there.
"""

import os
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
