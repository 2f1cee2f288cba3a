"""serve-pxe's answer to IPv6 router solicitations on its LAN: "no router here".

iPXE configures a NIC for IPv4 (DHCP) and IPv6 (router discovery) at once, and goes on only
when both are done. On a LAN without an IPv6 router nothing answers its router solicitations
and it waits for its own timeout: 16 s of every netboot, a CPU spinning in the firmware all
along (measured on a VM netbooted from a test node: DHCP done in 15 ms, boot.ipxe asked for
16 s later; with this answer, 0.3 s later). So while serve-pxe runs, each solicitation gets a
router advertisement that carries nothing, sent back to the machine that asked: router
lifetime 0 (not a default router), neither the managed nor the other-configuration flag (no
DHCPv6), no option (no prefix, so no address). A host learns nothing from it; where the LAN
has an IPv6 router, that router's own advertisements say what they say, as before.

The solicitations come from the network: only a well-formed one from the link itself (hop
limit 255, RFC 4861 6.1.1) is answered, each sender at most twice a second and all of them at most
PER_SECOND times a second (senders with forged addresses are new senders every time).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from typing import Callable

from clusteros_node.ratelimit import Limiter, Throttled

ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
LINK_HOP_LIMIT = 255
ALL_NODES, ALL_ROUTERS = "ff02::1", "ff02::2"
ICMP6_FILTER = 1               # <netinet/icmp6.h>: which ICMPv6 types a raw socket is given
PER_SENDER = 2.0               # answers a second to one sender
PER_SECOND = 50.0              # and to all of them
ANYONE = "*"                   # the limiter's key for every sender at once (no address looks like it)


def advertisement() -> bytes:
    """A router advertisement with nothing in it (the kernel fills in the checksum)."""
    #                  type, code, checksum, hop limit, flags, router lifetime, reachable, retransmit
    return struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)


def is_solicitation(message: bytes, hop_limit: int | None) -> bool:
    """A router solicitation as RFC 4861 6.1.1 has a router take it: ICMPv6 type 133, code 0, at
    least its 8 bytes, sent from this link (hop limit 255)."""
    return len(message) >= 8 and message[0] == ROUTER_SOLICITATION and message[1] == 0 \
        and hop_limit == LINK_HOP_LIMIT


def solicitations_only() -> bytes:
    """The socket's icmp6_filter: a set bit blocks its type; every type blocked but 133."""
    words = [0xFFFFFFFF] * 8
    words[ROUTER_SOLICITATION >> 5] &= ~(1 << (ROUTER_SOLICITATION & 31))
    return struct.pack("=8I", *words)


def hop_limit_of(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(data) >= 4:
            return struct.unpack("=i", data[:4])[0]
    return None


def reply_to(source: tuple, index: int) -> tuple:
    """Back to the asker's link-local address; to all nodes if it asked from no address (RFC 4861 6.2.6)."""
    address = source[0].split("%", 1)[0]
    if ipaddress.IPv6Address(address).is_unspecified:
        return (ALL_NODES, 0, 0, index)
    return (address, 0, 0, index)


def open_socket(interface: str, index: int) -> socket.socket:
    """A raw ICMPv6 socket on `interface` given the solicitations sent to all routers (a host that
    does not route is not in that group: it joins it here)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                    socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("=I", index))
    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, solicitations_only())
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, LINK_HOP_LIMIT)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, LINK_HOP_LIMIT)
    return sock


def answer(sock: socket.socket, index: int, limits: tuple[Limiter, Limiter], said: Throttled,
           log: Callable[[str], None]) -> None:
    """Take one message off the socket (an error there ends the answering: the caller's) and
    answer it if it is a solicitation we answer."""
    message, ancillary, _, source = sock.recvmsg(1500, socket.CMSG_SPACE(4))
    each, everyone = limits
    try:
        if is_solicitation(message, hop_limit_of(ancillary)) and each.allow(source[0]) and everyone.allow(ANYONE):
            sock.sendto(advertisement(), reply_to(source, index))
    except (OSError, ValueError) as exc:   # a send refused (the link went down, say): the next may go
        if said.due("send"):
            log(f"serve-pxe: router advertisement to {source[0]}: {exc}")


def limits(clock: Callable[[], float] = time.monotonic) -> tuple[Limiter, Limiter]:
    """The answer's two limits, for `answer`: each sender's, and everyone's at once (key ANYONE)."""
    return (Limiter(rate=PER_SENDER, burst=PER_SENDER, clock=clock),
            Limiter(rate=PER_SECOND, burst=PER_SECOND, senders=1, clock=clock))


def start(interface: str, log: Callable[[str], None]) -> threading.Thread | None:
    """Answer solicitations on `interface` from a daemon thread, for as long as the process runs.
    Where IPv6 is off (no raw ICMPv6 socket), there is nothing to answer: said, and None."""
    try:
        index = socket.if_nametoindex(interface)
        sock = open_socket(interface, index)
    except OSError as exc:
        log(f"serve-pxe: no IPv6 on {interface} ({exc}): a netbooting iPXE waits for its own timeout")
        return None
    each_and_all, said = limits(), Throttled(every=60.0)

    def serve() -> None:
        try:
            while True:
                answer(sock, index, each_and_all, said, log)
        except OSError as exc:
            log(f"serve-pxe: no longer answering router solicitations on {interface}: {exc}")

    thread = threading.Thread(target=serve, name="no-router", daemon=True)
    thread.start()
    return thread
