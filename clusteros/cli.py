"""The `clusteros` command: validate, doctor, the test cluster's shell, the owner's approve, rotate,
serve-pxe and owner-stick, and flash (a stick, written and read back)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clusteros import doctor as doctor_mod
from clusteros.errors import ClusterOSError, UsageError
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


def cmd_approve(args) -> int:
    from clusteros import owner
    return owner.approve(load_spec(args.spec), args.fingerprint, args.via)


def cmd_rotate(args) -> int:
    from clusteros import owner
    return owner.rotate(load_spec(args.spec), args.via)


def cmd_serve_pxe(args) -> int:
    from clusteros import owner, paths
    spec = load_spec(args.spec)
    if args.stop:
        return owner.stop_pxe(spec, args.via)
    options = ["--boot", args.boot, "--dhcp", args.dhcp] + (["--range", args.range] if args.range else []) \
        + (["--interface", args.interface] if args.interface else [])
    return owner.serve_pxe(spec, args.via, paths.dist_dir() / "pxe", options)


def cmd_owner_stick(args) -> int:
    from clusteros import paths
    from clusteros.installer import owner_part
    spec = load_spec(args.spec)
    name = spec["cluster"]["name"]
    usb, part = paths.dist_dir() / f"{name}-usb.img.gz", paths.dist_dir() / f"{name}-usb-credential.bin"
    for needed in (usb, part):
        if not needed.exists():
            raise ClusterOSError(f"{needed} is missing", fix="build it with `doit usb`")
    owner_part.owner_stick(usb, part, Path(args.output))
    print(f"{args.output}: the installer and your credential (0600): a node installed from it joins {name} "
          "by itself. Keep it like a key.")
    return 0


def cmd_flash(args) -> int:
    from clusteros import flash, paths
    name = load_spec(args.spec)["cluster"]["name"]
    dist = paths.dist_dir()
    image = Path(args.image) if args.image else dist / f"{name}-usb.img.gz"
    sha = Path(str(image).removesuffix(".gz") + ".sha256")
    for needed in (image, sha) + ((dist / f"{name}-usb-credential.bin",) if args.credential else ()):
        if not needed.exists():
            raise UsageError(f"{needed} is missing", fix="build it with `doit usb`")
    flash.flash(args.device, image, sha, credential=dist / f"{name}-usb-credential.bin" if args.credential else None,
                yes=args.yes, force=args.force)
    return 0


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
    p = sub.add_parser("approve", help="let a machine asking to join in (its key fingerprint, from its console)")
    p.add_argument("fingerprint")
    p.add_argument("--via", default="1", help="the member to ask: a test node number (default 1) or user@host")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_approve)
    p = sub.add_parser("rotate", help="replace the cluster credential on every member (see docs/security.md)")
    p.add_argument("--via", default="1", help="the member to hand it to: a test node number (default 1) or user@host")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_rotate)
    p = sub.add_parser("serve-pxe", help="a member netboots the machines of its LAN from dist/pxe (until --stop)")
    p.add_argument("--via", default="1", help="the member that serves: a test node number (default 1) or user@host")
    p.add_argument("--boot", choices=("install", "ask", "ram"), default="install",
                   help="what a netbooted machine does unless its menu is used (default: install)")
    p.add_argument("--dhcp", choices=("auto", "proxy", "range"), default="auto",
                   help="proxy: the LAN has a DHCP server; range: lease addresses too; auto: ask the LAN (default)")
    p.add_argument("--range", help="FIRST,LAST addresses to lease in range mode (default: 64 above the nodes')")
    p.add_argument("--interface", help="the member's LAN interface (default: its cluster LAN)")
    p.add_argument("--stop", action="store_true", help="stop serving")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_serve_pxe)
    p = sub.add_parser("owner-stick", help="a stick image with your credential after the installer (0600)")
    p.add_argument("output", help="the image file to write (then write it to a stick)")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_owner_stick)
    p = sub.add_parser("flash", help="write the USB installer to a stick, then read it back and check it")
    p.add_argument("device", help="the stick's whole device, e.g. /dev/sdb (see lsblk)")
    p.add_argument("--credential", action="store_true",
                   help="add your credential after the installer: a node installed from it joins by itself")
    p.add_argument("--yes", action="store_true", help="erase it without asking")
    p.add_argument("--force", action="store_true", help="write a disk that does not say it is removable")
    p.add_argument("--image", help="another .img.gz, with its .img.sha256 beside it (default: dist/<name>-usb.img.gz)")
    p.add_argument("--spec")
    p.set_defaults(func=cmd_flash)
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
