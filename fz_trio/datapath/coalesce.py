"""Coalescing for TUN writes: consecutive segments of one TCP (or UDP) flow become one
super-packet the kernel accepts with GSO, so one write carries ~45 packets (the Python twin of the
native kernel's `coalesce`)."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import attrs

from fz_trio.datapath.checksum import ipv4_header_checksum, pseudo_header_sum
from fz_trio.datapath.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_COALESCED_SEGMENTS,
    MAX_IP_LEN,
    PLAIN_HDR,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_PSH,
    VNET_HDR,
    OffloadError,
    _layout,
)


def _partial(total: int) -> bytes:
    """A CHECKSUM_PARTIAL seed: the folded pseudo-header sum, never zero."""
    return (total % 0xFFFF or 0xFFFF).to_bytes(2, "big")


# A fast layout's unpacked fields: constant header parts (bytes) and the counters (int).
_FastFields = tuple[bytes | int, ...]


@attrs.define
class _Group:
    """Consecutive segments of one flow that can become one super-packet."""

    first: bytearray
    version: int
    iphl: int
    l4hl: int
    proto: int
    gso_size: int
    payloads: list[memoryview]
    next_seq: int = 0
    next_id: int = 0
    closed: bool = False
    push: bool = False  # a later segment had PSH: the super-packet carries it
    length: int = 0
    fast: tuple[struct.Struct, _FastFields] | None = None  # see _continues


def _flow_key(packet: bytearray, version: int, iphl: int) -> bytes:
    if version == 4:
        return bytes(packet[9:10]) + bytes(packet[12:20]) + bytes(packet[iphl:iphl + 4])
    return bytes(packet[6:7]) + bytes(packet[8:40]) + bytes(packet[40:44])


def _tcp_candidate(packet: bytearray, version: int, iphl: int) -> tuple[int, int] | None:
    """(TCP header length, payload length) when this packet may join a TSO super-packet."""
    if len(packet) < iphl + 20:
        return None
    tcphl = (packet[iphl + 12] >> 4) * 4
    payload = len(packet) - iphl - tcphl
    flags = packet[iphl + 13]
    if tcphl < 20 or payload <= 0 or flags & ~(TCP_ACK | TCP_PSH) or not flags & TCP_ACK:
        return None  # SYN, FIN, RST, URG, ECE, CWR and pure ACKs are written as they are
    return tcphl, payload


def _same_ip(group: _Group, packet: bytearray) -> bool:
    first = group.first
    if group.version == 4:
        # Same TOS, DF/flags, TTL, protocol; the ID must continue the run, or (with DF set,
        # as kernel GRO allows) stay fixed.
        ident = (packet[4] << 8) | packet[5]
        fixed_id = packet[6] & 0x40 and ident == (first[4] << 8) | first[5]
        return (first[1] == packet[1] and first[6:7] == packet[6:7] and packet[7] == 0
                and first[8] == packet[8] and (ident == group.next_id or bool(fixed_id)))
    return first[0:4] == packet[0:4] and first[7] == packet[7]


def _try_append(group: _Group, packet: bytearray, l4hl: int, payload: int) -> bool:
    iphl = group.iphl
    if group.closed or l4hl != group.l4hl or payload > group.gso_size:
        return False
    if len(group.payloads) >= MAX_COALESCED_SEGMENTS or group.length + payload > MAX_IP_LEN:
        return False
    if not _same_ip(group, packet):
        return False
    first = group.first
    if group.proto == PROTO_TCP:
        seq = struct.unpack_from("!I", packet, iphl + 4)[0]
        # Same ack, window and options; contiguous sequence numbers; PSH only at the end.
        if (seq != group.next_seq or first[iphl + 8:iphl + 12] != packet[iphl + 8:iphl + 12]
                or first[iphl + 14:iphl + 16] != packet[iphl + 14:iphl + 16]
                or first[iphl + 20:iphl + l4hl] != packet[iphl + 20:iphl + l4hl]
                or first[iphl + 13] & TCP_PSH):
            return False
        group.next_seq = (seq + payload) & 0xFFFFFFFF
    if group.version == 4:
        group.next_id = (group.next_id + 1) & 0xFFFF
    group.payloads.append(memoryview(packet)[iphl + l4hl:])
    group.length += payload
    if payload < group.gso_size:
        group.closed = True  # a short segment must be the last one
    if group.proto == PROTO_TCP and packet[iphl + 13] & TCP_PSH:
        group.closed = group.push = True
    return True


def coalesce(packets: Iterable[bytearray], *, udp: bool = False
             ) -> list[tuple[bytes, bytearray | bytes]]:
    """Merge consecutive segments of each TCP flow (and UDP flow with `udp`) into super-packets.

    Returns (vnet header, packet) pairs to write, in an order that keeps every flow's packets in
    their original order. Never merges across flows, sequence gaps, differing headers or options,
    or SYN/FIN/RST/URG/ECE/CWR segments.
    """
    out: list[_Group | bytearray] = []
    open_groups: dict[bytes, _Group] = {}
    last: _Group | None = None  # the group the previous packet joined or started, if still open
    for packet in packets:
        if last is not None and last.fast is not None and _continues(last, packet):
            continue
        last = None
        try:
            version, iphl, proto = _layout(packet)
        except OffloadError:
            out.append(packet)
            continue
        if proto != PROTO_TCP and not (udp and proto == PROTO_UDP):
            out.append(packet)
            continue
        key = _flow_key(packet, version, iphl)
        if version == 4 and (iphl != 20 or packet[6] & 0x3F or packet[7]):
            # IPv4 options or fragments are rare enough to write as they are; the flow's
            # later segments must come after them.
            open_groups.pop(key, None)
            out.append(packet)
            continue
        if proto == PROTO_TCP:
            candidate = _tcp_candidate(packet, version, iphl)
        else:
            # A UDP length that disagrees with the IP length is written as it is, as the
            # kernel's GRO would leave it (it never merges such a datagram, nor rewrites it).
            candidate = ((8, len(packet) - iphl - 8) if len(packet) > iphl + 8
                         and (packet[iphl + 4] << 8 | packet[iphl + 5]) == len(packet) - iphl
                         else None)
        group = open_groups.get(key)
        if candidate is None:
            if group is not None:
                del open_groups[key]  # whatever follows must come after this packet
            out.append(packet)
            continue
        l4hl, payload = candidate
        if group is not None and _try_append(group, packet, l4hl, payload):
            last = group
            continue
        group = _Group(first=packet, version=version, iphl=iphl, l4hl=l4hl, proto=proto,
                       gso_size=payload, payloads=[memoryview(packet)[iphl + l4hl:]],
                       length=iphl + l4hl + payload)
        if version == 4:
            group.next_id = (((packet[4] << 8) | packet[5]) + 1) & 0xFFFF
        if proto == PROTO_TCP:
            group.next_seq = (struct.unpack_from("!I", packet, iphl + 4)[0] + payload) & 0xFFFFFFFF
            if packet[iphl + 13] & TCP_PSH:
                group.closed = True
            else:
                group.fast = _fast_fields(packet, version, iphl + l4hl)
        open_groups[key] = group
        out.append(group)
        last = group
    return [_emit(item) for item in out]


# The fast path of coalescing: a bulk TCP flow's next full-size segment, recognised by one
# struct unpack. Its fields are the segment's constant header parts (which must equal the first
# segment's) and the two counters (IPv4 id, sequence number) that must continue the run.
_FAST_LAYOUTS: dict[tuple[int, int], struct.Struct] = {}


def _fast_fields(first: bytearray, version: int, hl: int
                 ) -> tuple[struct.Struct, _FastFields]:
    layout = _FAST_LAYOUTS.get((version, hl))
    if layout is None:
        if version == 4:
            # version..total length, id, flags..protocol, (checksum), addresses and ports,
            # seq, ack..window, (checksum), urgent pointer and options.
            layout = struct.Struct(f"!4sH4s2x12sI8s2x{hl - 38}s")
        else:
            # version..ports, seq, ack..window, (checksum), urgent pointer and options.
            layout = struct.Struct(f"!44sI8s2x{hl - 58}s")
        _FAST_LAYOUTS[(version, hl)] = layout
    return layout, layout.unpack_from(first)


def _continues(group: _Group, packet: bytearray) -> bool:
    """True (and the packet joined `group`) if `packet` is the flow's next full-size segment
    with every constant header field equal to the first segment's. Accepts a subset of what
    `_try_append` accepts, with the same effect; False leaves everything to it."""
    hl = group.iphl + group.l4hl
    payload = group.gso_size
    if (group.closed or len(packet) != hl + payload
            or len(group.payloads) >= MAX_COALESCED_SEGMENTS
            or group.length + payload > MAX_IP_LEN):
        return False
    # The caller has checked that group.fast is set; mypy cannot carry that narrowing of an
    # attribute into this call, and a check here would cost a test per segment.
    layout, expected = group.fast  # type: ignore[misc]
    fields = layout.unpack_from(packet)
    if group.version == 4:
        if fields != (expected[0], group.next_id, expected[2], expected[3], group.next_seq,
                      expected[5], expected[6]):
            return False
        group.next_id = (group.next_id + 1) & 0xFFFF
    elif fields != (expected[0], group.next_seq, expected[2], expected[3]):
        return False
    group.next_seq = (group.next_seq + payload) & 0xFFFFFFFF
    group.payloads.append(memoryview(packet)[hl:])
    group.length += payload
    return True


def _emit(item: _Group | bytearray) -> tuple[bytes, bytearray | bytes]:
    if not isinstance(item, _Group):
        return PLAIN_HDR, item
    if len(item.payloads) == 1:
        return PLAIN_HDR, item.first
    return _build_super_packet(item)


def _build_super_packet(group: _Group) -> tuple[bytes, bytearray]:
    iphl, l4hl, version = group.iphl, group.l4hl, group.version
    first = group.first
    # One join sizes the super-packet once; appending payload by payload reallocated it ~45 times.
    packet = bytearray().join([memoryview(first)[:iphl + l4hl], *group.payloads])
    l4_length = len(packet) - iphl
    if version == 4:
        struct.pack_into("!H", packet, 2, len(packet))
        ipv4_header_checksum(packet)
    else:
        struct.pack_into("!H", packet, 4, l4_length)
    if group.proto == PROTO_TCP:
        if group.push:
            packet[iphl + 13] |= TCP_PSH
        csum_offset = 16
        gso_type = GSO_TCPV4 if version == 4 else GSO_TCPV6
    else:
        csum_offset = 6
        gso_type = GSO_UDP_L4
        struct.pack_into("!H", packet, iphl + 4, l4_length)
    where = iphl + csum_offset
    packet[where:where + 2] = _partial(pseudo_header_sum(packet, version, group.proto, l4_length))
    hdr = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, iphl + l4hl, group.gso_size, iphl, csum_offset)
    return hdr, packet

