"""Which VMs a test cluster of N nodes has: names, MACs, addresses, ports, sizes.

Pure: the same spec, count and host always give the same layout, so a second
`doit test_vm` finds the nodes the first one started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from clusteros_node import addressing
from clusteros.errors import UsageError
from clusteros.spec import node_mac

MAX_VMS = 16


@dataclass(frozen=True)
class VMNode:
    index: int
    name: str
    lan_mac: str
    uplink_mac: str
    lan_address: str
    ssh_port: int
    cpus: int
    memory: int


def uplink_mac(cluster_name: str, index: int) -> str:
    """The same cluster bytes in another locally administered range: never collides with the LAN."""
    return "52:54:01" + node_mac(cluster_name, index)[8:]


def vm_cpus(setting: int | str, count: int, host_cpus: int | None = None) -> int:
    """vm.cpus: a number, or auto: the host's cores shared among `count` VMs, at least one each.

    Without KVM each of a VM's CPUs is a host thread: on 2 cores one node boots to SSH in 18 to 20 s
    with two CPUs against 25 to 31 s with one (the same image), while three nodes reach `srun -N3`
    sooner with one CPU each than with two (88 s against 110 s), each VM's CPUs then contending for
    the same cores.
    """
    if setting != "auto":
        return int(setting)
    cores = host_cpus if host_cpus is not None else len(os.sched_getaffinity(0))
    return max(1, cores // count)


def layout(spec: dict, count: int, host_cpus: int | None = None) -> list[VMNode]:
    """The VMs for `count` nodes: spec nodes first, then <prefix><i> of the cluster's MAC range."""
    vm, name = spec["vm"], spec["cluster"]["name"]
    cpus = vm_cpus(vm["cpus"], count, host_cpus)
    listed = {n["index"]: n for n in spec["nodes"]}
    subnet = spec["network"]["lan"]["subnet"]
    nodes = []
    for i in range(1, count + 1):
        node = listed.get(i, {})
        nodes.append(VMNode(
            index=i,
            name=node.get("name") or f"{spec['node_naming']['prefix']}{i}",
            lan_mac=node.get("mac") or node_mac(name, i),
            uplink_mac=uplink_mac(name, i),
            lan_address=node.get("address") or addressing.lan_address(subnet, i),
            ssh_port=vm["ssh_base_port"] + i - 1,
            cpus=node.get("cpus") or cpus,
            memory=node.get("memory") or vm["memory"],
        ))
    return nodes


def vm_count(spec: dict, override: str | int | None) -> int:
    """The number of VMs: the command line's, else vm.nodes."""
    if override in (None, ""):
        return spec["vm"]["nodes"]
    try:
        count = int(override)
    except ValueError:
        raise UsageError(f"nodes={override!r} is not a number", fix="give a number of nodes, e.g. "
                         "`doit test_vm --nodes 5`") from None
    if not 1 <= count <= MAX_VMS:
        raise UsageError(f"nodes={count}: the test cluster has 1 to {MAX_VMS} nodes", fix=f"give 1 to {MAX_VMS}")
    if spec["node_naming"]["listed"] and count > len(spec["nodes"]):
        raise UsageError(f"nodes={count}: cluster.yaml lists {len(spec['nodes'])} nodes",
                         fix="list more nodes to run more, or use `nodes: {count: N}`")
    return count
