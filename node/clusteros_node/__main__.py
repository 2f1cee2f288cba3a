"""node-agent entry point: `node-agent identity | status`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clusteros_node import SPEC_FILE, identity


def load_spec(path: str = SPEC_FILE) -> dict:
    return json.loads(Path(path).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="node-agent", description="ClusterOS node-agent")
    parser.add_argument("--spec", default=SPEC_FILE, help="resolved cluster spec (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("identity", help="set this node's hostname and cluster LAN address (early boot)")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    if args.command == "identity":
        me = identity.apply(spec)
        print(f"node-agent: this is {me.name} ({me.address or 'no static LAN address'} on {me.interface})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
