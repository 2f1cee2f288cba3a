"""The image manifest: what an image was made from and what came out, whoever built it.

One builder for every path (native, Packer on the native base, Packer from an
ISO), so every manifest has the same shape.
"""

from __future__ import annotations

from pathlib import Path

from clusteros.hashing import sha256_file


def image_manifest(*, name: str, image: dict, epoch: int, builder: dict, disk: dict, inputs: dict,
                   qcow2: Path, qcow2_name: str, packages: dict[str, str], k3s_binary: Path | None) -> dict:
    """`qcow2` is the finished image file (its hash is taken here), to be named `qcow2_name`;
    `disk` holds its size and UUIDs (None where another installer laid the disk out)."""
    return {
        "name": name,
        "distro": image["distro"], "suite": image["suite"], "architecture": image["architecture"],
        "source_date_epoch": epoch,
        "builder": builder,
        "disk": disk,
        "inputs": inputs,
        "outputs": {"qcow2": {"file": qcow2_name, "sha256": sha256_file(qcow2), "bytes": qcow2.stat().st_size},
                    "raw": {"file": str(Path(qcow2_name).with_suffix(".raw")), "bytes": disk["size"]}},
        "packages": packages,
        "k3s": {"sha256": sha256_file(k3s_binary)} if k3s_binary is not None else None,
    }
