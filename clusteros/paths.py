"""Where things live. Every location a user or CI may want to move is an environment variable.

- dist/ (CLUSTEROS_DIST): build outputs, logs, the running test cluster's files.
- doit's state (CLUSTEROS_DOIT_DB): dist/.doit.db by default, so caching dist/ keeps it.
- cache (CLUSTEROS_CACHE_DIR): root file systems and downloaded packages, shared by
  every checkout: $XDG_CACHE_HOME/clusteros.
- state (CLUSTEROS_STATE_DIR): secrets and the generated test SSH key, mode 0700:
  $XDG_STATE_HOME/clusteros/<cluster>.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = PROJECT_ROOT / "schema" / "cluster.schema.json"
IMAGES_DIR = PROJECT_ROOT / "images"
NODE_SRC = PROJECT_ROOT / "node"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def dist_dir() -> Path:
    return _env_path("CLUSTEROS_DIST", Path("dist"))


def logs_dir() -> Path:
    return dist_dir() / "logs"


def doit_db() -> Path:
    return _env_path("CLUSTEROS_DOIT_DB", dist_dir() / ".doit.db")


def cache_dir() -> Path:
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return _env_path("CLUSTEROS_CACHE_DIR", xdg / "clusteros")


def state_dir(cluster_name: str) -> Path:
    xdg = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return _env_path("CLUSTEROS_STATE_DIR", xdg / "clusteros") / cluster_name


def vm_dir() -> Path:
    """The running test cluster: overlays, sockets, serial logs, pid files."""
    return dist_dir() / "vm"
