"""Checks a schema cannot express: uniqueness, subnets, cross-references, secrets.

One small checker per concern, registered in CHECKS. Each takes the spec with
its defaults filled (and the schema already satisfied) and the folder paths are
relative to, and yields the problems it finds.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from pathlib import Path
from typing import Callable, Iterable

from clusteros_node import addressing
from clusteros.spec.problems import Problem

Checker = Callable[[dict, Path], Iterable[Problem]]
CHECKS: list[Checker] = []


def check(fn: Checker) -> Checker:
    CHECKS.append(fn)
    return fn


def semantic_problems(spec: dict, base_dir: Path) -> list[Problem]:
    return [problem for checker in CHECKS for problem in checker(spec, base_dir)]


def resolve_path(value: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base_dir / path


def missing_file(place: str, value: str, base_dir: Path, hint: str = "") -> Iterable[Problem]:
    if not resolve_path(value, base_dir).is_file():
        yield Problem(place, f"{value!r} does not exist", hint)


def listed_nodes(spec: dict) -> list[dict]:
    return spec["nodes"] if isinstance(spec["nodes"], list) else []


def node_count(spec: dict) -> int:
    return len(spec["nodes"]) if isinstance(spec["nodes"], list) else spec["nodes"]["count"]


def node_names(spec: dict) -> set[str]:
    if isinstance(spec["nodes"], list):
        return {n["name"] for n in spec["nodes"]}
    return {f"{spec['nodes']['prefix']}{i}" for i in range(1, node_count(spec) + 1)}


# --------------------------------------------------------------------------
# network


@check
def mesh_and_lan_are_apart(spec: dict, base_dir: Path) -> Iterable[Problem]:
    net = spec["network"]
    lan, wg = (ipaddress.ip_network(net[k]["subnet"]) for k in ("lan", "wireguard"))
    if lan.overlaps(wg):
        yield Problem("network.wireguard.subnet", "overlaps network.lan.subnet",
                      "give the mesh its own range, e.g. 10.99.0.0/24")


@check
def subnets_hold_every_node(spec: dict, base_dir: Path) -> Iterable[Problem]:
    lan, wg = spec["network"]["lan"]["subnet"], spec["network"]["wireguard"]["subnet"]
    vms = max(node_count(spec), spec["vm"].get("nodes") or 0)
    if addressing.lan_capacity(lan) < vms:
        yield Problem("network.lan.subnet", f"{lan} is too small for {vms} nodes",
                      f"nodes take addresses from host {addressing.LAN_HOST_OFFSET + 1} on: use a /24")
    if addressing.wg_capacity(wg) < node_count(spec):
        yield Problem("network.wireguard.subnet", f"{wg} is too small for {node_count(spec)} nodes", "use a /24")


@check
def node_addresses_are_on_the_lan(spec: dict, base_dir: Path) -> Iterable[Problem]:
    lan = spec["network"]["lan"]["subnet"]
    for i, node in enumerate(listed_nodes(spec)):
        if "address" in node and not addressing.contains_host(lan, node["address"]):
            yield Problem(f"nodes[{i}].address", f"{node['address']} is not a host address in {lan}",
                          "give an address inside network.lan.subnet, or leave it out")
    gateway = spec["network"]["lan"].get("gateway")
    if gateway and not addressing.contains_host(lan, gateway):
        yield Problem("network.lan.gateway", f"{gateway} is not a host address in {lan}", "")


@check
def wifi_key_has_one_source(spec: dict, base_dir: Path) -> Iterable[Problem]:
    wifi = spec["network"].get("wifi")
    if wifi is None:
        return
    sources = [k for k in ("psk_env", "psk_file") if k in wifi]
    if len(sources) != 1:
        yield Problem("network.wifi", "needs exactly one of psk_env or psk_file",
                      "the WiFi key is read at build time from an environment variable or a 0600 file")
    elif "psk_file" in wifi:
        yield from missing_file("network.wifi.psk_file", wifi["psk_file"], base_dir)
    if (ssid_bytes := len(wifi["ssid"].encode())) > 32:
        yield Problem("network.wifi.ssid", f"{ssid_bytes} bytes in UTF-8: an SSID has at most 32",
                      "give the network's name exactly as the access point broadcasts it")


# --------------------------------------------------------------------------
# nodes


@check
def node_fields_are_unique(spec: dict, base_dir: Path) -> Iterable[Problem]:
    for field in ("name", "mac", "address"):
        seen: dict[str, int] = {}
        for i, node in enumerate(listed_nodes(spec)):
            value = node.get(field)
            if value is None:
                continue
            if value in seen:
                yield Problem(f"nodes[{i}].{field}", f"{value!r} is already used by nodes[{seen[value]}]",
                              "every node needs its own name" if field == "name" else "")
            seen.setdefault(value, i)


@check
def vm_count_fits_the_node_list(spec: dict, base_dir: Path) -> Iterable[Problem]:
    listed = listed_nodes(spec)
    if listed and spec["vm"].get("nodes", 0) > len(listed):
        yield Problem("vm.nodes", f"{spec['vm']['nodes']} VMs but only {len(listed)} nodes are listed",
                      "list more nodes, or use `nodes: {count: N}`")


# --------------------------------------------------------------------------
# services


@check
def one_default_partition(spec: dict, base_dir: Path) -> Iterable[Problem]:
    defaults = [i for i, p in enumerate(spec["services"]["slurm"]["partitions"]) if p.get("default")]
    if len(defaults) > 1:
        yield Problem(f"services.slurm.partitions[{defaults[1]}].default", "a second default partition",
                      "only one partition can be the default")


@check
def partitions_name_real_nodes(spec: dict, base_dir: Path) -> Iterable[Problem]:
    names = node_names(spec)
    for i, part in enumerate(spec["services"]["slurm"]["partitions"]):
        for j, name in enumerate(part.get("nodes", [])):
            if name not in names:
                close = difflib.get_close_matches(name, sorted(names), n=1)
                yield Problem(f"services.slurm.partitions[{i}].nodes[{j}]", f"no node is named {name!r}",
                              f"did you mean {close[0]!r}?" if close else "")


@check
def storage_node_is_a_listed_node(spec: dict, base_dir: Path) -> Iterable[Problem]:
    name = spec["services"]["slurm"].get("storage_node")
    names = node_names(spec)
    if name is not None and name not in names:
        close = difflib.get_close_matches(name, sorted(names), n=1)
        yield Problem("services.slurm.storage_node", f"no node is named {name!r}",
                      f"did you mean {close[0]!r}?" if close else "name one of the nodes: " + ", ".join(sorted(names)))


@check
def k3s_source_is_complete(spec: dict, base_dir: Path) -> Iterable[Problem]:
    k3s = spec["services"]["k3s"]
    if "url" in k3s and "file" in k3s:
        yield Problem("services.k3s", "gives both url and file",
                      "keep one: url to download, file for air-gapped builds")
    if ("url" in k3s or "file" in k3s) and "sha256" not in k3s:
        yield Problem("services.k3s.sha256", "is required with url or file",
                      "the binary is checked against it before it goes into the image")
    if "file" in k3s:
        yield from missing_file("services.k3s.file", k3s["file"], base_dir)


# --------------------------------------------------------------------------
# image and cluster


@check
def packer_iso_base_is_complete(spec: dict, base_dir: Path) -> Iterable[Problem]:
    image = spec["image"]
    packer = image["packer"]
    if image["builder"] != "packer" or packer["base"] != "iso":
        return
    if not ("iso_url" in packer and "iso_sha256" in packer):
        yield Problem("image.packer", "base: iso needs iso_url and iso_sha256",
                      "or use base: native, which boots the native build and works offline")
    if image["distro"] != "ubuntu":
        yield Problem("image.packer.base", "iso is Ubuntu's live-server autoinstall",
                      "set image.distro: ubuntu, or use base: native")


@check
def users_are_distinct_and_not_root(spec: dict, base_dir: Path) -> Iterable[Problem]:
    seen: dict[str, int] = {}
    for i, user in enumerate(spec["image"]["users"]):
        if user["name"] in seen:
            yield Problem(f"image.users[{i}].name", f"{user['name']!r} is listed twice", "")
        if user["name"] == "root":
            yield Problem(f"image.users[{i}].name", "root cannot log in over SSH", "name a normal user; it gets sudo")
        seen.setdefault(user["name"], i)


@check
def secret_file_is_usable(spec: dict, base_dir: Path) -> Iterable[Problem]:
    secret_file = spec["cluster"].get("secret_file")
    if secret_file is None:
        return
    path = resolve_path(secret_file, base_dir)
    if not path.is_file():
        yield Problem("cluster.secret_file", f"{secret_file!r} does not exist",
                      "create it with: head -c 32 /dev/urandom > FILE && chmod 600 FILE")
    elif path.stat().st_size < 32:
        yield Problem("cluster.secret_file", "holds fewer than 32 bytes", "use at least 32 random bytes")
