"""TUN offloads as pure functions: split the kernel's TSO/USO super-packets, coalesce ours.

With IFF_VNET_HDR every TUN read and write carries a 10-byte virtio_net_hdr. Reading, the kernel
may hand us one TCP (TSO) or UDP (USO) "super-packet" of up to 64 KB with `gso_size` bytes of
payload per segment, and even plain packets may carry only a partial checksum (NEEDS_CSUM):
`segment()` turns either into ordinary packets with complete, valid checksums, fit to be encrypted
and sent to a peer whose kernel verifies them. Writing, `coalesce()` merges consecutive segments of
one TCP (or UDP) flow into super-packets the kernel accepts with GSO, so one write carries ~45
packets.

Checksums: the ones' complement sum of a buffer is `int.from_bytes(buf, "big") % 0xFFFF` (because
2**16 ≡ 1 mod 0xFFFF), one C-speed pass instead of a Python loop over 16-bit words.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import attrs

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO, never offered to us
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

PROTO_TCP = 6
PROTO_UDP = 17

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)

# A vnet header for packets written as they are: no GSO, and checksums need no verification —
# the packet was authenticated by its AEAD tag, as the WireGuard kernel module also tells the stack.
PLAIN_HDR = VNET_HDR.pack(F_DATA_VALID, GSO_NONE, 0, 0, 0, 0)
_MAX_IP_LEN = 65535
MAX_COALESCED_SEGMENTS = 64


class OffloadError(ValueError):
    """A super-packet or vnet header that cannot be valid (counted and dropped by the caller)."""


@attrs.frozen
class VnetHeader:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> VnetHeader:
        if len(data) < VNET_HDR_LEN:
            raise OffloadError("read shorter than a virtio_net_hdr")
        return cls(*VNET_HDR.unpack_from(data))

    def pack(self) -> bytes:
        return VNET_HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                             self.csum_start, self.csum_offset)


# --- checksums ------------------------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of `data` as big-endian 16-bit words, modulo 0xFFFF (0..0xFFFE).

    Odd-length data is padded with a zero byte, so only the last part of a sum may be odd.
    The words are summed little-endian and the result byte-swapped (RFC 1071: the sum does not
    depend on byte order), which spares the shift for odd lengths. Long data is first folded in
    halves with shifts and masks, because CPython's division by 0xFFFF costs a hardware division
    per 30-bit digit while a fold costs a few cheap passes.
    """
    value = int.from_bytes(data, "little")
    folds = _FOLDS.get(len(data))
    if folds is None:
        folds = _fold_plan(len(data))
    for shift, mask in folds:
        value = (value >> shift) + (value & mask)
    total = value % 0xFFFF
    return ((total & 0xFF) << 8) | (total >> 8)


_FOLDS: dict[int, tuple[tuple[int, int], ...]] = {}
_FOLD_DOWN_TO_BITS = 2048  # measured: below this, one division beats another fold


def _fold_plan(length: int) -> tuple[tuple[int, int], ...]:
    """(shift, mask) pairs that fold a `length`-byte value to at most ~2048 bits; shifts are
    multiples of 16 bits, and 2**16 ≡ 1 (mod 0xFFFF), so each fold keeps the sum."""
    bits = length * 8
    plan = []
    while bits > _FOLD_DOWN_TO_BITS:
        half = ((bits // 2) + 15) & ~15
        plan.append((half, (1 << half) - 1))
        bits = max(half, bits - half) + 1
    if len(_FOLDS) < 4096:  # lengths are MTU-bounded in practice; never grow without bound
        _FOLDS[length] = tuple(plan)
    return tuple(plan)


def checksum_from_sum(total: int) -> int:
    """The checksum field value for a sum (which must include the zeroed field itself)."""
    return 0xFFFF - total % 0xFFFF


def pseudo_header_sum(packet: bytes | bytearray | memoryview, version: int, proto: int,
                      l4_length: int) -> int:
    if version == 4:
        addresses = ones_sum(packet[12:20])
    else:
        addresses = ones_sum(packet[8:40])
    return (addresses + proto + l4_length) % 0xFFFF


def ipv4_header_checksum(packet: bytearray) -> None:
    """Recompute, in place, the checksum of the IPv4 header at the start of `packet`."""
    ihl = (packet[0] & 0x0F) * 4
    packet[10:12] = b"\x00\x00"
    packet[10:12] = checksum_from_sum(ones_sum(memoryview(packet)[:ihl])).to_bytes(2, "big")


def _partial(total: int) -> bytes:
    """A CHECKSUM_PARTIAL seed: the folded pseudo-header sum, never zero."""
    return (total % 0xFFFF or 0xFFFF).to_bytes(2, "big")


# --- reading: segmentation ------------------------------------------------------------------


def _ip_layout(packet: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(version, IP header length, transport protocol) of a packet without extension headers."""
    if not packet:
        raise OffloadError("empty packet")
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            raise OffloadError("bad IPv4 header length")
        return 4, ihl, packet[9]
    if version == 6 and len(packet) >= 40:
        return 6, 40, packet[6]
    raise OffloadError("not an IPv4/IPv6 packet")


def finish_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a partial (NEEDS_CSUM) checksum in place: the field holds the pseudo-header sum,
    the sum runs from csum_start to the end."""
    where = csum_start + csum_offset
    if csum_start >= len(packet) or where + 2 > len(packet):
        raise OffloadError("checksum offsets outside the packet")
    value = checksum_from_sum(ones_sum(memoryview(packet)[csum_start:]))
    packet[where:where + 2] = value.to_bytes(2, "big")


def segment(hdr: VnetHeader, packet: bytes | bytearray | memoryview) -> list[bytearray]:
    """The ordinary packets a TUN read stands for, each with complete, valid checksums."""
    if hdr.gso_type & ~GSO_ECN == GSO_NONE:
        out = bytearray(packet)
        if hdr.flags & F_NEEDS_CSUM:
            finish_checksum(out, hdr.csum_start, hdr.csum_offset)
        return [out]
    return Segments.of(hdr, packet).packets()


@attrs.define(eq=False)
class Segments:
    """The segments of one TSO/USO super-packet, each written on demand where the caller wants it.

    `write(i, buffer, offset)` puts segment i — headers, payload, checksums — at `buffer[offset:]`,
    so the core can build each segment in place in a GSO send buffer and encrypt it there, with
    no object per segment. Per-segment header fields start zeroed in `template`, and the sums of
    the fixed parts are precomputed, so each segment's checksums cost a few additions plus one
    pass over its payload.
    """

    payload: memoryview
    template: bytearray
    version: int
    iphl: int
    proto: int
    size: int  # payload bytes per segment (gso_size); only the last may carry fewer
    count: int
    ip_sum: int  # sum of the IPv4 header with length, id and checksum zeroed (0 for IPv6)
    l4_sum: int  # sum of the L4 header (varying fields zeroed) plus the pseudo-header addresses
    ident0: int = 0
    seq0: int = 0
    flags0: int = 0

    @classmethod
    def of(cls, hdr: VnetHeader, packet: bytes | bytearray | memoryview) -> Segments:
        """Plan the segmentation of a super-packet; raises OffloadError if it cannot be valid."""
        gso_type = hdr.gso_type & ~GSO_ECN
        version, iphl, proto = _ip_layout(packet)
        if gso_type in (GSO_TCPV4, GSO_TCPV6):
            if proto != PROTO_TCP or (version == 4) != (gso_type == GSO_TCPV4):
                raise OffloadError("TSO header does not match the packet")
            if len(packet) < iphl + 20:
                raise OffloadError("TSO packet without a TCP header")
            l4hl = (packet[iphl + 12] >> 4) * 4
            if l4hl < 20:
                raise OffloadError("bad TCP header length")
            # Zeroed per segment: sequence number, flags (the low byte of the word at 12), checksum.
            varying: tuple[tuple[int, int], ...] = ((4, 8), (13, 14), (16, 18))
        elif gso_type == GSO_UDP_L4:
            if proto != PROTO_UDP:
                raise OffloadError("USO header on a non-UDP packet")
            l4hl = 8
            varying = ((4, 8),)  # length and checksum
        else:
            raise OffloadError(f"unsupported gso_type {hdr.gso_type}")
        start = iphl + l4hl
        if len(packet) < start or hdr.gso_size <= 0:
            raise OffloadError("super-packet shorter than its headers, or gso_size 0")
        template = bytearray(packet[:start])
        zeroed = ((2, 4), (4, 6), (10, 12)) if version == 4 else ((4, 6),)
        for a, b in zeroed + tuple((iphl + a, iphl + b) for a, b in varying):
            template[a:b] = bytes(b - a)
        view = memoryview(packet)
        payload_len = len(packet) - start
        plan = cls(
            payload=view[start:], template=template, version=version, iphl=iphl, proto=proto,
            size=hdr.gso_size, count=max(1, -(-payload_len // hdr.gso_size)),
            ip_sum=ones_sum(memoryview(template)[:iphl]) if version == 4 else 0,
            l4_sum=ones_sum(memoryview(template)[iphl:]) + pseudo_header_sum(packet, version,
                                                                              proto, 0),
            ident0=struct.unpack_from("!H", packet, 4)[0] if version == 4 else 0,
        )
        if proto == PROTO_TCP:
            plan.seq0 = struct.unpack_from("!I", packet, iphl + 4)[0]
            plan.flags0 = packet[iphl + 13]
        return plan

    @property
    def destination(self) -> bytes:
        template = self.template
        return bytes(template[16:20]) if self.version == 4 else bytes(template[24:40])

    @property
    def full_length(self) -> int:
        """Length of a segment carrying a full `size` of payload."""
        return len(self.template) + self.size

    @property
    def full_count(self) -> int:
        """How many segments carry a full `size` of payload (all but maybe the last)."""
        return len(self.payload) // self.size

    def length(self, i: int) -> int:
        """Length of segment i."""
        return len(self.template) + min(self.size, len(self.payload) - i * self.size)

    def write(self, i: int, buffer: bytearray, offset: int) -> int:
        """Write segment i at `buffer[offset:]`; returns its length."""
        template = self.template
        hl = len(template)
        first = i * self.size
        chunk = self.payload[first:first + self.size]
        n = len(chunk)
        body = offset + hl
        buffer[offset:body] = template
        buffer[body:body + n] = chunk
        iphl = self.iphl
        l4_length = hl - iphl + n
        if self.version == 4:
            total = hl + n
            ident = (self.ident0 + i) & 0xFFFF
            _IPV4_FIELDS.pack_into(buffer, offset + 2, total, ident)
            _U16.pack_into(buffer, offset + 10,
                           0xFFFF - (self.ip_sum + total + ident) % 0xFFFF)
        else:
            _U16.pack_into(buffer, offset + 4, l4_length)
        l4 = offset + iphl
        if self.proto == PROTO_TCP:
            seq = (self.seq0 + first) & 0xFFFFFFFF
            flags = self.flags0
            if i != self.count - 1:
                flags &= ~(TCP_FIN | TCP_PSH)  # only the last segment ends or pushes
            if i:
                flags &= ~TCP_CWR  # congestion window reduced is said once
            _U32.pack_into(buffer, l4 + 4, seq)
            buffer[l4 + 13] = flags
            total = (self.l4_sum + l4_length + (seq >> 16) + (seq & 0xFFFF) + flags
                     + ones_sum(chunk))
            _U16.pack_into(buffer, l4 + 16, 0xFFFF - total % 0xFFFF)
        else:
            # The UDP length appears twice in the sum: in the header and in the pseudo-header.
            # The checksum is never 0 (which would mean "none"): 0xFFFF - x % 0xFFFF >= 1.
            total = self.l4_sum + 2 * l4_length + ones_sum(chunk)
            _UDP_FIELDS.pack_into(buffer, l4 + 4, l4_length, 0xFFFF - total % 0xFFFF)
        return hl + n

    def write_run(self, first: int, count: int, buffer: bytearray, offset: int, stride: int,
                  padded_len: int) -> None:
        """`write` full-sized segments first..first+count-1 `stride` bytes apart from `offset`,
        each followed by zeros up to `padded_len` bytes; the same bytes as `write`, in one loop
        (the hot path of a bulk TCP sender)."""
        if self.proto != PROTO_TCP or self.version != 4:
            for k in range(count):
                start = offset + k * stride
                n = self.write(first + k, buffer, start)
                buffer[start + n:start + padded_len] = bytes(padded_len - n)
            return
        template = self.template
        hl = len(template)
        size = self.size
        payload = self.payload
        ip_sum, l4_sum, ident0, seq0 = self.ip_sum, self.l4_sum, self.ident0, self.seq0
        last = self.count - 1
        total = hl + size
        iphl = self.iphl
        l4_length = total - iphl
        pad = bytes(padded_len - total)
        folds = _FOLDS.get(size) or _fold_plan(size)
        pack_ip, pack16, pack32 = _IPV4_FIELDS.pack_into, _U16.pack_into, _U32.pack_into
        for i in range(first, first + count):
            start = offset + (i - first) * stride
            body = start + hl
            chunk = payload[i * size:(i + 1) * size]
            buffer[start:body] = template
            buffer[body:body + size] = chunk
            if pad:
                buffer[body + size:start + padded_len] = pad
            ident = (ident0 + i) & 0xFFFF
            pack_ip(buffer, start + 2, total, ident)
            pack16(buffer, start + 10, 0xFFFF - (ip_sum + total + ident) % 0xFFFF)
            seq = (seq0 + i * size) & 0xFFFFFFFF
            flags = self.flags0
            if i != last:
                flags &= ~(TCP_FIN | TCP_PSH)
            if i:
                flags &= ~TCP_CWR
            l4 = start + iphl
            pack32(buffer, l4 + 4, seq)
            buffer[l4 + 13] = flags
            value = int.from_bytes(chunk, "little")  # ones_sum(chunk), inlined
            for shift, mask in folds:
                value = (value >> shift) + (value & mask)
            value %= 0xFFFF
            check = (l4_sum + l4_length + (seq >> 16) + (seq & 0xFFFF) + flags
                     + (((value & 0xFF) << 8) | (value >> 8)))
            pack16(buffer, l4 + 16, 0xFFFF - check % 0xFFFF)

    def packets(self) -> list[bytearray]:
        """Every segment as its own bytearray (staging, fallbacks, tests)."""
        out = []
        for i in range(self.count):
            packet = bytearray(self.length(i))
            self.write(i, packet, 0)
            out.append(packet)
        return out


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IPV4_FIELDS = struct.Struct("!HH")  # total length, identification
_UDP_FIELDS = struct.Struct("!HH")  # length, checksum


# --- writing: coalescing --------------------------------------------------------------------


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
    fast: tuple[struct.Struct, tuple] | None = None  # see _continues


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
    if len(group.payloads) >= MAX_COALESCED_SEGMENTS or group.length + payload > _MAX_IP_LEN:
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
            version, iphl, proto = _ip_layout(packet)
        except OffloadError:
            out.append(packet)
            continue
        # IPv4 options or fragments are rare enough to write as they are.
        unusual_v4 = version == 4 and (iphl != 20 or packet[6] & 0x3F or packet[7])
        if unusual_v4 or (proto != PROTO_TCP and not (udp and proto == PROTO_UDP)):
            out.append(packet)
            continue
        key = _flow_key(packet, version, iphl)
        if proto == PROTO_TCP:
            candidate = _tcp_candidate(packet, version, iphl)
        else:
            candidate = (8, len(packet) - iphl - 8) if len(packet) > iphl + 8 else None
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


def _fast_fields(first: bytearray, version: int, hl: int) -> tuple[struct.Struct, tuple]:
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
            or group.length + payload > _MAX_IP_LEN):
        return False
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
