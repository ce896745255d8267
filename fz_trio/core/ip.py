"""The one place that reads IP headers: version, header layout, addresses, lengths, flows.

Routing (the core) and the data path (segmentation, coalescing, inner checks) both read them
here; the native kernels read the same fields and are tested against these functions.
"""

from __future__ import annotations

PROTO_TCP = 6
PROTO_UDP = 17


def layout(packet: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """(version, IP header length, transport protocol) of a packet without IPv6 extension
    headers, or None if it is not a well-formed IPv4/IPv6 header."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            return None
        return 4, ihl, packet[9]
    if version == 6 and len(packet) >= 40:
        return 6, 40, packet[6]
    return None


def destination(packet: bytes | bytearray | memoryview) -> bytes | None:
    """The destination address bytes of an IPv4/IPv6 packet, None if it is not one."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bytes(packet[16:20])
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return bytes(packet[24:40])
    return None


def source(packet: bytes | bytearray | memoryview) -> bytes | None:
    """The source address bytes of an IPv4/IPv6 packet, None if it is not one."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bytes(packet[12:16])
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return bytes(packet[8:24])
    return None


def addresses(packet: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
    """(source, destination) address bytes of an IPv4 or IPv6 packet, None if it is not one."""
    src, dst = source(packet), destination(packet)
    return None if src is None or dst is None else (src, dst)


def declared_length(packet: bytes | bytearray | memoryview) -> int | None:
    """The packet's own idea of its length (IPv4 total length, IPv6 40 + payload length), None
    if it is too short to say."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return (packet[2] << 8) | packet[3]
    if version == 6 and len(packet) >= 40:
        return 40 + ((packet[4] << 8) | packet[5])
    return None


def flow_hash(packet: bytes | bytearray | memoryview) -> int:
    """A hash that is equal for every packet of one transport flow (addresses, protocol, ports).

    Used to pin a flow to one TUN writer queue so that several queues never reorder it. Packets
    that are not IPv4/IPv6 all hash alike.
    """
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        return hash((bytes(packet[9:10]), bytes(packet[12:20]), bytes(packet[ihl:ihl + 4])))
    if version == 6 and len(packet) >= 40:
        return hash((bytes(packet[6:7]), bytes(packet[8:44])))
    return 0
