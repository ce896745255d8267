"""Packets and hypothesis strategies for the data path tests (the twins, offload, the batched core).

Packets are packed field by field here, independently of the modules under test: the ones'
complement checksum is plain arithmetic, and super-packets come with the virtio_net_hdr the
kernel gives a TUN reader (NEEDS_CSUM, csum_start = IP header length, csum_offset 16 for TCP / 6
for UDP, the checksum field holding the folded pseudo-header sum over the whole L4 length).
`fuzz/fuzz_kernels.py` does not use this file (it decodes fuzz bytes).
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

from fz_trio.datapath.offload import VnetHeader

# Wire constants (from linux/virtio_net.h, not from the module under test).
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE, GSO_TCPV4, GSO_UDP_UFO, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80
TCP, UDP = 6, 17
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
IPV4_MAX = 65535
OVERHEAD = 32  # transport header (16) + tag (16)
WINDOW_SIZE = 8192

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
seeds = st.integers(0, 2**32 - 1)


def noise(seed: int, size: int) -> bytes:
    """`size` reproducible random bytes (cheaper for hypothesis than drawing them)."""
    return random.Random(seed).randbytes(size)


# --- checksums and builders -------------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of big-endian 16-bit words, odd byte zero-padded: 0..0xFFFF, 0 only
    when every word is zero."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    total = int.from_bytes(data, "big")
    # 2**16 = 1 (mod 0xFFFF): reduce, with 0xFFFF standing for a non-zero multiple.
    value = total % 0xFFFF
    return 0xFFFF if value == 0 and total else value


def checksum(data: bytes | bytearray) -> int:
    return ~ones_sum(data) & 0xFFFF


def pseudo_header(version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return src + dst + bytes([0, proto]) + struct.pack("!H", length)
    return src + dst + struct.pack("!I", length) + b"\x00\x00\x00" + bytes([proto])


@dataclass(frozen=True)
class Flow:
    version: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    tos: int = 0
    ttl: int = 64
    df: bool = True
    flow_label: int = 0
    ip_options: bytes = b""  # IPv4 only, a multiple of 4
    options: bytes = b""  # TCP only, a multiple of 4, at most 40
    ack: int = 1
    window: int = 502

    @property
    def iphl(self) -> int:
        return 20 + len(self.ip_options) if self.version == 4 else 40

    @property
    def l4hl(self) -> int:
        return 20 + len(self.options) if self.proto == TCP else 8

    @property
    def key(self) -> tuple[object, ...]:
        return (self.version, self.proto, self.src, self.dst)


def ip_header(flow: Flow, l4_length: int, ident: int, proto: int | None = None,
              frag: int | None = None) -> bytes:
    proto = flow.proto if proto is None else proto
    if flow.version == 4:
        ihl = flow.iphl
        frag = (0x4000 if flow.df else 0) if frag is None else frag
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, flow.tos,
                                       (ihl + l4_length) & 0xFFFF, ident & 0xFFFF, frag,
                                       flow.ttl, proto, 0, flow.src, flow.dst) + flow.ip_options)
        header[10:12] = checksum(header).to_bytes(2, "big")
        return bytes(header)
    first = (6 << 28) | (flow.tos << 20) | flow.flow_label
    return struct.pack("!IHBB16s16s", first, l4_length & 0xFFFF, proto, flow.ttl, flow.src,
                       flow.dst)


def build(flow: Flow, payload: bytes, *, seq: int = 0, flags: int = ACK, ident: int = 0,
          partial: bool = False, ack: int | None = None, window: int | None = None,
          options: bytes | None = None, frag: int | None = None) -> bytearray:
    """One packet of `flow`; with `partial` the L4 checksum holds the pseudo-header sum (as the
    kernel hands out super-packets), else a full checksum."""
    if flow.proto == TCP:
        opts = flow.options if options is None else options
        l4 = bytearray(struct.pack(
            "!HHIIBBHHH", flow.sport, flow.dport, seq & 0xFFFFFFFF,
            flow.ack if ack is None else ack, ((20 + len(opts)) // 4) << 4, flags,
            flow.window if window is None else window, 0, 1 if flags & URG else 0) + opts)
        where = 16
    else:
        l4 = bytearray(struct.pack("!HHHH", flow.sport, flow.dport, (8 + len(payload)) & 0xFFFF,
                                   0))
        where = 6
    l4 += payload
    ph = pseudo_header(flow.version, flow.src, flow.dst, flow.proto, len(l4))
    if partial:
        value = ones_sum(ph)
    else:
        value = checksum(ph + bytes(l4))
        if flow.proto == UDP and value == 0:  # zero means "no checksum" in UDP (RFC 768)
            value = 0xFFFF
    l4[where:where + 2] = value.to_bytes(2, "big")
    return bytearray(ip_header(flow, len(l4), ident, frag=frag)) + l4


# --- flows ------------------------------------------------------------------------------------

v4_addresses = st.integers(0, 2**22 - 1).map(
    lambda n: (ipaddress.IPv4Address("100.64.0.0") + n).packed)
v6_addresses = st.binary(min_size=15, max_size=15).map(lambda b: b"\xfd" + b)
ports = st.integers(1, 65535)
sequence_numbers = st.one_of(U32, st.integers(2**32 - 70_000, 2**32 - 1))
ipv4_ids = st.one_of(U16, st.integers(0xFFC0, 0xFFFF))


def timestamps_option(t: tuple[int, int]) -> bytes:
    return b"\x08\x0a" + struct.pack("!II", *t)


_option_piece = st.one_of(
    st.just(b"\x01"),  # NOP
    st.tuples(U32, U32).map(timestamps_option),
    st.integers(0, 0xFFFF).map(lambda m: b"\x02\x04" + struct.pack("!H", m)),  # MSS
    st.integers(0, 14).map(lambda s: b"\x03\x03" + bytes([s])),  # window scale
    st.lists(st.tuples(U32, U32), min_size=1, max_size=4).map(  # SACK blocks
        lambda blocks: bytes([5, 2 + 8 * len(blocks)])
        + b"".join(struct.pack("!II", *b) for b in blocks)),
    st.binary(min_size=1, max_size=12),  # anything: options are opaque to the kernels
)


@st.composite
def tcp_options(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["none", "timestamps", "mixed"]))
    if kind == "none":
        return b""
    if kind == "timestamps":  # what Linux sends on every data segment
        return b"\x01\x01" + timestamps_option(draw(st.tuples(U32, U32)))
    out = b""
    for piece in draw(st.lists(_option_piece, max_size=6)):
        if len(out) + len(piece) <= 40:
            out += piece
    pad = -len(out) % 4
    return out + draw(st.sampled_from([b"\x01" * pad, b"\x00" * pad]))


@st.composite
def flows(draw: st.DrawFn, proto: int | None = None, version: int | None = None,
          ip_options: bool = True) -> Flow:
    proto = draw(st.sampled_from([TCP, UDP])) if proto is None else proto
    version = draw(st.sampled_from([4, 6])) if version is None else version
    addresses = v4_addresses if version == 4 else v6_addresses
    return Flow(
        version=version, proto=proto, src=draw(addresses), dst=draw(addresses),
        sport=draw(ports), dport=draw(ports),
        tos=draw(st.sampled_from([0, 1, 2, 0x10, 0xB8, 0xFF])), ttl=draw(st.integers(0, 255)),
        df=draw(st.booleans()), flow_label=draw(st.integers(0, 0xFFFFF)) if version == 6 else 0,
        ip_options=(draw(st.sampled_from([b""] * 6 + [b"\x01\x01\x01\x00", b"\x01" * 8,
                                                      b"\x01" * 40]))
                    if version == 4 and ip_options else b""),
        options=draw(tcp_options()) if proto == TCP else b"",
        ack=draw(U32), window=draw(U16),
    )


@st.composite
def payload_sizes(draw: st.DrawFn, unit: int, limit: int, minimum: int = 0) -> int:
    """Sizes `minimum`..`limit`, often at / around multiples of `unit` (a short last segment or
    not)."""
    kind = draw(st.sampled_from(["any", "any", "zero", "one", "multiple", "multiple+1",
                                 "multiple-1", "max"]))
    if kind == "zero":
        return minimum
    if kind == "one":
        return max(minimum, min(1, limit))
    if kind == "max":
        return limit
    if kind == "any":
        return draw(st.integers(minimum, limit))
    k = draw(st.integers(1, max(1, limit // unit)))
    size = k * unit + {"multiple": 0, "multiple+1": 1, "multiple-1": -1}[kind]
    return max(minimum, min(limit, size))


# --- TSO/USO super-packets --------------------------------------------------------------------


@dataclass(frozen=True)
class SuperPacket:
    packet: bytes
    gso_size: int
    headers: int  # IP + L4 header length
    payload_len: int

    @property
    def count(self) -> int:
        return max(1, -(-self.payload_len // self.gso_size)) if self.gso_size > 0 else 0

    def length(self, i: int) -> int:
        return self.headers + min(self.gso_size, self.payload_len - i * self.gso_size)


@st.composite
def super_packets(draw: st.DrawFn, max_segments: int = 64, proto: int | None = None,
                  version: int | None = None) -> SuperPacket:
    """A TSO (any TCP flags: FIN, PSH, CWR, SYN, ...) or USO super-packet of 1..max_segments
    segments, often with a short last one; IPv4 (with options) or IPv6."""
    flow = draw(flows(proto, version))
    if flow.proto == TCP:
        gso = draw(st.one_of(st.integers(500, 1440), st.integers(1, 64), st.just(1)))
    else:
        gso = draw(st.one_of(st.integers(1, 1452), st.integers(500, 1440)))
    headers = flow.iphl + flow.l4hl
    limit = min(IPV4_MAX - headers, gso * max_segments)
    size = draw(payload_sizes(gso, limit))
    payload = noise(draw(seeds), size)
    flags = draw(st.integers(0, 255)) if draw(st.booleans()) else (
        ACK | draw(st.sampled_from([0, PSH])) | draw(st.sampled_from([0, 0, FIN]))
        | draw(st.sampled_from([0, 0, CWR])))
    packet = build(flow, payload, seq=draw(sequence_numbers), flags=flags, ident=draw(ipv4_ids),
                   partial=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # a lying IP length field: the kernels use the buffer's
        if flow.version == 4:
            packet[2:4] = draw(U16).to_bytes(2, "big")
        else:
            packet[4:6] = draw(U16).to_bytes(2, "big")
    return SuperPacket(bytes(packet), gso, headers, size)


@dataclass(frozen=True)
class TunSuperPacket:
    """A TSO/USO super-packet as a TUN reader gets it, with what it was built from."""

    flow: Flow
    hdr: VnetHeader
    packet: bytes
    payload: bytes
    gso_size: int
    seq: int = 0
    ident: int = 0
    flags: int = 0


def l4_limit(flow: Flow) -> int:
    """Largest L4 length a super-packet of `flow` may have (64 KB IP packet)."""
    return IPV4_MAX - flow.iphl


@st.composite
def tso_packets(draw: st.DrawFn, version: int | None = None,
                max_payload: int | None = None) -> TunSuperPacket:
    """A well-formed TSO super-packet: ACK with PSH, FIN or CWR (ECN), at least one byte."""
    flow = draw(flows(TCP, version))
    mss = draw(st.integers(500, 1440))
    limit = l4_limit(flow) - flow.l4hl
    if max_payload is not None:
        limit = min(limit, max_payload)
    size = draw(payload_sizes(mss, limit, minimum=1))
    payload = noise(draw(st.integers(0, 2**32)), size)
    seq, ident = draw(sequence_numbers), draw(ipv4_ids)
    flags = ACK | draw(st.sampled_from([0, PSH])) | draw(st.sampled_from([0, 0, FIN])) \
        | draw(st.sampled_from([0, 0, CWR]))
    gso_type = GSO_TCPV4 if flow.version == 4 else GSO_TCPV6
    if flags & CWR and draw(st.booleans()):
        gso_type |= GSO_ECN
    packet = build(flow, payload, seq=seq, flags=flags, ident=ident, partial=True)
    hdr = VnetHeader(NEEDS_CSUM, gso_type, flow.iphl + flow.l4hl, mss, flow.iphl, 16)
    return TunSuperPacket(flow, hdr, bytes(packet), payload, mss, seq, ident, flags)


@st.composite
def uso_packets(draw: st.DrawFn, version: int | None = None,
                max_payload: int | None = None) -> TunSuperPacket:
    """A well-formed USO super-packet of at most 64 datagrams, at least one byte."""
    flow = draw(flows(UDP, version))
    size_per_segment = draw(st.one_of(st.integers(1, 1452), st.integers(500, 1440)))
    limit = min(l4_limit(flow) - 8, size_per_segment * 64)
    if max_payload is not None:
        limit = min(limit, max_payload)
    size = draw(payload_sizes(size_per_segment, limit, minimum=1))
    payload = noise(draw(st.integers(0, 2**32)), size)
    ident = draw(ipv4_ids)
    packet = build(flow, payload, ident=ident, partial=True)
    hdr = VnetHeader(NEEDS_CSUM, GSO_UDP_L4, flow.iphl + 8, size_per_segment, flow.iphl, 6)
    return TunSuperPacket(flow, hdr, bytes(packet), payload, size_per_segment, 0, ident, 0)


huge_gso = st.sampled_from([65535, 65536, 65537, 2**20, 2**31 - 1, 2**32 - 1, 2**32])


@st.composite
def malformed_super_packets(draw: st.DrawFn) -> tuple[bytes, int]:
    """(packet, gso_size) that often cannot be planned: random bytes, truncated headers, bad IHL,
    wrong version or protocol, bad TCP data offset, gso_size 0 / negative / huge."""
    kind = draw(st.sampled_from(["random", "truncated", "ihl", "proto", "version",
                                 "tcp_offset", "gso", "byte"]))
    sp = draw(super_packets(max_segments=4))
    packet = bytearray(sp.packet)
    gso = sp.gso_size
    if kind == "random":
        packet = bytearray(noise(draw(seeds), draw(st.integers(0, 120))))
        if packet and draw(st.booleans()):
            packet[0] = draw(st.sampled_from([0x45, 0x46, 0x4F, 0x40, 0x60, 0x6F]))
        gso = draw(st.one_of(st.integers(-2, 100), huge_gso))
    elif kind == "truncated":
        packet = packet[:draw(st.integers(0, min(len(packet), sp.headers + 2)))]
    elif kind == "ihl":
        if packet[0] >> 4 == 4:
            packet[0] = 0x40 | draw(st.integers(0, 15))
        else:
            packet[0] = (packet[0] & 0x0F) | 0x40 | draw(st.integers(0, 15))
    elif kind == "proto":
        where = 9 if packet[0] >> 4 == 4 else 6
        packet[where] = draw(st.sampled_from([0, 1, 4, 41, 58, 132, 255, TCP, UDP]))
    elif kind == "version":
        packet[0] = (draw(st.integers(0, 15)) << 4) | (packet[0] & 0x0F)
    elif kind == "tcp_offset":
        iphl = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
        if len(packet) > iphl + 12:
            packet[iphl + 12] = (draw(st.integers(0, 15)) << 4) | (packet[iphl + 12] & 0x0F)
    elif kind == "gso":
        gso = draw(st.one_of(st.integers(-3, 0), huge_gso))
    else:
        if packet:
            packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    return bytes(packet), gso


# --- slots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slots:
    """Where a seal call writes: `count` messages of `padded_len + 32` bytes `stride` apart
    from `offset` in a `dst_len`-byte buffer of random bytes."""

    first: int
    count: int
    offset: int
    stride: int
    padded_len: int
    dst_len: int
    dst_seed: int
    key: bytes
    remote_index: int
    counter: int
    valid: bool  # meant to be valid (the twins decide; this only steers generation)
    notes: tuple[str, ...] = field(default=())


keys = st.binary(min_size=32, max_size=32)
bad_keys = st.one_of(st.binary(max_size=31), st.binary(min_size=33, max_size=40))


@st.composite
def slots(draw: st.DrawFn, total: int, longest: callable) -> Slots:  # type: ignore[valid-type]
    """Slots for items `first..first+count-1` of `total`; `longest(first, count)` is the longest
    item there. Mostly valid; sometimes one contract is broken (which must raise ValueError)."""
    first = draw(st.integers(0, total))
    count = draw(st.integers(0, total - first))
    if count and draw(st.integers(0, 3)) == 0:
        count = draw(st.integers(1, min(count, 3)))  # short runs are common too
    need = longest(first, count) if count else 0
    padded_len = need + draw(st.sampled_from([0, 0, 0, 1, 3, 15, 16, 64]))
    stride = OVERHEAD + padded_len + draw(st.sampled_from([0, 0, 0, 1, 7, 64, 100]))
    offset = draw(st.sampled_from([0, 0, 1, 3, 16, 63]))
    dst_len = (offset + (count - 1) * stride + OVERHEAD + padded_len if count else offset) \
        + draw(st.sampled_from([0, 0, 1, 17, 200]))
    key = draw(keys)
    remote_index = draw(st.one_of(U32, st.sampled_from([0, 2**32 - 1])))
    counter = min(draw(st.one_of(st.integers(0, 2**20), U64, st.integers(2**64 - 70, 2**64))),
                  2**64 - count)  # the last counter used is at most 2**64 - 1
    notes: list[str] = []
    if draw(st.integers(0, 4)) == 0:
        broken = draw(st.sampled_from([
            "first", "count", "negative_count", "negative_first", "padded_short", "stride",
            "negative_stride", "dst_short", "offset", "negative_offset", "key", "index",
            "counter", "negative_counter", "padded_negative", "zero_stride"]))
        notes.append(broken)
        if broken == "first":
            first = total - count + draw(st.integers(1, 3))
        elif broken == "count":
            count = total - first + draw(st.integers(1, 3))
        elif broken == "negative_count":
            count = draw(st.integers(-3, -1))
        elif broken == "negative_first":
            first = draw(st.integers(-3, -1))
        elif broken == "padded_short" and need:
            padded_len = need - draw(st.integers(1, min(need, 5)))
        elif broken == "stride":
            stride = OVERHEAD + padded_len - draw(st.integers(1, 5))
        elif broken == "negative_stride":
            stride = -draw(st.integers(1, 2000))
        elif broken == "zero_stride":
            stride = 0
        elif broken == "dst_short":
            dst_len = max(0, dst_len - draw(st.integers(1, 300)))
        elif broken == "offset":
            offset = dst_len + draw(st.integers(-40, 40))
        elif broken == "negative_offset":
            offset = draw(st.integers(-100, -1))
        elif broken == "key":
            key = draw(bad_keys)
        elif broken == "index":
            remote_index = draw(st.sampled_from([-1, 2**32, 2**32 + 1]))
        elif broken == "counter":
            counter = 2**64 - count + draw(st.integers(1, 3))
        elif broken == "negative_counter":
            counter = draw(st.integers(-3, -1))
        elif broken == "padded_negative":
            padded_len = draw(st.integers(-40, -1))
    return Slots(first, count, offset, stride, padded_len, dst_len, draw(seeds), key,
                 remote_index, counter, not notes, tuple(notes))


# --- plain packets for seal_packets -----------------------------------------------------------

_packet_lengths = st.one_of(st.integers(0, 100), st.integers(1200, 1500), st.sampled_from(
    [0, 1, 15, 16, 17, 20, 40, 63, 64, 65, 1420, 1440, 9000]))


@st.composite
def plain_packets(draw: st.DrawFn) -> list[bytes | bytearray | memoryview]:
    lengths = draw(st.lists(_packet_lengths, min_size=0, max_size=64))
    seed = draw(seeds)
    out: list[bytes | bytearray | memoryview] = []
    for i, n in enumerate(lengths):
        data = noise(seed + i, n)
        kind = draw(st.sampled_from(["bytes", "bytearray", "memoryview", "slice"]))
        if kind == "bytearray":
            out.append(bytearray(data))
        elif kind == "memoryview":
            out.append(memoryview(bytearray(data)))
        elif kind == "slice":  # a view into a bigger buffer, not at its start
            out.append(memoryview(b"\xEE" * 3 + data + b"\xDD" * 5)[3:3 + n])
        else:
            out.append(data)
    return out


# --- inner packets for open_run ---------------------------------------------------------------

SOURCES_V4 = [bytes([10, 0, 0, i]) for i in range(1, 5)]
SOURCES_V6 = [b"\xfd" + bytes(14) + bytes([i]) for i in range(1, 5)]


@st.composite
def inner_packets(draw: st.DrawFn) -> bytes:
    """A plaintext before padding: IPv4/IPv6 with sources from a small pool (so allowed lists
    hit and miss), with lying length fields sometimes, garbage, or empty (a keepalive)."""
    kind = draw(st.sampled_from(["v4", "v4", "v6", "v6", "garbage", "empty", "short_v4",
                                 "short_v6"]))
    body = noise(draw(seeds), draw(st.sampled_from([0, 0, 1, 8, 20, 100, 1000])))
    if kind == "empty":
        return b""
    if kind == "garbage":
        data = bytearray(body[:draw(st.integers(0, len(body)))] or b"\x00")
        if draw(st.booleans()):
            data[0] = draw(st.sampled_from([0x00, 0x10, 0x50, 0x70, 0xF0, 0x45, 0x60]))
        return bytes(data)
    if kind == "short_v4":  # version 4 but less than a header
        return bytes([0x45]) + body[:draw(st.integers(0, 18))]
    if kind == "short_v6":
        return bytes([0x60]) + body[:draw(st.integers(0, 38))]
    if kind == "v4":
        src = draw(st.one_of(st.sampled_from(SOURCES_V4), st.binary(min_size=4, max_size=4)))
        total = 20 + len(body)
        total = draw(st.one_of(st.just(total), st.just(total), U16,
                               st.integers(max(0, total - 3), total + 3).map(
                                   lambda t: t & 0xFFFF)))
        header = struct.pack("!BBHHHBBH4s4s", draw(st.sampled_from([0x45, 0x46, 0x4F, 0x40])),
                             0, total, 0, 0, 64, TCP, 0, src, bytes([10, 9, 9, 9]))
        return header + body
    src = draw(st.one_of(st.sampled_from(SOURCES_V6), st.binary(min_size=16, max_size=16)))
    plen = len(body)
    plen = draw(st.one_of(st.just(plen), st.just(plen), U16,
                          st.integers(max(0, plen - 3), plen + 3).map(lambda t: t & 0xFFFF)))
    header = struct.pack("!IHBB16s16s", 0x60000000 | draw(st.integers(0, 2**28 - 1)), plen, UDP,
                         64, src, b"\xfd" + bytes(15))
    return header + body


@st.composite
def allowed_lists(draw: st.DrawFn) -> tuple[bytes, bytes]:
    v4 = draw(st.lists(st.one_of(st.sampled_from(SOURCES_V4), st.binary(min_size=4, max_size=4)),
                       max_size=5))
    v6 = draw(st.lists(st.one_of(st.sampled_from(SOURCES_V6),
                                 st.binary(min_size=16, max_size=16)), max_size=5))
    return b"".join(v4), b"".join(v6)


# --- replay counters --------------------------------------------------------------------------


@st.composite
def counter_sequences(draw: st.DrawFn, max_size: int = 200) -> list[int]:
    """Counters as a multi-queue path delivers them: mostly increasing, reordered within and
    beyond the window, duplicated, with big jumps (past 8192 and far more), near 2**64."""
    base = draw(st.one_of(st.just(0), st.integers(0, 2**20), st.integers(2**63, 2**64 - 2**24)))
    steps = draw(st.lists(st.one_of(
        st.integers(1, 3), st.integers(1, 3), st.integers(-70, 70), st.integers(0, 0),
        st.integers(-WINDOW_SIZE - 70, -WINDOW_SIZE + 70),
        st.integers(WINDOW_SIZE - 70, WINDOW_SIZE + 70), st.integers(64, 200),
        st.integers(WINDOW_SIZE, 10**6), st.integers(-10**6, -WINDOW_SIZE)),
        min_size=1, max_size=max_size))
    out = []
    current = base
    for step in steps:
        current = min(max(0, current + step), 2**64 - 2)
        out.append(current)
    return out


@st.composite
def plain_partial_packets(draw: st.DrawFn) -> tuple[VnetHeader, bytearray, Flow]:
    proto = draw(st.sampled_from([TCP, UDP]))
    flow = draw(flows(proto))
    payload = noise(draw(st.integers(0, 2**32)), draw(st.integers(0, 1400)))
    flags = draw(st.sampled_from([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK]))
    packet = build(flow, payload, seq=draw(U32), flags=flags, ident=draw(ipv4_ids), partial=True)
    hdr = VnetHeader(NEEDS_CSUM, draw(st.sampled_from([GSO_NONE, GSO_NONE | GSO_ECN])), 0, 0,
                     flow.iphl, 16 if proto == TCP else 6)
    return hdr, packet, flow
