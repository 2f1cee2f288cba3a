"""The one rule for code dependencies: a task depends on the module that does its work and on
every ClusterOS module that module imports, transitively. Change a line of disk.py and the image
rebuilds; change vm/ and it does not."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from clusteros import paths

PACKAGES = {"clusteros": paths.PROJECT_ROOT / "clusteros", "clusteros_node": paths.NODE_SRC / "clusteros_node"}
_IMPORT = re.compile(r"^\s*(?:from\s+(clusteros(?:_node)?(?:\.[\w.]+)?)\s+import\s+([\w, ()]+)"
                     r"|import\s+(clusteros(?:_node)?(?:\.[\w.]+)?))", re.MULTILINE)


def module_file(dotted: str) -> Path | None:
    package, _, rest = dotted.partition(".")
    base = PACKAGES.get(package)
    if base is None:
        return None
    path = base.joinpath(*rest.split(".")) if rest else base
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def _imports(source: Path) -> set[str]:
    found = set()
    for match in _IMPORT.finditer(source.read_text()):
        module, names, plain = match.groups()
        if plain:
            found.add(plain)
            continue
        found.add(module)
        # `from clusteros import disk` imports the module clusteros.disk
        found.update(f"{module}.{name.strip()}" for name in names.strip("()").split(",") if name.strip())
    return found


@functools.lru_cache(maxsize=None)
def code_deps(*modules: str) -> tuple[Path, ...]:
    """The files of `modules` (dotted names) and of every ClusterOS module they import."""
    seen: set[Path] = set()
    todo = [m for m in modules]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_imports(path))
    return tuple(sorted(seen))
