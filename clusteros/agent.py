"""Package the node-agent (node/clusteros_node) as one runnable zipapp.

The archive is byte-for-byte reproducible: sorted entries and fixed timestamps,
so an unchanged source tree gives an unchanged file and the image is not rebuilt.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from clusteros.atomic import atomic_path

PACKAGE = "clusteros_node"
FIXED_TIME = (2025, 1, 1, 0, 0, 0)
MAIN = f"# -*- coding: utf-8 -*-\nimport sys\nfrom {PACKAGE}.__main__ import main\nsys.exit(main())\n"


def sources(src_root: Path) -> list[Path]:
    return sorted(p for p in (src_root / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts)


def build_pyz(src_root: Path, target: Path) -> None:
    with atomic_path(target, mode=0o755) as tmp:
        with open(tmp, "wb") as raw:
            raw.write(b"#!/usr/bin/env python3\n")
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                entries = [("__main__.py", MAIN.encode())]
                entries += [(p.relative_to(src_root).as_posix(), p.read_bytes()) for p in sources(src_root)]
                for name, data in entries:
                    info = zipfile.ZipInfo(name, FIXED_TIME)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    archive.writestr(info, data)
