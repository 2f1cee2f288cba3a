"""End-to-end fixtures: real doit, real mmdebstrap, real QEMU.

These tests build what a user builds (`doit image raw gz` on the shipped
cluster.yaml), in dist/e2e/ rather than the user's dist/, so that they never
touch a cluster the user is running (a taken port is a clear error instead).
They share the user's rootfs cache: a warm cache makes them fast.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist" / "e2e"


@pytest.fixture(scope="session", autouse=True)
def e2e_dist():
    """Every e2e test, and every doit it starts, works in dist/e2e/."""
    patch = pytest.MonkeyPatch()
    patch.setenv("CLUSTEROS_DIST", str(DIST))
    patch.delenv("CLUSTEROS_DOIT_DB", raising=False)
    yield DIST
    patch.undo()


def doit(*args: str, timeout: float = 1800, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """doit as a user runs it, on the shipped cluster.yaml unless `env` names another spec."""
    extra = env or {}
    env = dict(os.environ)
    env.pop("CLUSTEROS_SPEC", None)
    env.update(extra)
    out = subprocess.run([sys.executable, "-m", "doit", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    # Shown by pytest on failure: the whole story of the run.
    print(f"$ doit {' '.join(args)}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}")
    if check:
        assert out.returncode == 0, f"doit {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def image(e2e_dist) -> Path:
    doit("image", "raw", "gz")
    return DIST / "democluster.qcow2"


@pytest.fixture(scope="session")
def spec():
    from clusteros.spec import load_spec
    return load_spec(ROOT / "cluster.yaml")
