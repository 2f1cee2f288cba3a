"""`clusteros-node serve-pxe`: this node netboots the machines of its LAN from a PXE set.

The set is `doit pxe`'s folder, put on the node by `clusteros serve-pxe` (or by hand). It holds
no secret: a machine it boots is a stranger until the owner approves it (docs/security.md).

dnsmasq runs the set's own `dnsmasq.conf.example`, unchanged, with this LAN on its command
line: the interface, the TFTP root, and a proxy range when the LAN already has a DHCP server
(dnsmasq then adds only the boot information) or leases of its own when it has none. iPXE
loads boot.ipxe over TFTP, then vmlinuz, initrd.img and the image's data (hundreds of MB) over
HTTP from this node, many times faster than TFTP. IPv6 router solicitations get an answer that
says there is no router (clusteros_node.norouter): iPXE then boots at once on a LAN without one.
What is served is the set with one file changed: boot.ipxe, whose image URL points here and
whose default is the boot asked for. Off until asked for; it runs in the foreground until stopped (`clusteros serve-pxe` starts it
as the transient unit clusteros-pxe.service).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from clusteros_node import addressing, dhcpprobe, norouter, system
from clusteros_node.pxechoices import HTTP_PORT, RUN_DIR, SET_DIR

SET_FILES = ("boot.ipxe", "vmlinuz", "initrd.img", "image.data.zst", "dnsmasq.conf.example",
             "undionly.kpxe", "snponly.efi")


class ServeError(RuntimeError):
    """Cannot serve: the message says what to change."""


@dataclass(frozen=True)
class Lan:
    interface: str
    address: str     # this node's address on it: where the image is fetched
    subnet: str      # e.g. 10.42.0.0/24
    gateway: str | None


@dataclass(frozen=True)
class Plan:
    lan: Lan
    dhcp_range: str  # dnsmasq's --dhcp-range
    boot: str
    http_port: int = HTTP_PORT

    @property
    def boot_url(self) -> str:
        """Where netbooted machines get the kernel, initrd and image: this node's HTTP server."""
        return f"http://{self.lan.address}:{self.http_port}/"

    @property
    def image_url(self) -> str:
        return f"{self.boot_url}image.data.zst"


def check_set(directory: Path) -> None:
    missing = [name for name in SET_FILES if not (directory / name).is_file()]
    if missing:
        raise ServeError(f"{directory} is not a whole PXE set: {', '.join(missing)} missing; "
                         "build it with `doit pxe` and copy it here (`clusteros serve-pxe` does both)")


def receive(stream, set_dir: Path = SET_DIR) -> list[str]:
    """Take a PXE set as a tar stream (what `clusteros serve-pxe` sends) in place of the one in `set_dir`.
    Only the set's own files, as plain files, are taken: anything else, or a stream cut short,
    refuses the whole of it and leaves the set that was there."""
    incoming = set_dir.with_name(set_dir.name + ".incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True, mode=0o755)
    try:
        _unpack(stream, incoming)
        check_set(incoming)
    except (tarfile.TarError, EOFError) as why:
        shutil.rmtree(incoming)
        raise ServeError(f"the PXE set did not arrive whole ({why}); nothing was changed") from why
    except ServeError:
        shutil.rmtree(incoming)
        raise
    shutil.rmtree(set_dir, ignore_errors=True)
    incoming.rename(set_dir)
    return sorted(p.name for p in set_dir.iterdir())


def _unpack(stream, into: Path) -> None:
    with tarfile.open(fileobj=stream, mode="r|", bufsize=1 << 20) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in ("", "."):
                continue
            if name not in SET_FILES or not member.isfile():
                raise ServeError(f"the stream holds {member.name!r}, which is not a file of a PXE set")
            with tar.extractfile(member) as source, open(into / name, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            (into / name).chmod(0o644)


def served_script(script: str, plan: Plan) -> str:
    """The set's boot.ipxe for this node: the kernel, initrd and image over HTTP from here (TFTP
    from an emulated or busy node takes tens of seconds for the kernel alone), and the boot asked
    for as the default. It rewrites the first `set image-url` and `set install` lines, which come
    before the menu (its entries set `install` again, each to its own), and sets boot-url first."""
    lines = script.splitlines()
    for key, value in (("image-url", plan.image_url), ("install", plan.boot)):
        at = next((i for i, line in enumerate(lines) if line.startswith(f"set {key} ")), None)
        if at is None:
            raise ServeError(f"boot.ipxe has no `set {key}` line: is it from `doit pxe`?")
        lines[at] = f"set {key} {value}"
    lines.insert(1, f"set boot-url {plan.boot_url}")
    return "\n".join(lines) + "\n"


def prepare(set_dir: Path, served: Path, plan: Plan) -> None:
    """The served folder: links to the set's files, and boot.ipxe written for this node."""
    check_set(set_dir)
    served.mkdir(parents=True, exist_ok=True)
    served.chmod(0o755)   # dnsmasq's TFTP runs as its own user
    for old in served.iterdir():
        old.unlink()
    for name in SET_FILES:
        if name != "boot.ipxe":
            (served / name).symlink_to(set_dir.resolve() / name)
    text = served_script((set_dir / "boot.ipxe").read_text(), plan)
    (served / "boot.ipxe").write_text(text)
    (served / "boot.ipxe").chmod(0o644)


def dhcp_range(mode: str, lan: Lan, lease_range: str | None = None, find_server=dhcpprobe.find_server) -> str:
    """dnsmasq's --dhcp-range: `proxy` next to a DHCP server, leases of our own without one;
    `auto` asks the LAN first."""
    if mode == "auto":
        offer = find_server(lan.interface)
        mode = "proxy" if offer is not None else "range"
        heard = f"a DHCP server answers ({offer.server})" if offer else "no DHCP server answers"
        system_log(f"serve-pxe: {heard} on {lan.interface}: {mode} mode")
    net = ipaddress.ip_network(lan.subnet)
    if mode == "proxy":
        return f"{net.network_address},proxy"
    first, last = _lease_range(lease_range, lan.subnet)
    return f"{first},{last},{net.netmask},1h"


def _lease_range(lease_range: str | None, subnet: str) -> tuple[str, str]:
    if lease_range is None:
        return addressing.netboot_range(subnet)
    ends = lease_range.split(",")
    if len(ends) != 2 or not all(addressing.contains_host(subnet, end) for end in ends) or \
            ipaddress.ip_address(ends[0]) > ipaddress.ip_address(ends[1]):
        raise ServeError(f"--range {lease_range}: give FIRST,LAST, two addresses of {subnet}, lowest first")
    return ends[0], ends[1]


def dnsmasq_argv(set_dir: Path, served: Path, plan: Plan, leases: Path) -> list[str]:
    """The set's dnsmasq.conf.example as it is, and this LAN on the command line."""
    router = f"option:router,{plan.lan.gateway}" if plan.lan.gateway else "option:router"   # empty: none
    return ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--pid-file=",
            f"--conf-file={set_dir / 'dnsmasq.conf.example'}",
            f"--interface={plan.lan.interface}", "--bind-interfaces", "--except-interface=lo",
            f"--tftp-root={served}", f"--dhcp-range={plan.dhcp_range}", f"--dhcp-leasefile={leases}",
            f"--dhcp-option={router}", "--dhcp-option=option:dns-server"]


def lan_of(interface: str | None, spec: dict, identity_file: Path = Path("/run/clusteros/identity.json")) -> Lan:
    """The LAN to serve: the node's cluster LAN, or `interface`; its address as the kernel has it."""
    if interface is None:
        known = json.loads(identity_file.read_text()) if identity_file.exists() else {}
        interface = _interface_with_mac(known.get("mac"))
        if interface is None:
            raise ServeError("this node does not know its cluster LAN interface: name it with --interface")
    lan = spec["network"]["lan"]
    addresses = json.loads(system.query("ip", "-4", "-j", "address", "show", "dev", interface))
    found = [a["local"] for entry in addresses for a in entry.get("addr_info", [])
             if addressing.contains_host(lan["subnet"], a.get("local", ""))]
    if not found:
        raise ServeError(f"{interface} has no address in the cluster LAN {lan['subnet']}")
    return Lan(interface, found[0], lan["subnet"], lan.get("gateway"))


def _interface_with_mac(mac: str | None) -> str | None:
    if not mac:
        return None
    from clusteros_node import identity
    return identity.interface_of(mac)


def system_log(message: str) -> None:
    print(message, flush=True)


def serve(set_dir: Path, plan: Plan, run_dir: Path = RUN_DIR) -> int:
    """dnsmasq and the HTTP server, until a signal stops them or dnsmasq exits."""
    served = run_dir / "served"
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o755)   # dnsmasq's TFTP runs as its own user
    prepare(set_dir, served, plan)
    from clusteros_node import pxehttp   # http.server and what it brings: not for every clusteros-node command
    http = pxehttp.start(plan.lan.address, plan.http_port, served)
    norouter.start(plan.lan.interface, system_log)
    dnsmasq = subprocess.Popen(dnsmasq_argv(set_dir, served, plan, run_dir / "dnsmasq.leases"))
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: dnsmasq.terminate())
    system_log(f"serve-pxe: netbooting {plan.lan.interface} ({plan.lan.subnet}) from {set_dir}: "
               f"DHCP {plan.dhcp_range}, TFTP {served}, image {plan.image_url}, default boot {plan.boot}")
    status = dnsmasq.wait()
    http.shutdown()
    http.server_close()
    stopped = status in (0, -signal.SIGTERM, -signal.SIGINT)
    if not stopped:
        system_log(f"serve-pxe: dnsmasq exited with status {status} (its messages are above)")
    return 0 if stopped else 1

