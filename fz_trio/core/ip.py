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
