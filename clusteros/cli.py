"""The `clusteros` command: validate, doctor, and the test cluster's shell and status."""

from __future__ import annotations

import argparse
import sys

from clusteros import doctor as doctor_mod
from clusteros.errors import ClusterOSError
from clusteros.spec import SpecError, load_spec, spec_path


def cmd_validate(args) -> int:
    spec = load_spec(args.path)
    names = ", ".join(n["name"] for n in spec["nodes"])
    print(f"{spec_path(args.path)}: ok: cluster {spec['cluster']['name']!r}, {len(spec['nodes'])} nodes ({names}), "
          f"{spec['image']['distro']} {spec['image']['suite']}, builder {spec['image']['builder']}")
    return 0


def cmd_doctor(args) -> int:
    text, ready = doctor_mod.report(load_spec(args.spec))
    print(text)
    return 0 if ready else 1


def cmd_shell(args) -> int:
    from clusteros.vm import cluster   # QMP and friends: only for the commands that need them
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return cluster.shell(load_spec(args.spec), args.node, command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clusteros", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("validate", help="check a spec (default: $CLUSTEROS_SPEC or ./cluster.yaml)")
    p.add_argument("path", nargs="?")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("doctor", help="list the tools this configuration needs, and whether KVM works")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("shell", help="log in to test node N, or run one command there: shell 1 -- CMD ARGS")
    p.add_argument("node", type=int, help="node number, from 1")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS to run instead of a login")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_shell)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(exc.report(), file=sys.stderr)
        return exc.exit_code
    except ClusterOSError as exc:
        print(f"clusteros: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
