"""Your own checks of a running test cluster, in Python, run by `doit test_vm_integration`.

A pytest plugin: a test that asks for the `cluster` fixture gets a handle on
every running node (clusteros.vm.node.Node), by name or number:

    def test_every_node_runs_slurmd(cluster):
        for node in cluster:
            node.wait_for_unit("slurmd.service")

    def test_a_job_spans_the_cluster(cluster):
        out = cluster["node1"].wait_until_succeeds(f"srun -N{len(cluster)} hostname")
        assert sorted(out.split()) == cluster.names

Put such files in a folder and name it in `vm.tests` in cluster.yaml, or run
`doit test_vm_integration --tests FOLDER`.
"""

from __future__ import annotations

from typing import Callable, Iterator, TypeVar

import pytest

from clusteros.spec import load_spec
from clusteros.vm import cluster as lifecycle
from clusteros.vm.node import Node

T = TypeVar("T")


class ClusterHandle:
    def __init__(self, spec: dict, nodes: list[Node]):
        self.spec, self.nodes = spec, nodes

    def __getitem__(self, key: str | int) -> Node:
        """cluster["node2"] or cluster[2] (numbered from 1, as `clusteros shell` numbers them)."""
        if isinstance(key, int):
            return self.nodes[key - 1]
        for node in self.nodes:
            if node.name == key:
                return node
        raise KeyError(f"no node {key!r} in the test cluster ({', '.join(self.names)})")

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def names(self) -> list[str]:
        return sorted(node.name for node in self.nodes)

    def retry(self, check: Callable[[], T], timeout: float = 120.0, every: float = 2.0) -> T:
        return self.nodes[0].retry(check, timeout, every)


@pytest.fixture(scope="session")
def spec() -> dict:
    return load_spec()


@pytest.fixture(scope="session")
def cluster(spec) -> ClusterHandle:
    return ClusterHandle(spec, lifecycle.running_nodes(spec))
