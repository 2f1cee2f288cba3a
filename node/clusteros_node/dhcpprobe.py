"""Is there a DHCP server on this LAN? One DHCPDISCOVER, and any DHCPOFFER that answers it.

`serve-pxe` asks before it starts dnsmasq: with a server there, dnsmasq only adds the boot
information (proxy DHCP); without one, it leases addresses itself. Nothing is requested or
taken: a DISCOVER binds no lease (RFC 2131, 3.1). What comes back is untrusted: a packet
that is not a well-formed OFFER for this exact DISCOVER is ignored, never an error.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass

SERVER_PORT, CLIENT_PORT = 67, 68
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER = 1, 2
# op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr (16), sname (64), file (128)
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
BROADCAST_FLAG = 0x8000


@dataclass(frozen=True)
class Offer:
    server: str      # the server identifier (option 54), or the sender when it gives none
    address: str     # the address it offered (yiaddr; 0.0.0.0 from a proxy, which leases none)
    boot_file: str   # the file a PXE client is to load ("" for none)


def option(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def discover(mac: bytes, xid: int, extra: bytes = b"") -> bytes:
    """A DHCPDISCOVER from `mac`, asking for the answer by broadcast (it has no address yet).
    `extra`: more options, e.g. the vendor class of a PXE client."""
    header = HEADER.pack(1, 1, 6, 0, xid, 0, BROADCAST_FLAG, bytes(4), bytes(4), bytes(4), bytes(4),
                         mac.ljust(16, b"\0"), bytes(64), bytes(128))
    return header + MAGIC + option(53, bytes([DISCOVER])) + option(55, bytes([1, 3, 54, 67])) + extra + b"\xff"


def options_of(packet: bytes) -> dict[int, bytes] | None:
    """The DHCP options after the header, or None if they do not parse."""
    if len(packet) < HEADER.size + len(MAGIC) or packet[HEADER.size:HEADER.size + 4] != MAGIC:
        return None
    options, at = {}, HEADER.size + 4
    while at < len(packet):
        code = packet[at]
        if code == 255:
            return options
        if code == 0:
            at += 1
            continue
        if at + 1 >= len(packet) or at + 2 + packet[at + 1] > len(packet):
            return None
        options[code] = packet[at + 2:at + 2 + packet[at + 1]]
        at += 2 + packet[at + 1]
    return None   # no end option


def parse_offer(packet: bytes, xid: int, sender: str) -> Offer | None:
    """The OFFER in `packet` if it answers DISCOVER `xid`; None for anything else."""
    options = options_of(packet)
    if options is None:
        return None
    op, _, _, _, their_xid, _, _, _, yiaddr, _, _, _, _, file = HEADER.unpack_from(packet)
    if op != 2 or their_xid != xid or options.get(53) != bytes([OFFER]):
        return None
    server = options.get(54)
    boot_file = options.get(67, file.split(b"\0", 1)[0])
    return Offer(socket.inet_ntoa(server) if server is not None and len(server) == 4 else sender,
                 socket.inet_ntoa(yiaddr), boot_file.decode("ascii", "replace"))


def mac_of(interface: str) -> bytes:
    return bytes.fromhex(open(f"/sys/class/net/{interface}/address").read().strip().replace(":", ""))


def find_server(interface: str, timeout: float = 6.0, every: float = 2.0, extra: bytes = b"") -> Offer | None:
    """The first DHCP server that answers on `interface` within `timeout`, or None. A DISCOVER goes
    out every `every` seconds, and an answer to any of them counts: a server may take a second or
    two to offer (dnsmasq first pings the address it means to give)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", CLIENT_PORT))
        mac, sent = mac_of(interface), set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            xid = struct.unpack("!I", os.urandom(4))[0]
            sent.add(xid)
            sock.sendto(discover(mac, xid, extra), ("255.255.255.255", SERVER_PORT))
            offer = _await_offer(sock, sent, min(deadline, time.monotonic() + every))
            if offer is not None:
                return offer
    return None


def _await_offer(sock: socket.socket, sent: set[int], until: float) -> Offer | None:
    while (left := until - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return None
        packet, (sender, _) = sock.recvfrom(1500)
        offer = next((o for xid in sent if (o := parse_offer(packet, xid, sender)) is not None), None)
        if offer is not None:
            return offer
    return None
