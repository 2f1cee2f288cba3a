"""`clusteros-node serve-pxe` with the real dnsmasq, on a LAN of network namespaces.

A bridge and three namespaces stand in for a rack's LAN: the node that serves, a client
machine, and (for proxy mode) the LAN's own DHCP server, a plain dnsmasq. The client asks as
a PXE ROM and as iPXE do (DHCP), then fetches as iPXE and the installer do (TFTP, HTTP).
No VM: a VM netbooted from a node of the test cluster is in test_cluster_trust.py.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusteros.vm.node import retry
from clusteros_node import dhcpprobe

from ..unit.test_serve_pxe import make_set

pytestmark = [pytest.mark.e2e, pytest.mark.needs("ip", "dnsmasq", "curl")]
ROOT = Path(__file__).resolve().parents[2]
BRIDGE, NODE, CLIENT, OTHER = "cospxe0", "cospxe-n", "cospxe-c", "cospxe-d"
SUBNET = "10.77.0.0/24"
PXE_CLIENT = (dhcpprobe.option(60, b"PXEClient:Arch:00000:UNDI:002001") + dhcpprobe.option(93, b"\0\0")
              + dhcpprobe.option(97, bytes(17)))
IPXE = PXE_CLIENT + dhcpprobe.option(77, b"iPXE")
NODE_CODE = {"PYTHONPATH": str(ROOT / "node")}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=os.environ | NODE_CODE).stdout


# -- the real dnsmasq on a LAN of namespaces ------------------------------------------------------

@pytest.fixture
def lan():
    """A bridge and three namespaces on it: the serving node (.11), a client (.200), another server (.2)."""
    teardown_lan()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "link", "set", BRIDGE, "up")
    for number, (ns, address) in enumerate(((NODE, "10.77.0.11"), (CLIENT, "10.77.0.200"), (OTHER, "10.77.0.2"))):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{ns}h", "type", "veth", "peer", "name", "lan0", "netns", ns)
        sh("ip", "link", "set", f"{ns}h", "master", BRIDGE, "up")
        sh("ip", "-n", ns, "link", "set", "lan0", "address", f"52:54:00:77:00:{number + 1:02x}", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "address", "add", f"{address}/24", "dev", "lan0")
    yield
    teardown_lan()


def teardown_lan() -> None:
    for ns in (NODE, CLIENT, OTHER):
        subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            subprocess.run(["kill", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{ns}h"], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def start_serving(tmp_path: Path, *args: str) -> subprocess.Popen:
    work = Path(sh("mktemp", "-d", "/tmp/cospxe-XXXXXX").strip())   # dnsmasq's user must reach the files
    work.chmod(0o755)
    set_dir = make_set(work / "set")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"network": {"lan": {"subnet": SUBNET}}}))
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(["ip", "netns", "exec", NODE, sys.executable, "-m", "clusteros_node", "--spec", str(spec),
                               "serve-pxe", "--from", str(set_dir), "--interface", "lan0", "--run-dir", str(work / "run"),
                               *args], env=os.environ | NODE_CODE, stdout=log, stderr=subprocess.STDOUT, text=True)
    server.work = work
    deadline = time.monotonic() + 15
    while "netbooting" not in (tmp_path / "serve.log").read_text():
        assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
        time.sleep(0.1)
    time.sleep(0.3)   # dnsmasq binds its sockets
    return server


def stop_serving(server: subprocess.Popen) -> None:
    server.terminate()
    assert server.wait(10) == 0, "a stop is a clean exit"
    subprocess.run(["rm", "-rf", str(server.work)])


def ask_as(ns: str, extra: bytes) -> dhcpprobe.Offer | None:
    code = ("import sys; from clusteros_node import dhcpprobe; "
            f"o = dhcpprobe.find_server('lan0', timeout=6, extra={extra!r}); "
            "print(o.server, o.address, o.boot_file or '-' if o else 'none')")
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", code).split()
    return None if out == ["none"] else dhcpprobe.Offer(out[0], out[1], "" if out[2] == "-" else out[2])


def test_with_no_dhcp_server_the_node_leases_addresses_and_serves_boot_files_and_image(lan, tmp_path):
    server = start_serving(tmp_path, "--boot", "ram")
    try:
        assert "no DHCP server answers on lan0: range mode" in (tmp_path / "serve.log").read_text()
        rom = ask_as(CLIENT, PXE_CLIENT)
        assert rom.server == "10.77.0.11" and rom.boot_file == "undionly.kpxe", "a BIOS PXE ROM chain-loads iPXE"
        assert 75 <= int(rom.address.rsplit(".", 1)[1]) <= 138, "a lease above the nodes' addresses"
        assert ask_as(CLIENT, IPXE).boot_file == "boot.ipxe", "iPXE gets the menu"
        script = sh("ip", "netns", "exec", CLIENT, "curl", "-sf", "tftp://10.77.0.11/boot.ipxe")
        assert "set image-url http://10.77.0.11:8069/image.data.zst" in script and "set install ram" in script
        assert "set boot-url http://10.77.0.11:8069/" in script
        assert sh("ip", "netns", "exec", CLIENT, "curl", "-sf", "tftp://10.77.0.11/undionly.kpxe") == "bios ipxe"
        image = subprocess.run(["ip", "netns", "exec", CLIENT, "curl", "-sf", "http://10.77.0.11:8069/image.data.zst"],
                               check=True, capture_output=True).stdout
        assert image == b"data" * 100_000
        assert subprocess.run(["ip", "netns", "exec", CLIENT, "curl", "-sf", "http://10.77.0.11:8069/"]).returncode, \
            "no listing"
    finally:
        stop_serving(server)


def test_the_installer_fetches_the_image_from_the_node_by_tftp_and_by_http(lan, tmp_path):
    """The installer's own fetch (images/installer/init, busybox's tftp and wget, as in its initramfs), in
    the client's namespace: over TFTP, as boot.ipxe says by default for a set that plain dnsmasq serves
    (dnsmasq.conf.example), and over HTTP, as serve-pxe's boot.ipxe says. The PXE install's VM
    (test_installers.py) takes the HTTP way; QEMU's TFTP would cost it a minute of emulation."""
    server = start_serving(tmp_path)
    try:
        for url in ("tftp://10.77.0.11/image.data.zst", "http://10.77.0.11:8069/image.data.zst"):
            assert installer_fetch(tmp_path / url.split(":", 1)[0], url) == b"data" * 100_000, url
    finally:
        stop_serving(server)


def installer_fetch(work: Path, url: str) -> bytes:
    """What the installer's fetch_image leaves in its RAM (`RUN_DIR`) for clusteros.image=`url`."""
    applets = work / "bin"
    applets.mkdir(parents=True)
    subprocess.run(["/bin/busybox", "--install", "-s", str(applets)], check=True)
    script = (f"PATH={applets} CLUSTEROS_INIT_SOURCED=1 RUN_DIR={work} LOG={work}/log FETCH_TRIES=1\n"
              f". {ROOT / 'images' / 'installer' / 'init'}\n"
              "say() { echo \"$*\"; }\n"
              "fail() { echo \"FAILED: $*\"; cat \"$LOG\"; exit 3; }\n"
              f"IMAGE_URL={url}\n"
              "fetch_image")
    out = subprocess.run(["ip", "netns", "exec", CLIENT, "/bin/busybox", "sh", "-c", script], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return (work / "image.data.zst").read_bytes()


def test_beside_a_dhcp_server_the_node_only_adds_the_boot_information(lan, tmp_path):
    other = subprocess.Popen(["ip", "netns", "exec", OTHER, "dnsmasq", "--keep-in-foreground", "--port=0",
                              "--conf-file=/dev/null", "--interface=lan0", "--bind-interfaces", "--pid-file=",
                              f"--dhcp-leasefile={tmp_path / 'other.leases'}",
                              "--dhcp-range=10.77.0.150,10.77.0.160,1h"], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        server = start_serving(tmp_path)
        try:
            assert "a DHCP server answers (10.77.0.2) on lan0: proxy mode" in (tmp_path / "serve.log").read_text()
            plain = ask_as(CLIENT, b"")
            assert plain.server == "10.77.0.2", "addresses come from the LAN's own server"
            assert ask_as(CLIENT, IPXE).server in ("10.77.0.2", "10.77.0.11")
            offers = proxy_offers(CLIENT, IPXE)
            assert offers.get("10.77.0.11") == ("0.0.0.0", "boot.ipxe"), f"the proxy leases nothing: {offers}"
        finally:
            stop_serving(server)
    finally:
        other.terminate()
        other.wait(5)


def proxy_offers(ns: str, extra: bytes) -> dict[str, tuple[str, str]]:
    """Every OFFER a DISCOVER gets within 3 s, by server: a PXE client hears both servers."""
    code = f"""
import os, select, socket, struct, time
from clusteros_node import dhcpprobe as d
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lan0"); s.bind(("0.0.0.0", 68))
xid = struct.unpack("!I", os.urandom(4))[0]
s.sendto(d.discover(d.mac_of("lan0"), xid, {extra!r}), ("255.255.255.255", 67))
end = time.monotonic() + 3
while (left := end - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
    packet, (sender, _) = s.recvfrom(1500)
    o = d.parse_offer(packet, xid, sender)
    if o: print(o.server, o.address, o.boot_file or "-")
"""
    lines = sh("ip", "netns", "exec", ns, sys.executable, "-c", code).splitlines()
    return {server: (address, "" if boot == "-" else boot) for server, address, boot in (l.split() for l in lines)}


def test_a_router_solicitation_gets_an_advertisement_that_says_no_router(lan, tmp_path):
    """What iPXE waits for on a LAN without an IPv6 router (clusteros_node.norouter): asked from the
    link, an empty advertisement comes back to the asker; asked from off the link, nothing."""
    for ns in (NODE, CLIENT):   # each link-local address past its duplicate check, so it can send
        retry(lambda ns=ns: link_local_ready(ns), 10, every=0.2)
    server = start_serving(tmp_path, "--dhcp", "range")
    try:
        answers = solicit(CLIENT, hop_limits=(255, 64))
        assert answers[255] is not None, "a solicitation from the link is answered"
        sender, reply = answers[255]
        assert sender.startswith("fe80::"), "from the node's link-local address"
        assert reply == bytes([134, 0]) + reply[2:4] + bytes(12), \
            f"an advertisement with no hop limit, no flag, lifetime 0 and no option: {reply.hex()}"
        assert answers[64] is None, "one from off the link (hop limit 64) is not"
        assert server.poll() is None
    finally:
        stop_serving(server)


def link_local_ready(ns: str) -> None:
    addresses = sh("ip", "netns", "exec", ns, "ip", "-6", "address", "show", "lan0")
    assert "tentative" not in addresses, f"{ns}: {addresses}"


def solicit(ns: str, hop_limits: tuple[int, ...]) -> dict[int, tuple[str, bytes] | None]:
    """A router solicitation from `ns` with each hop limit in turn; the router advertisement each gets
    within 2 s, as (sender, message), or None."""
    code = f"""
import select, socket, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lan0")
index = socket.if_nametoindex("lan0")
for hops in {hop_limits!r}:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
    s.sendto(bytes([133, 0, 0, 0, 0, 0, 0, 0]), ("ff02::2", 0, 0, index))
    got, end = None, time.monotonic() + 2
    while got is None and (left := end - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        message, source = s.recvfrom(1500)
        if message[0] == 134:
            got = (source[0].split("%")[0], message)
    print(hops, got[0] if got else "-", got[1].hex() if got else "-")
"""
    lines = sh("ip", "netns", "exec", ns, sys.executable, "-c", code).splitlines()
    return {int(hops): None if sender == "-" else (sender, bytes.fromhex(message))
            for hops, sender, message in (line.split() for line in lines)}
