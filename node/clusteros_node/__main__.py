"""node-agent entry point: `run` (the daemon), `status`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clusteros_node import SPEC_FILE


def load_spec(path: str = SPEC_FILE) -> dict:
    return json.loads(Path(path).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusteros-node", description="ClusterOS node-agent")
    parser.add_argument("--spec", default=SPEC_FILE, help="resolved cluster spec (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the agent: membership, WireGuard mesh, SLURM and K3s roles")
    status = sub.add_parser("status", help="what this node's agent knows")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    if args.command == "status":
        from clusteros_node import status as status_mod
        state = status_mod.load()
        print(json.dumps(state, indent=2) if args.json else status_mod.render(state))
        return 1 if "error" in state or state.get("stale") else 0
    spec = load_spec(args.spec)
    from clusteros_node import agent
    return agent.main(spec)


if __name__ == "__main__":
    sys.exit(main())
