"""IP packets built and recognised whole: echo requests and replies, UDP test datagrams.

For the live REPL's ping, the simulator's hosts, the benchmark's packets and the tests; the hot
path never builds packets this way.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

from fz_trio.core import ip
from fz_trio.datapath.checksum import checksum_from_sum, ones_sum


def ip_packet(src: str, dst: str, payload: bytes, protocol: int) -> bytes:
    """An IPv4 or IPv6 packet (by the addresses' family) around `payload`."""
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version != destination.version:
        raise ValueError("source and destination must be of one family")
    if source.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64,
                             protocol, 0, source.packed, destination.packed)
        header = header[:10] + struct.pack("!H", checksum_from_sum(ones_sum(header))) + header[12:]
        return header + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), protocol, 64, source.packed,
                       destination.packed) + payload


def udp_packet(src: str, dst: str, payload: bytes, sport: int = 40000, dport: int = 9) -> bytes:
    """A UDP datagram inside an IP packet (checksum left 0: legal for IPv4, ignored here)."""
    return ip_packet(src, dst, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload,
                     17)


def _icmp_checksum(src: str, dst: str, message: bytes) -> int:
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if source.version == 4:
        return checksum_from_sum(ones_sum(message))
    pseudo = source.packed + destination.packed + struct.pack("!I3xB", len(message), 58)
    return checksum_from_sum(ones_sum(pseudo + message))


def icmp_echo_message(src: str, dst: str, ident: int, seq: int, payload: bytes = b"",
                      reply: bool = False) -> bytes:
    """The ICMP (or ICMPv6) echo request or reply message itself, with its checksum."""
    v6 = ipaddress.ip_address(src).version == 6
    kind = (129 if reply else 128) if v6 else (0 if reply else 8)
    message = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    return message[:2] + struct.pack("!H", _icmp_checksum(src, dst, message)) + message[4:]


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes = b"",
              reply: bool = False) -> bytes:
    """An ICMP (or ICMPv6) echo request or reply in its IP packet, checksums and all."""
    message = icmp_echo_message(src, dst, ident, seq, payload, reply)
    return ip_packet(src, dst, message, 58 if ":" in src else 1)


def parse_echo(packet: bytes) -> tuple[str, str, str, int, int] | None:
    """("request" or "reply", source, destination, identifier, sequence) of an echo packet."""
    shape, addresses = ip.layout(packet), ip.addresses(packet)
    if shape is None or addresses is None:
        return None
    version, header_length, protocol = shape
    kinds = _ECHO_KINDS.get((version, protocol))
    icmp = packet[header_length:]
    if kinds is None or len(icmp) < 8 or icmp[0] not in kinds:
        return None
    src, dst = (str(ipaddress.ip_address(a)) for a in addresses)
    ident, seq = struct.unpack_from("!HH", icmp, 4)
    return kinds[icmp[0]], src, dst, ident, seq


# (IP version, protocol) -> ICMP type -> what the echo is
_ECHO_KINDS = {(4, 1): {8: "request", 0: "reply"}, (6, 58): {128: "request", 129: "reply"}}


def echo_reply_to(packet: bytes, own_addresses: Iterable[str]) -> bytes | None:
    """The reply a host would send to an echo request for one of `own_addresses`, else None."""
    echo = parse_echo(packet)
    if echo is None or echo[0] != "request" or echo[2] not in own_addresses:
        return None
    _, src, dst, ident, seq = echo
    shape = ip.layout(packet)
    assert shape is not None  # parse_echo saw an IP header
    payload_at = shape[1] + 8
    return icmp_echo(dst, src, ident, seq, packet[payload_at:], reply=True)
