"""What every task module shares: the resolved spec and the output names.

Loading reads one small file and checks it; it runs no command and touches no
network, so `doit list` answers at once. A bad spec stops doit with exit 2.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from clusteros import paths
from clusteros.spec import SpecError, load_spec, spec_path


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, env_key: tuple) -> dict:
    return load_spec(path)


def spec() -> dict:
    path = spec_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    env_key = tuple(os.environ.get(k) for k in ("CLUSTEROS_DIST", "CLUSTEROS_STATE_DIR", "CLUSTEROS_CACHE_DIR"))
    try:
        return _load(str(path), mtime, env_key)
    except SpecError as exc:
        print(exc.report(), file=sys.stderr)
        raise SystemExit(2) from None


def spec_file() -> Path:
    return spec_path()


def dist(suffix: str) -> Path:
    """dist/<cluster name><suffix>, e.g. dist('.qcow2')."""
    return paths.dist_dir() / f"{spec()['cluster']['name']}{suffix}"


def node_pyz() -> Path:
    return paths.dist_dir() / "node-agent.pyz"
