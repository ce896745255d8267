"""TUN offloads, reading side: the virtio_net_hdr and the kernel's TSO/USO super-packets.

With IFF_VNET_HDR every TUN read and write carries a 10-byte virtio_net_hdr. Reading, the kernel
may hand us one TCP (TSO) or UDP (USO) "super-packet" of up to 64 KB with `gso_size` bytes of
payload per segment, and even plain packets may carry only a partial checksum (NEEDS_CSUM):
`segment()` turns either into ordinary packets with complete, valid checksums, fit to be encrypted
and sent to a peer whose kernel verifies them. `Segments` is the plan of one super-packet; its
`write_run` is the Python twin of the native `seal_segments` loop (without the AEAD).
"""

from __future__ import annotations

import struct

import attrs

from fz_trio.core import ip
from fz_trio.datapath.checksum import (
    _FOLDS,
    _fold_plan,
    checksum_from_sum,
    ones_sum,
    pseudo_header_sum,
)

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
MAX_IP_LEN = 65535
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


# --- reading: segmentation ------------------------------------------------------------------


def _layout(packet: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    layout = ip.layout(packet)
    if layout is None:
        raise OffloadError("not an IPv4/IPv6 packet, or a bad IPv4 header length")
    return layout


def finish_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a partial (NEEDS_CSUM) checksum in place: the field holds the pseudo-header sum,
    the sum runs from csum_start to the end."""
    where = csum_start + csum_offset
    if csum_start >= len(packet) or where + 2 > len(packet):
        raise OffloadError("checksum offsets outside the packet")
    value = checksum_from_sum(ones_sum(memoryview(packet)[csum_start:]))
    packet[where:where + 2] = value.to_bytes(2, "big")


def plain_packet(packet: bytes | bytearray | memoryview, flags: int, csum_start: int,
                 csum_offset: int) -> bytearray:
    """A TUN read without GSO as a packet of its own, its partial checksum completed if the
    vnet header's `flags` say NEEDS_CSUM."""
    out = bytearray(packet)
    if flags & F_NEEDS_CSUM:
        finish_checksum(out, csum_start, csum_offset)
    return out


def segment(hdr: VnetHeader, packet: bytes | bytearray | memoryview) -> list[bytearray]:
    """The ordinary packets a TUN read stands for, each with complete, valid checksums."""
    if hdr.gso_type & ~GSO_ECN == GSO_NONE:
        return [plain_packet(packet, hdr.flags, hdr.csum_start, hdr.csum_offset)]
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

    packet: memoryview  # the whole super-packet, headers included
    payload: memoryview
    version: int
    iphl: int
    proto: int
    size: int  # payload bytes per segment (gso_size); only the last may carry fewer
    count: int
    header_len: int  # IP + TCP/UDP header bytes, the same in every segment
    # Built together by `_prepare` on the first `write` (the native kernel builds its own, so
    # planning for it costs neither a template nor checksum work):
    _template: bytearray | None = None
    ip_sum: int = -1  # the IPv4 header with length, id and checksum zeroed (0 for IPv6)
    l4_sum: int = -1  # the L4 header (varying fields zeroed) plus the pseudo-header addresses
    ident0: int = 0
    seq0: int = 0
    flags0: int = 0

    @classmethod
    def of(cls, hdr: VnetHeader, packet: bytes | bytearray | memoryview) -> Segments:
        """Plan the segmentation of a super-packet; raises OffloadError if it cannot be valid."""
        return cls.plan(packet, hdr.gso_size, hdr.gso_type & ~GSO_ECN)

    @classmethod
    def plan(cls, packet: bytes | bytearray | memoryview, gso_size: int,
             gso_type: int | None = None) -> Segments:
        """Plan the segmentation of the IP `packet` into `gso_size` payload bytes per segment;
        `gso_type` (the vnet header's) must match the packet, None takes it from the packet."""
        version, iphl, proto = _layout(packet)
        if gso_type is None:
            gso_type = (GSO_UDP_L4 if proto == PROTO_UDP
                        else GSO_TCPV4 if version == 4 else GSO_TCPV6)
        if gso_type == GSO_TCPV4 or gso_type == GSO_TCPV6:
            if proto != PROTO_TCP or (version == 4) != (gso_type == GSO_TCPV4):
                raise OffloadError("TSO header does not match the packet")
            if len(packet) < iphl + 20:
                raise OffloadError("TSO packet without a TCP header")
            l4hl = (packet[iphl + 12] >> 4) * 4
            if l4hl < 20:
                raise OffloadError("bad TCP header length")
        elif gso_type == GSO_UDP_L4:
            if proto != PROTO_UDP:
                raise OffloadError("USO header on a non-UDP packet")
            l4hl = 8
        else:
            raise OffloadError(f"unsupported gso_type {gso_type}")
        start = iphl + l4hl
        if len(packet) < start or gso_size <= 0:
            raise OffloadError("super-packet shorter than its headers, or gso_size 0")
        if start + min(gso_size, len(packet) - start) > MAX_IP_LEN:
            raise OffloadError("segments would be longer than an IP packet")
        view = memoryview(packet)
        payload_len = len(packet) - start
        return cls(view, view[start:], version, iphl, proto, gso_size,
                   max(1, -(-payload_len // gso_size)), start)

    @property
    def template(self) -> bytearray:
        """The headers with the fields that differ per segment zeroed (IP length, id and
        checksum; TCP sequence number, flags and checksum; UDP length and checksum)."""
        if self._template is None:
            self._prepare()
        assert self._template is not None
        return self._template

    def _prepare(self) -> None:
        """What writing segments needs, built on the first `write`: the template, the sums of
        its fixed parts, and the first segment's IPv4 id and TCP sequence number and flags."""
        packet, iphl, version = self.packet, self.iphl, self.version
        template = bytearray(packet[:self.header_len])
        zeroed = ((2, 4), (4, 6), (10, 12)) if version == 4 else ((4, 6),)
        if self.proto == PROTO_TCP:
            # Zeroed: sequence number, flags (the low byte of the word at 12), checksum.
            varying: tuple[tuple[int, int], ...] = ((4, 8), (13, 14), (16, 18))
            self.seq0 = struct.unpack_from("!I", packet, iphl + 4)[0]
            self.flags0 = packet[iphl + 13]
        else:
            varying = ((4, 8),)  # length and checksum
        for a, b in zeroed + tuple((iphl + a, iphl + b) for a, b in varying):
            template[a:b] = bytes(b - a)
        if version == 4:
            self.ident0 = struct.unpack_from("!H", packet, 4)[0]
        self._template = template
        view = memoryview(template)
        self.ip_sum = ones_sum(view[:iphl]) if version == 4 else 0
        self.l4_sum = ones_sum(view[iphl:]) + pseudo_header_sum(packet, version, self.proto, 0)

    @property
    def destination(self) -> bytes:
        address = ip.destination(self.packet)
        assert address is not None  # a planned packet has a parsed IP header
        return address

    @property
    def full_length(self) -> int:
        """Length of a segment carrying a full `size` of payload."""
        return self.header_len + self.size

    @property
    def full_count(self) -> int:
        """How many segments carry a full `size` of payload (all but maybe the last)."""
        return len(self.payload) // self.size

    def length(self, i: int) -> int:
        """Length of segment i."""
        return self.header_len + min(self.size, len(self.payload) - i * self.size)

    def write(self, i: int, buffer: bytearray, offset: int) -> int:
        """Write segment i at `buffer[offset:]`; returns its length."""
        if self._template is None:
            self._prepare()
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
        if self._template is None:
            self._prepare()
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


