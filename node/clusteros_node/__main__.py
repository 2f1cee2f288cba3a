"""clusteros-node: the node-agent (`run`), and what an owner asks of it on a node.

    clusteros-node status [--json]         what this node's agent knows
    clusteros-node approve FINGERPRINT     let the machine asking to join with that key in
    clusteros-node forget NAME             drop a member's binding (a machine gone for good)
    clusteros-node rotate < BUNDLE         take a new credential the owner signed, and hand it on
    clusteros-node receive-pxe < SET.tar   take a PXE set (`doit pxe`) into /srv/clusteros/pxe
    clusteros-node serve-pxe [--boot ram]  netboot the machines of this LAN from it (until stopped)
    clusteros-node wifi DEVICE             join network.wifi on DEVICE, if it is this node's (clusteros-wifi@)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clusteros_node import SPEC_FILE


def load_spec(path: str = SPEC_FILE) -> dict:
    return json.loads(Path(path).read_text())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusteros-node", description="ClusterOS node-agent")
    p.add_argument("--spec", default=SPEC_FILE, help="resolved cluster spec (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent: membership, WireGuard mesh, SLURM and K3s roles")
    run.add_argument("--root", type=Path, help="keep state under this folder (the rack test runs many agents)")
    run.add_argument("--no-system", action="store_true", help="protocol only: change nothing on this machine")
    status = sub.add_parser("status", help="what this node's agent knows")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("approve", help="let a machine asking to join in").add_argument("fingerprint")
    sub.add_parser("forget", help="forget a member that is gone for good").add_argument("name")
    sub.add_parser("rotate", help="take a new credential (the owner's, from stdin) and hand it on")
    _pxe_parsers(sub)
    sub.add_parser("wifi", help="become wpa_supplicant on DEVICE, if it is this node's WLAN device "
                   "(clusteros-wifi@DEVICE.service runs it)").add_argument("device")
    return p


def _pxe_parsers(sub) -> None:
    from clusteros_node import pxechoices
    receive = sub.add_parser("receive-pxe", help="take a PXE set (a tar of `doit pxe`'s folder) from stdin")
    receive.add_argument("--into", type=Path, default=pxechoices.SET_DIR, help="where to keep it (default: %(default)s)")
    serve = sub.add_parser("serve-pxe", help="netboot the machines of this LAN from a PXE set, until stopped")
    serve.add_argument("--from", dest="set_dir", type=Path, default=pxechoices.SET_DIR,
                       help="the PXE set (default: %(default)s)")
    serve.add_argument("--interface", help="the LAN to serve (default: this node's cluster LAN)")
    serve.add_argument("--dhcp", choices=pxechoices.DHCP_MODES, default="auto",
                       help="proxy: the LAN has a DHCP server; range: lease addresses too; auto: ask the LAN")
    serve.add_argument("--range", help="FIRST,LAST addresses to lease in range mode (default: above the nodes')")
    serve.add_argument("--boot", choices=pxechoices.BOOTS, default="install",
                       help="what a netbooted machine does by default (its menu offers the others)")
    serve.add_argument("--http-port", type=int, default=pxechoices.HTTP_PORT, help="for the image (default: %(default)s)")
    serve.add_argument("--run-dir", type=Path, default=pxechoices.RUN_DIR,
                       help="for what is served and dnsmasq's leases (default: %(default)s)")


def serve_pxe(args) -> int:
    from clusteros_node import pxeserve
    try:
        if args.command == "receive-pxe":
            names = pxeserve.receive(sys.stdin.buffer, args.into)
            print(f"clusteros-node: PXE set in {args.into}: {', '.join(names)}")
            return 0
        lan = pxeserve.lan_of(args.interface, load_spec(args.spec))
        plan = pxeserve.Plan(lan, pxeserve.dhcp_range(args.dhcp, lan, args.range), args.boot, args.http_port)
        return pxeserve.serve(args.set_dir, plan, args.run_dir)
    except (pxeserve.ServeError, OSError) as why:
        print(f"clusteros-node {args.command}: {why}", file=sys.stderr)
        return 2


def ask(request: dict) -> int:
    from clusteros_node import control
    from clusteros_node.places import Places
    try:
        answer = control.ask(Places().control_socket, request)
    except OSError as why:
        print(f"clusteros-node: cannot reach the agent ({why}); is node-agent.service running? (root only)",
              file=sys.stderr)
        return 2
    print(answer["message"], file=sys.stdout if answer["ok"] else sys.stderr)
    return 0 if answer["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "status":
        from clusteros_node import status as status_mod
        state = status_mod.load()
        print(json.dumps(state, indent=2) if args.json else status_mod.render(state))
        return 1 if "error" in state or state.get("stale") else 0
    if args.command in ("approve", "forget"):
        return ask({args.command: getattr(args, "fingerprint" if args.command == "approve" else "name")})
    if args.command == "rotate":
        return ask({"rotate": sys.stdin.read()})
    if args.command in ("receive-pxe", "serve-pxe"):
        return serve_pxe(args)
    if args.command == "wifi":
        from clusteros_node import wifi
        return wifi.run(args.device, load_spec(args.spec)["cluster"]["name"])
    from clusteros_node import daemon
    from clusteros_node.places import Places
    places = Places.under(args.root) if args.root else Places()
    return daemon.start(load_spec(args.spec), places, apply_system=not args.no_system)


if __name__ == "__main__":
    sys.exit(main())
