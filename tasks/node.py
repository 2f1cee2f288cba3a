"""node: the node-agent zipapp."""

from clusteros import agent, paths
from tasks.context import node_pyz


def task_node():
    """Package the node-agent (node/clusteros_node) as dist/node-agent.pyz."""
    return {
        "actions": [(agent.build_pyz, [paths.NODE_SRC, node_pyz()])],
        "file_dep": agent.sources(paths.NODE_SRC) + [paths.PROJECT_ROOT / "clusteros" / "agent.py"],
        "targets": [node_pyz()],
        "clean": True,
    }
