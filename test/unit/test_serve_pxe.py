"""`clusteros-node serve-pxe`'s parts: the served boot script, the lease range, DHCP offers, taking a set,
the answer to IPv6 router solicitations.

The real dnsmasq on a LAN of namespaces: test/e2e/test_serve_pxe_lan.py; a VM netbooted from
a node of the test cluster: test/e2e/test_cluster_trust.py.
"""

import io
import socket
import struct
import tarfile
from pathlib import Path

import pytest

from clusteros.installer.settings import dnsmasq_example, ipxe_script
from clusteros_node import dhcpprobe, norouter, pxeserve

CONFIG = {"INSTALL": "auto", "TARGET": "auto"}


def make_set(directory: Path) -> Path:
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    (directory / "boot.ipxe").write_text(ipxe_script("rack", CONFIG))
    (directory / "dnsmasq.conf.example").write_text(dnsmasq_example("rack"))
    for name, body in (("vmlinuz", b"kernel"), ("initrd.img", b"initrd"), ("undionly.kpxe", b"bios ipxe"),
                       ("snponly.efi", b"efi ipxe"), ("image.data.zst", b"data" * 100_000)):
        (directory / name).write_bytes(body)
    return directory


# -- pure parts -----------------------------------------------------------------------------

def test_the_served_script_points_at_this_node_and_boots_what_was_asked():
    plan = pxeserve.Plan(pxeserve.Lan("eth0", "10.42.0.11", "10.42.0.0/24", None), "10.42.0.0,proxy", "ram")
    lines = pxeserve.served_script(ipxe_script("rack", CONFIG), plan).splitlines()
    assert lines[:2] == ["#!ipxe", "set boot-url http://10.42.0.11:8069/"], "kernel and initrd over HTTP"
    assert "set image-url http://10.42.0.11:8069/image.data.zst" in lines
    assert "set install ram" in lines
    assert lines.index("set install ram") < lines.index(":ram"), "the default, first"
    assert "initrd ${boot-url}initrd.img" in lines and any(line.startswith("kernel ${boot-url}vmlinuz ") for line in lines)
    with pytest.raises(pxeserve.ServeError, match="no `set image-url` line"):
        pxeserve.served_script("#!ipxe\nboot\n", plan)


def test_the_lease_range_sits_above_the_nodes_and_a_wrong_one_is_refused():
    lan = pxeserve.Lan("eth0", "10.42.0.11", "10.42.0.0/24", None)
    assert pxeserve.dhcp_range("range", lan) == "10.42.0.75,10.42.0.138,255.255.255.0,1h"
    assert pxeserve.dhcp_range("range", lan, "10.42.0.200,10.42.0.210") == "10.42.0.200,10.42.0.210,255.255.255.0,1h"
    assert pxeserve.dhcp_range("proxy", lan) == "10.42.0.0,proxy"
    for wrong in ("10.42.0.210,10.42.0.200", "10.42.1.5,10.42.1.9", "10.42.0.200"):
        with pytest.raises(pxeserve.ServeError, match="FIRST,LAST"):
            pxeserve.dhcp_range("range", lan, wrong)


def test_auto_asks_the_lan_and_goes_proxy_only_when_a_server_answers():
    lan = pxeserve.Lan("eth0", "10.42.0.11", "10.42.0.0/24", None)
    answered = dhcpprobe.Offer("10.42.0.1", "10.42.0.99", "")
    assert pxeserve.dhcp_range("auto", lan, find_server=lambda _: answered) == "10.42.0.0,proxy"
    assert pxeserve.dhcp_range("auto", lan, find_server=lambda _: None).endswith(",1h")


def test_offers_are_parsed_and_anything_else_is_ignored():
    xid = 0x1234
    offer = bytearray(dhcpprobe.discover(b"\x52\x54\x00\x00\x00\x01", xid))
    offer[0] = 2
    offer[16:20] = bytes([10, 42, 0, 99])
    at = offer.index(bytes([53, 1, 1]))
    offer[at:at + 3] = bytes([53, 1, 2])
    assert dhcpprobe.parse_offer(bytes(offer), xid, "10.42.0.1") == dhcpprobe.Offer("10.42.0.1", "10.42.0.99", "")
    assert dhcpprobe.parse_offer(bytes(offer), xid + 1, "10.42.0.1") is None, "an answer to another DISCOVER"
    for cut in range(0, len(offer), 7):   # every truncation: None, never an exception
        assert dhcpprobe.parse_offer(bytes(offer[:cut]), xid, "x") is None
    assert dhcpprobe.parse_offer(bytes(offer[:-1]) + bytes([61, 200]), xid, "x") is None, "an option past the end"


def test_a_set_is_received_whole_or_not_at_all(tmp_path):
    source = make_set(tmp_path / "built")
    into = tmp_path / "srv" / "pxe"
    assert pxeserve.receive(tar_of(source), into) == sorted(pxeserve.SET_FILES)
    assert (into / "image.data.zst").read_bytes() == (source / "image.data.zst").read_bytes()
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        tar.add(source / "boot.ipxe", arcname="boot.ipxe")
        tar.add(source / "vmlinuz", arcname="../../etc/cron.d/x")
    evil.seek(0)
    with pytest.raises(pxeserve.ServeError, match="not a file of a PXE set"):
        pxeserve.receive(evil, into)
    assert sorted(p.name for p in into.iterdir()) == sorted(pxeserve.SET_FILES), "the set before it is kept"
    with pytest.raises(pxeserve.ServeError, match="not a whole PXE set: .*image.data.zst"):
        pxeserve.receive(tar_of(source, leave_out="image.data.zst"), into)


def tar_of(directory: Path, leave_out: str = "") -> io.BytesIO:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for path in sorted(directory.iterdir()):
            if path.name != leave_out:
                tar.add(path, arcname=path.name)
    stream.seek(0)
    return stream




def test_a_stream_cut_short_changes_nothing(tmp_path):
    source = make_set(tmp_path / "built")
    into = tmp_path / "srv" / "pxe"
    pxeserve.receive(tar_of(source), into)
    whole = tar_of(source).getvalue()
    with pytest.raises(pxeserve.ServeError, match="did not arrive whole"):
        pxeserve.receive(io.BytesIO(whole[:len(whole) // 2]), into)
    assert sorted(p.name for p in into.iterdir()) == sorted(pxeserve.SET_FILES)
    assert not into.with_name("pxe.incoming").exists()


# -- the answer to IPv6 router solicitations (clusteros_node.norouter) -----------------------------

def test_only_a_well_formed_solicitation_from_the_link_is_taken():
    solicitation = bytes([133, 0, 0, 0, 0, 0, 0, 0])
    assert norouter.is_solicitation(solicitation + b"\x01\x01" + bytes(6), 255), "options may follow"
    assert not norouter.is_solicitation(solicitation, 64), "routed here from off the link"
    assert not norouter.is_solicitation(solicitation, None), "no hop limit seen"
    assert not norouter.is_solicitation(bytes([133, 1]) + bytes(6), 255), "code 1"
    assert not norouter.is_solicitation(bytes([134]) + bytes(7), 255), "an advertisement"
    assert not norouter.is_solicitation(solicitation[:7], 255), "short"


def test_the_advertisement_says_no_router_and_nothing_else():
    kind, code, _, hops, flags, lifetime, reachable, retransmit = struct.unpack("!BBHBBHII", norouter.advertisement())
    assert (kind, code, hops, flags, lifetime, reachable, retransmit) == (134, 0, 0, 0, 0, 0, 0)
    assert len(norouter.advertisement()) == 16, "no option: no prefix, no address"


def test_the_socket_is_given_solicitations_only():
    words = struct.unpack("=8I", norouter.solicitations_only())
    blocked = {kind for kind in range(256) if words[kind >> 5] & (1 << (kind & 31))}
    assert blocked == set(range(256)) - {133}


def test_the_answer_goes_back_to_the_asker_or_to_all_nodes_from_no_address():
    assert norouter.reply_to(("fe80::5054:ff:fe9f:2004%lan0", 0, 0, 3), 3) == ("fe80::5054:ff:fe9f:2004", 0, 0, 3)
    assert norouter.reply_to(("::", 0, 0, 3), 3) == ("ff02::1", 0, 0, 3)
    hop_limit = (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("=i", 255))
    assert norouter.hop_limit_of([hop_limit]) == 255 and norouter.hop_limit_of([]) is None


class Link:
    """A stand-in for the raw socket: solicitations queued as (message, hop limit, source); answers kept."""

    def __init__(self, arrivals, refuse: bool = False):
        self.arrivals, self.sent, self.refuse = list(arrivals), [], refuse

    def recvmsg(self, size, ancillary_size):
        message, hops, source = self.arrivals.pop(0)
        return message, [(socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("=i", hops))], 0, (source, 0, 0, 3)

    def sendto(self, data, target):
        if self.refuse:
            raise OSError("network is down")
        self.sent.append(target[0])


def answered(link: Link, log=None) -> list[str]:
    from clusteros_node.ratelimit import Throttled
    clock = lambda: 100.0   # noqa: E731 - no time passes: the limits' bursts alone
    limits, said = norouter.limits(clock), Throttled(60.0, clock=clock)
    for _ in range(len(link.arrivals)):
        norouter.answer(link, 3, limits, said, log or (lambda line: None))
    return link.sent


def test_each_sender_gets_two_answers_a_second_and_all_of_them_fifty():
    solicitation = bytes([133, 0, 0, 0, 0, 0, 0, 0])
    one = [(solicitation, 255, "fe80::1%lan0")] * 5
    assert answered(Link(one)) == ["fe80::1"] * 2
    forged = [(solicitation, 255, f"fe80::{n:x}%lan0") for n in range(1, 200)]
    assert len(answered(Link(forged))) == norouter.PER_SECOND
    assert answered(Link([(solicitation, 64, "fe80::1"), (bytes([128, 0]) + bytes(6), 255, "fe80::1")])) == []


def test_a_refused_send_is_said_once_and_answering_goes_on():
    lines = []
    link = Link([(bytes([133]) + bytes(7), 255, "fe80::1"), (bytes([133]) + bytes(7), 255, "fe80::2")], refuse=True)
    answered(link, log=lines.append)
    assert link.arrivals == [] and len(lines) == 1 and "network is down" in lines[0]
