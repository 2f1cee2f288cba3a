"""Load, check and resolve cluster.yaml.

Three steps, each its own module: reading (`reader`: safe YAML, limits, where
each value stands), the schema (`schema`: errors in plain words, and every
default), and the checks a schema cannot express (`checks`: one small checker
per concern). `load_spec` returns the *resolved* spec (`resolve`): defaults
filled in, the node list made explicit. Every later stage reads only that.

Every problem is collected and reported at once as a `SpecError`, each with its
place in the file ("nodes[2].name (line 14): ...") and a hint where one helps.
"""

from __future__ import annotations

import os
from pathlib import Path

from clusteros.spec.checks import semantic_problems
from clusteros.spec.problems import Problem, SpecError, format_path
from clusteros.spec.reader import parse_yaml, place
from clusteros.spec.resolve import (image_view, mac_prefix, node_mac, node_view, resolve, rootfs_view,
                                    vm_view)
from clusteros.spec.schema import fill_defaults, load_schema, schema_problems

__all__ = ["Problem", "SpecError", "check_spec_data", "format_path", "image_view", "load_schema", "load_spec",
           "mac_prefix", "node_mac", "node_view", "rootfs_view", "spec_path", "vm_view"]


def spec_path(explicit: str | os.PathLike | None = None) -> Path:
    """The spec in use: an explicit path, else $CLUSTEROS_SPEC, else ./cluster.yaml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CLUSTEROS_SPEC") or "cluster.yaml")


def load_spec(path: str | os.PathLike | None = None) -> dict:
    """Read, check and resolve a spec file. Raises SpecError listing every problem."""
    path = spec_path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(source, [Problem("", "file not found",
                                         "run from the project directory or set CLUSTEROS_SPEC")]) from None
    except OSError as exc:
        raise SpecError(source, [Problem("", f"cannot read: {exc.strerror}", "")]) from None
    return check_spec_data(data, source, path.resolve().parent)


def check_spec_data(data: bytes, source: str, base_dir: Path) -> dict:
    obj, lines = parse_yaml(data, source)
    if not isinstance(obj, dict):
        raise SpecError(source, [Problem("", "the spec must be a mapping with at least `cluster: {name: ...}`",
                                         "start from the cluster.yaml shipped with ClusterOS", 1)])
    schema = load_schema()
    problems = schema_problems(obj, schema)
    if not problems:
        filled = fill_defaults(obj, schema)
        problems = semantic_problems(filled, base_dir)
    if problems:
        raise SpecError(source, [place(p, lines) for p in problems])
    return resolve(filled, base_dir, schema)
