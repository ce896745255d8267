"""Just enough IP header reading for routing decisions: version, source, destination, length."""

from __future__ import annotations


def addresses(packet: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
    """(source, destination) address bytes of an IPv4 or IPv6 packet, None if it is not one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return bytes(packet[12:16]), bytes(packet[16:20])
    if version == 6 and len(packet) >= 40:
        return bytes(packet[8:24]), bytes(packet[24:40])
    return None


def declared_length(packet: bytes | bytearray | memoryview) -> int | None:
    """The packet's own idea of its length (IPv4 total length, IPv6 40 + payload length)."""
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
