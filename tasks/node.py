"""node: the node-agent zipapp."""

from clusteros import agent, paths
from tasks.code import code_deps
from tasks.context import node_pyz


def task_node():
    """Package the node-agent (node/clusteros_node) as dist/node-agent.pyz."""
    return {
        "actions": [(agent.build_pyz, [paths.NODE_SRC, node_pyz()])],
        "file_dep": agent.sources(paths.NODE_SRC) + list(code_deps("clusteros.agent")),
        "targets": [node_pyz()],
        "clean": True,
    }
