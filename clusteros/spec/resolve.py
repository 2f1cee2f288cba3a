"""The resolved spec every stage reads, and the narrow views of it each stage depends on.

Resolving makes the node list explicit (name, role, LAN MAC and address from
the address plan) and turns paths relative to the spec file into absolute ones.
Keeping the views narrow is what lets a change to vm.memory rebuild no image.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

from clusteros_node import addressing
from clusteros.spec.checks import resolve_path
from clusteros.spec.schema import default_of


def mac_prefix(cluster_name: str) -> str:
    """Locally administered MAC prefix for a cluster's test VMs; byte 6 is the node index."""
    digest = hashlib.sha256(cluster_name.encode()).digest()
    return "52:54:00:{:02x}:{:02x}".format(digest[0], digest[1])


def node_mac(cluster_name: str, index: int) -> str:
    return f"{mac_prefix(cluster_name)}:{index:02x}"


def node_prefix(raw_nodes, schema: dict) -> str:
    """The name prefix: the count form's, else the schema's default (names unlisted machines)."""
    if isinstance(raw_nodes, dict):
        return raw_nodes["prefix"]
    return default_of(schema, "node_prefix")


def expand_nodes(raw_nodes, cluster_name: str, subnet: str, prefix: str) -> list[dict]:
    if isinstance(raw_nodes, dict):
        raw_nodes = [{"name": f"{prefix}{i}"} for i in range(1, raw_nodes["count"] + 1)]
    return [{
        "index": index,
        "name": node["name"],
        "role": node.get("role", "auto"),
        "mac": node.get("mac") or node_mac(cluster_name, index),
        "address": node.get("address") or addressing.lan_address(subnet, index),
        "cpus": node.get("cpus"),
        "memory": node.get("memory"),
    } for index, node in enumerate(raw_nodes, start=1)]


def resolve(spec: dict, base_dir: Path, schema: dict) -> dict:
    """Turn a valid, default-filled spec into the resolved form all stages read."""
    spec = copy.deepcopy(spec)
    name = spec["cluster"]["name"]
    raw_nodes = spec["nodes"]
    prefix = node_prefix(raw_nodes, schema)
    spec["node_naming"] = {"prefix": prefix, "mac_prefix": mac_prefix(name), "listed": isinstance(raw_nodes, list)}
    spec["nodes"] = expand_nodes(raw_nodes, name, spec["network"]["lan"]["subnet"], prefix)
    spec["vm"].setdefault("nodes", len(spec["nodes"]))
    spec["services"]["slurm"].setdefault("storage_node", spec["nodes"][0]["name"])
    for section, key in ((spec["cluster"], "secret_file"), (spec["services"]["k3s"], "file"),
                         (spec["network"].get("wifi") or {}, "psk_file")):
        if section.get(key):
            section[key] = str(resolve_path(section[key], base_dir))
    spec["vm"]["tests"] = [str(resolve_path(folder, base_dir)) for folder in spec["vm"]["tests"]]
    return spec


# --------------------------------------------------------------------------
# Views


def rootfs_view(spec: dict) -> dict:
    image = spec["image"]
    return {k: image[k] for k in ("distro", "suite", "mirror", "architecture", "packages", "firmware")}


def node_view(spec: dict) -> dict:
    """The part of the spec baked into the image as /etc/clusteros/spec.json."""
    return {k: spec[k] for k in ("cluster", "nodes", "node_naming", "network", "services")} | {
        "image": {k: spec["image"][k] for k in ("distro", "suite", "timezone", "locale")}}


def image_view(spec: dict) -> dict:
    return {"node": node_view(spec), "image": spec["image"]}


def vm_view(spec: dict) -> dict:
    return {"vm": spec["vm"], "nodes": spec["nodes"], "cluster": spec["cluster"]["name"]}
