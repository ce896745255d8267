"""Property tests of the TUN offload functions (`fz_trio.datapath.offload`).

Packets and super-packets come from tests/datapath/strategies.py, packed field by field
independently of the module under test; the validator here checks what a receiving kernel checks
(lengths, the IPv4 header checksum, the TCP/UDP checksum over the pseudo-header).

Properties:
- `segment()` of a TSO/USO super-packet yields packets that a reference validator accepts, with
  the right lengths, sequence numbers, IPv4 ids and flags, whose payloads concatenate to the
  original; a plain NEEDS_CSUM packet comes back with its checksum finished.
- `coalesce()` then `segment()` of each output is the identity (TCP, and UDP with `udp=True`).
- coalescing never merges across flows, sequence gaps, differing headers/options/acks, or flag
  boundaries; non-IP packets and fragments pass through untouched; its output headers are
  self-consistent.
- malformed input to `segment()` raises `OffloadError` and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fz_trio.datapath import offload
from fz_trio.datapath.coalesce import coalesce
from fz_trio.datapath.offload import PLAIN_HDR, OffloadError, VnetHeader, segment
from tests.datapath.strategies import (
    ACK,
    CWR,
    DATA_VALID,
    ECE,
    FIN,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    GSO_UDP_UFO,
    IPV4_MAX,
    NEEDS_CSUM,
    PSH,
    RST,
    SYN,
    TCP,
    U32,
    UDP,
    URG,
    Flow,
    TunSuperPacket,
    build,
    checksum,
    flows,
    ipv4_ids,
    noise,
    ones_sum,
    plain_partial_packets,
    pseudo_header,
    sequence_numbers,
    timestamps_option,
    tso_packets,
    uso_packets,
)

FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=40, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CHEAP = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_module_constants_match_the_kernel_abi() -> None:
    assert offload.VNET_HDR_LEN == 10
    assert (offload.F_NEEDS_CSUM, offload.F_DATA_VALID) == (NEEDS_CSUM, DATA_VALID)
    assert (offload.GSO_NONE, offload.GSO_TCPV4, offload.GSO_TCPV6, offload.GSO_UDP_L4,
            offload.GSO_ECN) == (GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN)
    raw = struct.pack("<BBHHHH", 1, 4, 74, 1440, 40, 16)
    assert VnetHeader.parse(raw) == VnetHeader(1, 4, 74, 1440, 40, 16)
    assert VnetHeader.parse(raw).pack() == raw


# --- reference checksum and validator --------------------------------------------------------


def test_reference_checksum_known_answers() -> None:
    # RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2 (end-around carry).
    assert ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    # A textbook IPv4 header (checksum b861).
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(header) == 0xB861
    assert ones_sum(header[:10] + b"\xb8\x61" + header[12:]) == 0xFFFF
    assert ones_sum(b"\x01") == 0x0100


@dataclass(frozen=True)
class Parsed:
    version: int
    iphl: int
    proto: int
    src: bytes
    dst: bytes
    l4hl: int
    payload: bytes
    ident: int = 0  # IPv4 only

    @property
    def key(self) -> tuple[object, ...]:
        return (self.version, self.proto, self.src, self.dst)


def parse(packet: bytes | bytearray) -> Parsed:
    """Split a packet built by this module's builders (no IPv6 extension headers)."""
    version = packet[0] >> 4
    if version == 4:
        iphl = (packet[0] & 0x0F) * 4
        proto, src, dst = packet[9], bytes(packet[12:16]), bytes(packet[16:20])
        ident = struct.unpack_from("!H", packet, 4)[0]
    else:
        iphl, proto, src, dst, ident = 40, packet[6], bytes(packet[8:24]), bytes(packet[24:40]), 0
    l4hl = (packet[iphl + 12] >> 4) * 4 if proto == TCP else 8
    return Parsed(version, iphl, proto, src, dst, l4hl, bytes(packet[iphl + l4hl:]), ident)


def validate(packet: bytes | bytearray) -> Parsed:
    """Assert what a receiving kernel checks: lengths, IPv4 header checksum, TCP/UDP checksum
    with the pseudo-header; return the parsed packet."""
    packet = bytes(packet)
    version = packet[0] >> 4
    assert version in (4, 6), packet[:1]
    if version == 4:
        iphl = (packet[0] & 0x0F) * 4
        assert iphl >= 20
        assert struct.unpack_from("!H", packet, 2)[0] == len(packet), "IPv4 total length"
        assert ones_sum(packet[:iphl]) == 0xFFFF, "IPv4 header checksum"
    else:
        iphl = 40
        assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40, "IPv6 payload length"
    p = parse(packet)
    l4 = packet[iphl:]
    assert p.proto in (TCP, UDP)
    if p.proto == UDP:
        assert len(l4) >= 8
        assert struct.unpack_from("!H", l4, 4)[0] == len(l4), "UDP length"
        assert struct.unpack_from("!H", l4, 6)[0] != 0, "UDP checksum must be present"
    else:
        assert 20 <= p.l4hl <= len(l4), "TCP data offset"
    assert ones_sum(pseudo_header(version, p.src, p.dst, p.proto, len(l4)) + l4) == 0xFFFF, \
        "TCP/UDP checksum"
    return p


def tcp_fields(packet: bytes | bytearray) -> tuple[int, int, int, int, bytes]:
    """(seq, ack, flags, window, options) of a TCP packet."""
    p = parse(packet)
    seq, ack = struct.unpack_from("!II", packet, p.iphl + 4)
    flags = packet[p.iphl + 13]
    window = struct.unpack_from("!H", packet, p.iphl + 14)[0]
    return seq, ack, flags, window, bytes(packet[p.iphl + 20:p.iphl + p.l4hl])


# --- packets built from others ---------------------------------------------------------------


def with_flags(flow: Flow, packet: bytes | bytearray, flags: int) -> bytearray:
    """`packet` of `flow` rebuilt with other TCP flags (same payload, sequence number, IPv4 id)."""
    p = parse(packet)
    seq, *_ = tcp_fields(packet)
    return build(flow, p.payload, seq=seq, flags=flags, ident=p.ident)


def run_of_segments(flow: Flow, payload: bytes, mss: int, *, seq: int = 0, ident: int = 0,
                    last_flags: int = ACK) -> list[bytearray]:
    """What a sender's stack puts on the wire for `payload`: MSS-sized segments, in order."""
    out = []
    chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)]
    for i, chunk in enumerate(chunks):
        flags = last_flags if i == len(chunks) - 1 else ACK
        out.append(build(flow, chunk, seq=seq, flags=flags, ident=ident + i))
        seq += len(chunk)
    return out


def as_buffer(data: bytes, kind: str) -> bytes | bytearray | memoryview:
    return {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data)


buffer_kinds = st.sampled_from(["bytes", "bytearray", "memoryview"])


# --- segment(): TSO ----------------------------------------------------------------------------


def check_common_headers(sp: TunSuperPacket, segments: Sequence[bytearray]) -> list[Parsed]:
    """Every segment validates, keeps the super-packet's addresses and IP header fields, has
    at most gso_size payload (only the last may be shorter), and IPv4 ids count up."""
    assert segments, "no segments"
    assert all(isinstance(s, bytearray) for s in segments)
    parsed = [validate(s) for s in segments]
    flow = sp.flow
    expected = max(1, -(-len(sp.payload) // sp.gso_size))
    assert len(segments) == expected
    for i, (seg, p) in enumerate(zip(segments, parsed, strict=True)):
        assert (p.version, p.proto, p.src, p.dst) == flow.key
        assert p.iphl == flow.iphl and p.l4hl == flow.l4hl
        assert len(seg) <= flow.iphl + flow.l4hl + sp.gso_size
        if i < len(segments) - 1:
            assert len(p.payload) == sp.gso_size
        assert struct.unpack_from("!HH", seg, p.iphl) == (flow.sport, flow.dport)
        if flow.version == 4:
            assert seg[1] == flow.tos and seg[8] == flow.ttl
            assert seg[6:8] == (b"\x40\x00" if flow.df else b"\x00\x00")
            assert seg[20:flow.iphl] == flow.ip_options
            assert p.ident == (sp.ident + i) & 0xFFFF, "IPv4 ids count up from the first"
        else:
            assert seg[0:4] == sp.packet[0:4] and seg[7] == flow.ttl
    assert b"".join(p.payload for p in parsed) == sp.payload
    return parsed


@FAST
@given(sp=tso_packets(), kind=buffer_kinds)
def test_segment_tso_gives_valid_mss_sized_segments(sp: TunSuperPacket, kind: str) -> None:
    data = as_buffer(sp.packet, kind)
    segments = segment(sp.hdr, data)
    assert bytes(data) == sp.packet, "segment() changed its input"
    parsed = check_common_headers(sp, segments)
    flow = sp.flow
    seq = sp.seq
    last = len(segments) - 1
    for i, (seg, p) in enumerate(zip(segments, parsed, strict=True)):
        s, ack, flags, window, options = tcp_fields(seg)
        assert s == seq, f"segment {i}: seq {s} != {seq}"
        seq = (seq + len(p.payload)) & 0xFFFFFFFF
        assert (ack, window, options) == (flow.ack, flow.window, flow.options)
        assert flags & ACK
        assert bool(flags & FIN) == (i == last and bool(sp.flags & FIN)), f"FIN on {i}"
        assert bool(flags & PSH) == (i == last and bool(sp.flags & PSH)), f"PSH on {i}"
        assert bool(flags & CWR) == (i == 0 and bool(sp.flags & CWR)), f"CWR on {i}"
        assert flags & ~(FIN | PSH | CWR) == sp.flags & ~(FIN | PSH | CWR)
        assert struct.unpack_from("!H", seg, p.iphl + 18)[0] == 0  # urgent pointer


@FAST
@given(sp=tso_packets(max_payload=6000), hint=st.integers(0, 70000))
def test_segment_does_not_trust_hdr_len(sp: TunSuperPacket, hint: int) -> None:
    """The kernel's hdr_len is skb_headlen() — a hint that may be far more than the headers
    (forwarded packets) — so the TCP header length comes from the packet itself."""
    expected = segment(sp.hdr, sp.packet)
    hdr = VnetHeader(sp.hdr.flags, sp.hdr.gso_type, min(hint, len(sp.packet)), sp.hdr.gso_size,
                     sp.hdr.csum_start, sp.hdr.csum_offset)
    assert segment(hdr, sp.packet) == expected


def test_segment_tso_wraps_sequence_numbers_and_ids() -> None:
    flow = Flow(4, TCP, bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2]), 40000, 5201,
                options=b"\x01\x01" + timestamps_option((1, 2)))
    payload = noise(1, 3 * 1000 + 7)
    packet = build(flow, payload, seq=2**32 - 1500, flags=ACK | PSH, ident=0xFFFE, partial=True)
    hdr = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 52, 1000, 20, 16)
    segments = segment(hdr, packet)
    assert [tcp_fields(s)[0] for s in segments] == [2**32 - 1500, 2**32 - 500, 500, 1500]
    assert [parse(s).ident for s in segments] == [0xFFFE, 0xFFFF, 0, 1]
    assert [tcp_fields(s)[2] for s in segments] == [ACK, ACK, ACK, ACK | PSH]
    for s in segments:
        validate(s)


# --- segment(): USO ----------------------------------------------------------------------------


@FAST
@given(sp=uso_packets(), kind=buffer_kinds)
def test_segment_uso_gives_valid_datagrams(sp: TunSuperPacket, kind: str) -> None:
    data = as_buffer(sp.packet, kind)
    segments = segment(sp.hdr, data)
    assert bytes(data) == sp.packet
    check_common_headers(sp, segments)


@FAST
@given(sp=st.one_of(tso_packets(), uso_packets()), extra=st.integers(0, 40),
       offset=st.integers(0, 64))
def test_write_run_writes_what_write_does(sp: TunSuperPacket, extra: int, offset: int) -> None:
    """The bulk writer of full-sized segments gives write()'s bytes, zero-padded."""
    plan = offload.Segments.of(sp.hdr, sp.packet)
    padded = plan.full_length + extra
    stride = padded + 32
    count = plan.full_count
    got = bytearray(b"\xAA" * (offset + stride * count))
    plan.write_run(0, count, got, offset, stride, padded)
    for i in range(count):
        expected = bytearray(plan.length(i))
        plan.write(i, expected, 0)
        start = offset + i * stride
        assert got[start:start + padded] == expected + bytes(extra), f"segment {i}"


# --- segment(): plain packets ------------------------------------------------------------------


@CHEAP
@given(case=plain_partial_packets(), kind=buffer_kinds)
def test_segment_finishes_a_partial_checksum(case: tuple[VnetHeader, bytearray, Flow],
                                             kind: str) -> None:
    hdr, packet, flow = case
    data = as_buffer(bytes(packet), kind)
    out = segment(hdr, data)
    assert bytes(data) == bytes(packet)
    assert len(out) == 1
    validate(out[0])
    where = flow.iphl + hdr.csum_offset
    # Only the checksum field changed.
    assert out[0][:where] == packet[:where] and out[0][where + 2:] == packet[where + 2:]


@CHEAP
@given(data=st.binary(min_size=1, max_size=200),
       flags=st.sampled_from([0, DATA_VALID]))
def test_segment_returns_a_plain_packet_as_it_is(data: bytes, flags: int) -> None:
    out = segment(VnetHeader(flags, GSO_NONE, 0, 0, 0, 0), data)
    assert [bytes(p) for p in out] == [data]


# --- coalesce(): identity ----------------------------------------------------------------------


def copies(packets: Sequence[bytes | bytearray]) -> list[bytearray]:
    return [bytearray(p) for p in packets]


def resegment(items: Sequence[tuple[bytes, bytes | bytearray]]) -> list[list[bytes]]:
    """segment() of every coalesce() output, as a kernel receiving the writes would see them."""
    groups = []
    for raw, packet in items:
        hdr = VnetHeader.parse(raw)
        segments = segment(hdr, packet)
        if hdr.gso_type != GSO_NONE:
            for s in segments:
                validate(s)  # what the kernel makes of a super-packet must be valid
        groups.append([canon(s) for s in segments])
    return groups


def canon(packet: bytes | bytearray) -> bytes:
    """`packet` with a checksum field of 0x0000 in the IPv4 header or TCP header written as 0xFFFF.

    Both are the same ones' complement number (RFC 1624 section 3): the kernel writes 0x0000
    when the sum is 0xFFFF, fz_trio may write 0xFFFF, and a receiver accepts either. Identity is
    judged on these canonical bytes; the segments of every super-packet are also validated."""
    b = bytearray(packet)
    if len(b) >= 20 and b[0] >> 4 == 4 and 20 <= (b[0] & 0x0F) * 4 <= len(b):
        iphl, proto, fragment = (b[0] & 0x0F) * 4, b[9], b[6] & 0x3F or b[7]
        if b[10:12] == b"\x00\x00":
            b[10:12] = b"\xff\xff"
    elif len(b) >= 40 and b[0] >> 4 == 6:
        iphl, proto, fragment = 40, b[6], 0
    else:
        return bytes(b)
    where = iphl + 16
    if proto == TCP and not fragment and len(b) >= where + 2 and b[where:where + 2] == b"\x00\x00":
        b[where:where + 2] = b"\xff\xff"
    return bytes(b)


def canon_all(packets: Sequence[bytes | bytearray]) -> list[bytes]:
    return [canon(p) for p in packets]


def check_output_headers(items: Sequence[tuple[bytes, bytes | bytearray]]) -> None:
    """A plain output is written as it is; a super-packet's header says exactly how the kernel
    must split it, and its checksum field holds the folded pseudo-header sum (CHECKSUM_PARTIAL)."""
    for raw, packet in items:
        assert len(raw) == 10
        hdr = VnetHeader.parse(raw)
        if hdr.gso_type == GSO_NONE:
            assert not hdr.flags & NEEDS_CSUM
            continue
        packet = bytes(packet)
        p = parse(packet)
        l4_length = len(packet) - p.iphl
        assert hdr.flags == NEEDS_CSUM
        if p.version == 4:
            assert struct.unpack_from("!H", packet, 2)[0] == len(packet) <= IPV4_MAX
            assert ones_sum(packet[:p.iphl]) == 0xFFFF, "IPv4 header checksum"
        else:
            assert struct.unpack_from("!H", packet, 4)[0] == l4_length <= 0xFFFF
        if p.proto == TCP:
            assert hdr.gso_type == (GSO_TCPV4 if p.version == 4 else GSO_TCPV6)
            assert hdr.csum_offset == 16
        else:
            assert hdr.gso_type == GSO_UDP_L4
            assert hdr.csum_offset == 6
            assert struct.unpack_from("!H", packet, p.iphl + 4)[0] == l4_length, "UDP length"
        assert hdr.csum_start == p.iphl
        assert hdr.hdr_len == p.iphl + p.l4hl
        field = struct.unpack_from("!H", packet, p.iphl + hdr.csum_offset)[0]
        assert field == ones_sum(pseudo_header(p.version, p.src, p.dst, p.proto, l4_length)), \
            "checksum field is not the folded pseudo-header sum"
        segments = segment(hdr, packet)
        assert len(segments) <= offload.MAX_COALESCED_SEGMENTS
        assert hdr.gso_size == len(parse(segments[0]).payload)


def coalesce_checked(packets: Sequence[bytearray], *, udp: bool = False
                     ) -> list[tuple[bytes, bytes | bytearray]]:
    originals = [bytes(p) for p in packets]
    items = coalesce(copies(originals), udp=udp)
    check_output_headers(items)
    return items


@FAST
@given(sp=tso_packets())
def test_coalesce_of_segments_is_the_identity_tcp(sp: TunSuperPacket) -> None:
    segments = [bytes(s) for s in segment(sp.hdr, sp.packet)]
    items = coalesce_checked(copies(segments))
    groups = resegment(items)
    assert [s for g in groups for s in g] == canon_all(segments)


@FAST
@given(sp=uso_packets())
def test_coalesce_of_segments_is_the_identity_udp(sp: TunSuperPacket) -> None:
    segments = [bytes(s) for s in segment(sp.hdr, sp.packet)]
    items = coalesce_checked(copies(segments), udp=True)
    groups = resegment(items)
    assert [s for g in groups for s in g] == canon_all(segments)
    # Without udp=True, UDP is written as it is.
    plain = coalesce(copies(segments))
    assert all(VnetHeader.parse(h).gso_type == GSO_NONE for h, _ in plain)
    assert [bytes(p) for _, p in plain] == segments


def greedy_group_count(flow: Flow, sizes: Sequence[int]) -> int:
    """How many super-packets a run of segments needs at most: ≤ 64 segments and ≤ 64 KB each."""
    groups, count, length = 0, 0, 0
    for size in sizes:
        if count and (count == offload.MAX_COALESCED_SEGMENTS
                      or length + size > IPV4_MAX):
            count = 0
        if count == 0:
            groups += 1
            length = flow.iphl + flow.l4hl
        count += 1
        length += size
    return groups


@FAST
@given(sp=tso_packets(), psh=st.booleans())
def test_coalesce_merges_a_plain_run_fully(sp: TunSuperPacket, psh: bool) -> None:
    """An uninterrupted run of one flow's segments (ACK, PSH at the end at most) becomes as few
    super-packets as the 64-segment / 64 KB limits allow."""
    flow = sp.flow
    run = run_of_segments(flow, sp.payload, sp.gso_size, seq=sp.seq, ident=sp.ident,
                          last_flags=ACK | PSH if psh else ACK)
    items = coalesce_checked(run)
    assert [s for g in resegment(items) for s in g] == canon_all(run)
    sizes = [len(p) - flow.iphl - flow.l4hl for p in run]
    if flow.version == 4 and flow.ip_options:
        assert len(items) == len(run)  # IPv4 options: written as they are
    else:
        assert len(items) <= greedy_group_count(flow, sizes)


# --- coalesce(): what must not merge -----------------------------------------------------------


def group_sizes(items: Sequence[tuple[bytes, bytes | bytearray]]) -> list[int]:
    return [len(g) for g in resegment(items)]


def boundaries(items: Sequence[tuple[bytes, bytes | bytearray]]) -> set[int]:
    """Indices i such that input packet i starts an output (single-flow inputs)."""
    out, at = set(), 0
    for size in group_sizes(items):
        out.add(at)
        at += size
    return out


@st.composite
def runs(draw: st.DrawFn, proto: int = TCP, min_segments: int = 3,
         max_segments: int = 12) -> tuple[Flow, list[bytearray], int]:
    """A flow, a run of `min_segments`.. full-size segments of it, and the MSS."""
    flow = draw(flows(proto))
    mss = draw(st.integers(500, 1440))
    n = draw(st.integers(min_segments, max_segments))
    payload = noise(draw(st.integers(0, 2**32)), n * mss)
    seq, ident = draw(sequence_numbers), draw(ipv4_ids)
    if proto == TCP:
        packets = run_of_segments(flow, payload, mss, seq=seq, ident=ident)
    else:
        packets = [build(flow, payload[i * mss:(i + 1) * mss], ident=ident + i) for i in range(n)]
    return flow, packets, mss


@FAST
@given(a=runs(max_segments=8), b=runs(max_segments=8), udp=st.booleans(), data=st.data())
def test_coalesce_never_merges_across_flows(a: tuple[Flow, list[bytearray], int],
                                            b: tuple[Flow, list[bytearray], int], udp: bool,
                                            data: st.DataObject) -> None:
    flow_a, packets_a, _ = a
    flow_b, packets_b, _ = b
    if udp:
        flow_b = replace(flow_b, proto=UDP, options=b"")
        packets_b = [build(flow_b, parse(p).payload, ident=parse(p).ident) for p in packets_b]

    def key(packet: bytes) -> tuple[object, ...]:
        p = parse(packet)
        return (*p.key, bytes(packet[p.iphl:p.iphl + 4]))  # addresses and ports

    assume(key(packets_a[0]) != key(packets_b[0]))
    order = data.draw(st.permutations([0] * len(packets_a) + [1] * len(packets_b)))
    queues = [list(packets_a), list(packets_b)]
    mixed = [queues[which].pop(0) for which in order]
    items = coalesce_checked(mixed, udp=udp)
    groups = resegment(items)
    for g in groups:
        assert len({key(p) for p in g}) == 1, "an output mixes two flows"
    for original in (packets_a, packets_b):
        k = key(original[0])
        assert [p for g in groups for p in g if key(p) == k] == canon_all(original)


def _other_address(address: bytes) -> bytes:
    return address[:-1] + bytes([address[-1] ^ 1])


FLOW_CHANGES: dict[str, Callable[[Flow], Flow]] = {
    "sport": lambda f: replace(f, sport=f.sport % 65535 + 1),
    "dport": lambda f: replace(f, dport=f.dport % 65535 + 1),
    "src": lambda f: replace(f, src=_other_address(f.src)),
    "dst": lambda f: replace(f, dst=_other_address(f.dst)),
}


@pytest.mark.parametrize("field", sorted(FLOW_CHANGES))
@FEW
@given(r=runs(min_segments=4), data=st.data(), udp=st.booleans())
def test_coalesce_never_merges_flows_that_differ_in_one_field(
        r: tuple[Flow, list[bytearray], int], data: st.DataObject, udp: bool, field: str) -> None:
    """Two flows that differ only in one port or address, whose packets would otherwise continue
    each other's run (same sequence space, ids, ack, options): still never merged."""
    flow, packets, _ = r
    if udp:
        flow = replace(flow, proto=UDP, options=b"")
    other = FLOW_CHANGES[field](flow)
    mask = data.draw(st.lists(st.booleans(), min_size=len(packets), max_size=len(packets)))
    assume(any(mask) and not all(mask))
    mixed = []
    for p, use_other in zip(packets, mask, strict=True):
        seq = tcp_fields(p)[0] if not udp else 0
        mixed.append(build(other if use_other else flow, parse(p).payload, seq=seq,
                           ident=parse(p).ident))
    items = coalesce_checked(mixed, udp=udp)
    groups = resegment(items)

    def key(packet: bytes) -> tuple[object, ...]:
        q = parse(packet)
        return (*q.key, bytes(packet[q.iphl:q.iphl + 4]))

    for g in groups:
        assert len({key(p) for p in g}) == 1, "an output mixes two flows"
    for which in (False, True):
        original = [p for p, m in zip(mixed, mask, strict=True) if m == which]
        k = key(bytes(original[0]))
        assert [p for g in groups for p in g if key(p) == k] == canon_all(original)


@FAST
@given(r=runs(min_segments=3), data=st.data())
def test_coalesce_never_merges_across_a_sequence_gap(r: tuple[Flow, list[bytearray], int],
                                                     data: st.DataObject) -> None:
    _, packets, _ = r
    gap = data.draw(st.integers(1, len(packets) - 2))
    kept = packets[:gap] + packets[gap + 1:]
    items = coalesce_checked(kept)
    assert [p for g in resegment(items) for p in g] == canon_all(kept)
    assert gap in boundaries(items)  # packet gap+1 (now at index gap) starts a new output


@FAST
@given(r=runs(proto=UDP, min_segments=3), data=st.data())
def test_coalesce_udp_never_merges_a_longer_datagram(r: tuple[Flow, list[bytearray], int],
                                                     data: st.DataObject) -> None:
    """A shorter datagram ends a USO run; a longer one starts a new run."""
    flow, packets, mss = r
    at = data.draw(st.integers(1, len(packets) - 2))
    shorter = data.draw(st.booleans())
    payload = parse(packets[at]).payload
    payload = payload[:-1] if shorter else payload + b"+"
    packets = packets[:at] + [build(flow, payload, ident=parse(packets[at]).ident)] \
        + packets[at + 1:]
    items = coalesce_checked(packets, udp=True)
    assert [p for g in resegment(items) for p in g] == canon_all(packets)
    assert (at + 1 if shorter else at) in boundaries(items)


@FAST
@given(r=runs(proto=UDP, min_segments=3), data=st.data())
def test_coalesce_udp_leaves_a_datagram_with_a_wrong_udp_length_alone(
        r: tuple[Flow, list[bytearray], int], data: st.DataObject) -> None:
    """A datagram whose UDP length disagrees with its IP length is written exactly as it came
    (the kernel's GRO would not merge it; on the way up the kernel trims or drops it), and the
    run is cut there, in both directions (issue 14's finding)."""
    _, packets, _ = r
    at = data.draw(st.integers(1, len(packets) - 2))
    iphl = parse(packets[at]).iphl
    udp_length = struct.unpack_from("!H", packets[at], iphl + 4)[0]
    wrong = data.draw(st.integers(0, 0xFFFF).filter(lambda n: n != udp_length))
    struct.pack_into("!H", packets[at], iphl + 4, wrong)
    odd = bytes(packets[at])
    items = coalesce_checked(packets, udp=True)
    assert (PLAIN_HDR, odd) in [(bytes(h), bytes(p)) for h, p in items]
    assert {at, at + 1} <= boundaries(items)


HEADER_CHANGES: dict[str, Callable[[Flow], Flow]] = {
    "ack": lambda f: replace(f, ack=(f.ack + 1) & 0xFFFFFFFF),
    "window": lambda f: replace(f, window=f.window ^ 1),
    "options": lambda f: replace(
        f, options=(f.options[:-4] + bytes([f.options[-4] ^ 1]) + f.options[-3:]
                    if f.options.startswith(b"\x01\x01\x08\x0a")
                    else b"\x01\x01" + timestamps_option((7, 8)))),
    "tos": lambda f: replace(f, tos=f.tos ^ 0x03),  # an ECN CE mark
    "ttl": lambda f: replace(f, ttl=f.ttl % 255 + 1),
}


@pytest.mark.parametrize("change", sorted(HEADER_CHANGES))
@FEW
@given(r=runs(min_segments=3), data=st.data())
def test_coalesce_never_merges_across_differing_headers(r: tuple[Flow, list[bytearray], int],
                                                        data: st.DataObject, change: str) -> None:
    """From packet k on, the ack / window / TCP options / TOS / TTL differ: k starts an output."""
    flow, packets, _ = r
    k = data.draw(st.integers(1, len(packets) - 1))
    changed = HEADER_CHANGES[change](flow)
    rebuilt = list(packets[:k])
    for p in packets[k:]:
        seq, *_ = tcp_fields(p)
        rebuilt.append(build(changed, parse(p).payload, seq=seq, ident=parse(p).ident))
    items = coalesce_checked(rebuilt)
    assert [p for g in resegment(items) for p in g] == canon_all(rebuilt)
    assert k in boundaries(items)


@pytest.mark.parametrize("flag", [FIN, SYN, RST, URG, FIN | PSH, ECE, CWR],
                         ids=["FIN", "SYN", "RST", "URG", "FIN+PSH", "ECE", "CWR"])
@FEW
@given(r=runs(min_segments=3), data=st.data())
def test_coalesce_never_merges_across_flag_boundaries(r: tuple[Flow, list[bytearray], int],
                                                      data: st.DataObject, flag: int) -> None:
    """A segment with FIN/SYN/RST/URG (or ECE/CWR) in a run is written as a plain packet at its
    place: nothing before it and nothing after it joins it."""
    flow, packets, _ = r
    k = data.draw(st.integers(1, len(packets) - 2))
    odd = with_flags(flow, packets[k], ACK | flag)
    packets = packets[:k] + [odd] + packets[k + 1:]
    items = coalesce_checked(packets)
    assert [p for g in resegment(items) for p in g] == canon_all(packets)
    assert {k, k + 1} <= boundaries(items)
    at = sorted(boundaries(items)).index(k)
    hdr, written = items[at]
    assert VnetHeader.parse(hdr).gso_type == GSO_NONE and bytes(written) == bytes(odd)


@FAST
@given(r=runs(min_segments=3), data=st.data())
def test_psh_ends_a_super_packet(r: tuple[Flow, list[bytearray], int],
                                 data: st.DataObject) -> None:
    flow, packets, _ = r
    k = data.draw(st.integers(0, len(packets) - 2))
    packets = packets[:k] + [with_flags(flow, packets[k], ACK | PSH)] + packets[k + 1:]
    items = coalesce_checked(packets)
    assert [p for g in resegment(items) for p in g] == canon_all(packets)
    assert k + 1 in boundaries(items)


@FAST
@given(r=runs(min_segments=3), data=st.data())
def test_pure_ack_in_a_run_is_written_at_its_place(r: tuple[Flow, list[bytearray], int],
                                                   data: st.DataObject) -> None:
    flow, packets, _ = r
    k = data.draw(st.integers(1, len(packets) - 1))
    seq, *_ = tcp_fields(packets[k])
    ack = build(flow, b"", seq=seq, ident=parse(packets[k - 1]).ident)
    packets = packets[:k] + [ack] + packets[k:]
    items = coalesce_checked(packets)
    assert [p for g in resegment(items) for p in g] == canon_all(packets)
    assert {k, k + 1} <= boundaries(items)


# --- coalesce(): pass-through ------------------------------------------------------------------


@st.composite
def strangers(draw: st.DrawFn) -> bytes:
    """Packets coalesce() must write untouched: not IPv4/IPv6, too short, IPv4 fragments, IPv6
    with an extension header, protocols other than TCP/UDP."""
    kind = draw(st.sampled_from(["garbage", "short", "v4-fragment", "v6-fragment", "icmp"]))
    if kind == "garbage":
        first = draw(st.integers(0, 255).filter(lambda b: b >> 4 not in (4, 6)))
        return bytes([first]) + draw(st.binary(max_size=100))
    if kind == "short":
        return bytes([draw(st.sampled_from([0x45, 0x60]))]) + draw(st.binary(max_size=18))
    flow = draw(flows(TCP))
    payload = noise(draw(st.integers(0, 2**32)), draw(st.integers(1, 1400)))
    if kind == "icmp" or (kind == "v6-fragment" and flow.version == 4):
        flow = replace(flow, proto=1 if flow.version == 4 else 58, options=b"")
        packet = build(replace(flow, proto=UDP), payload)  # any body will do
        packet[9 if flow.version == 4 else 6] = flow.proto
        return bytes(packet)
    packet = build(flow, payload)
    if kind == "v4-fragment" and flow.version == 4:
        packet[6:8] = struct.pack("!H", draw(st.sampled_from([0x2000, 0x2001, 0x0010, 0x6000])))
        packet[10:12] = b"\x00\x00"
        packet[10:12] = checksum(bytes(packet[:flow.iphl])).to_bytes(2, "big")
        return bytes(packet)
    # IPv6 fragment header (44) in front of the TCP segment.
    body = packet[40:]
    frag = bytes([TCP, 0]) + struct.pack("!HI", draw(st.sampled_from([0x0001, 0x0008])),
                                         draw(U32))
    return bytes(struct.pack("!IHBB16s16s", 0x60000000, len(body) + 8, 44, flow.ttl,
                             flow.src, flow.dst) + frag + body)


@FAST
@given(r=runs(min_segments=2, max_segments=6), others=st.lists(strangers(), min_size=1,
                                                                max_size=4),
       data=st.data())
def test_coalesce_passes_other_packets_through(r: tuple[Flow, list[bytearray], int],
                                               others: list[bytes], data: st.DataObject) -> None:
    _, packets, _ = r
    mixed: list[bytes] = [bytes(p) for p in packets]
    for other in others:
        mixed.insert(data.draw(st.integers(0, len(mixed))), other)
    items = coalesce_checked(copies(mixed), udp=data.draw(st.booleans()))
    flat = [p for g in resegment(items) for p in g]
    stranger_set = set(others)
    canon_strangers = set(canon_all(others))
    # Every stranger is written once, untouched, as a plain packet, in its relative order.
    written = [bytes(p) for h, p in items if bytes(p) in stranger_set]
    assert written == [p for p in mixed if p in stranger_set]
    for h, p in items:
        if bytes(p) in stranger_set:
            assert VnetHeader.parse(h).gso_type == GSO_NONE
    assert [p for p in flat if p not in canon_strangers] == canon_all(packets)


@FAST
@given(r=runs(min_segments=2, max_segments=8),
       frag=st.sampled_from([0x2000, 0x6000, 0x2010, 0x0001, 0x00B9]))
def test_coalesce_never_merges_ipv4_fragments(r: tuple[Flow, list[bytearray], int],
                                              frag: int) -> None:
    """A run of IPv4 fragments that look alike (same flags and offset, consecutive TCP sequence
    numbers in the first bytes) is written untouched, packet by packet."""
    flow, packets, _ = r
    assume(flow.version == 4)
    fragments = []
    for p in packets:
        p = bytearray(p)
        p[6:8] = struct.pack("!H", frag | (0x4000 if flow.df and not frag & 0x2000 else 0))
        p[10:12] = b"\x00\x00"
        p[10:12] = checksum(bytes(p[:flow.iphl])).to_bytes(2, "big")
        fragments.append(bytes(p))
    items = coalesce_checked(copies(fragments), udp=True)
    assert [bytes(p) for _, p in items] == fragments
    assert all(VnetHeader.parse(h).gso_type == GSO_NONE for h, _ in items)


@FEW
@given(flow=flows(UDP), size=st.integers(1, 400), n=st.integers(65, 140), seed=U32)
def test_coalesce_keeps_uso_super_packets_within_64_segments(flow: Flow, size: int, n: int,
                                                             seed: int) -> None:
    """UDP_SEGMENT allows at most 64 segments per super-packet on the kernels we support."""
    payload = noise(seed, size * n)
    packets = [build(flow, payload[i * size:(i + 1) * size], ident=i) for i in range(n)]
    items = coalesce_checked(packets, udp=True)
    groups = resegment(items)
    assert [p for g in groups for p in g] == canon_all(packets)
    assert all(len(g) <= 64 for g in groups), [len(g) for g in groups]
    if not flow.ip_options:
        assert len(items) <= -(-n // 64) + 1  # and it does coalesce them


def test_coalesce_of_nothing_and_of_one_packet() -> None:
    assert coalesce([]) == []
    flow = Flow(6, TCP, b"\xfd" + bytes(15), b"\xfd" + bytes(14) + b"\x01", 1, 2)
    one = build(flow, b"x" * 100)
    [(hdr, packet)] = coalesce([bytearray(one)])
    assert VnetHeader.parse(hdr).gso_type == GSO_NONE and bytes(packet) == bytes(one)


@FAST
@given(r=runs(min_segments=2, max_segments=6), udp=st.booleans())
def test_coalesce_does_not_modify_its_input(r: tuple[Flow, list[bytearray], int],
                                            udp: bool) -> None:
    _, packets, _ = r
    # The last segment pushes: merging it must not set PSH on the caller's first packet.
    seq, *_ = tcp_fields(packets[-1])
    packets[-1] = build(r[0], parse(packets[-1]).payload, seq=seq, flags=ACK | PSH,
                        ident=parse(packets[-1]).ident)
    before = [bytes(p) for p in packets]
    coalesce(packets, udp=udp)
    assert [bytes(p) for p in packets] == before


# --- segment(): malformed input ----------------------------------------------------------------


@FAST
@given(sp=st.one_of(tso_packets(max_payload=3000), uso_packets(max_payload=3000)),
       data=st.data())
def test_segment_rejects_truncated_headers(sp: TunSuperPacket, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, sp.flow.iphl + sp.flow.l4hl - 1))
    with pytest.raises(OffloadError):
        segment(sp.hdr, sp.packet[:cut])


@FAST
@given(sp=st.one_of(tso_packets(max_payload=3000), uso_packets(max_payload=3000)))
def test_segment_rejects_gso_size_zero(sp: TunSuperPacket) -> None:
    with pytest.raises(OffloadError):
        segment(replace_hdr(sp.hdr, gso_size=0), sp.packet)


@FAST
@given(sp=tso_packets(max_payload=3000), offset=st.integers(0, 4))
def test_segment_rejects_a_tcp_data_offset_below_5(sp: TunSuperPacket, offset: int) -> None:
    packet = bytearray(sp.packet)
    packet[sp.flow.iphl + 12] = offset << 4
    with pytest.raises(OffloadError):
        segment(sp.hdr, packet)


def replace_hdr(hdr: VnetHeader, **changes: int) -> VnetHeader:
    fields = {"flags": hdr.flags, "gso_type": hdr.gso_type, "hdr_len": hdr.hdr_len,
              "gso_size": hdr.gso_size, "csum_start": hdr.csum_start,
              "csum_offset": hdr.csum_offset} | changes
    return VnetHeader(**fields)


@FAST
@given(sp=st.one_of(tso_packets(max_payload=3000), uso_packets(max_payload=3000)),
       gso_type=st.integers(0, 255), data=st.data())
def test_segment_rejects_a_gso_type_that_does_not_fit(sp: TunSuperPacket, gso_type: int,
                                                      data: st.DataObject) -> None:
    fits = {(4, TCP): GSO_TCPV4, (6, TCP): GSO_TCPV6, (4, UDP): GSO_UDP_L4, (6, UDP): GSO_UDP_L4}
    right = fits[(sp.flow.version, sp.flow.proto)]
    assume(gso_type & ~GSO_ECN not in (GSO_NONE, right))
    with pytest.raises(OffloadError):
        segment(replace_hdr(sp.hdr, gso_type=gso_type), sp.packet)


@FAST
@given(case=plain_partial_packets(), data=st.data())
def test_segment_rejects_checksum_offsets_outside_the_packet(
        case: tuple[VnetHeader, bytearray, Flow], data: st.DataObject) -> None:
    hdr, packet, _ = case
    if data.draw(st.booleans()):
        hdr = replace_hdr(hdr, csum_start=data.draw(st.integers(len(packet), 0xFFFF)))
    else:
        start = data.draw(st.integers(0, len(packet) - 1))
        hdr = replace_hdr(hdr, csum_start=start,
                          csum_offset=data.draw(st.integers(len(packet) - start - 1, 0xFFFF)))
    with pytest.raises(OffloadError):
        segment(hdr, packet)


vnet_headers = st.builds(
    VnetHeader,
    flags=st.one_of(st.sampled_from([0, NEEDS_CSUM, DATA_VALID]), st.integers(0, 255)),
    gso_type=st.one_of(st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_UDP_UFO, GSO_TCPV6, GSO_UDP_L4,
                                        GSO_TCPV4 | GSO_ECN, GSO_TCPV6 | GSO_ECN]),
                       st.integers(0, 255)),
    hdr_len=st.integers(0, 0xFFFF),
    gso_size=st.one_of(st.integers(0, 3), st.integers(0, 0xFFFF)),
    csum_start=st.one_of(st.integers(0, 80), st.integers(0, 0xFFFF)),
    csum_offset=st.one_of(st.sampled_from([6, 16]), st.integers(0, 0xFFFF)),
)


@st.composite
def mangled_packets(draw: st.DrawFn) -> bytes:
    """Garbage, or a real packet with some bytes overwritten / cut short."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    sp = draw(st.one_of(tso_packets(max_payload=1500), uso_packets(max_payload=1500)))
    packet = bytearray(sp.packet)
    for _ in range(draw(st.integers(0, 4))):
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    return bytes(packet[:draw(st.integers(0, len(packet)))])


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hdr=vnet_headers, packet=mangled_packets(), kind=buffer_kinds)
def test_segment_raises_only_offload_error(hdr: VnetHeader, packet: bytes, kind: str) -> None:
    assume(hdr.gso_size == 0 or len(packet) // max(1, hdr.gso_size) < 3000)
    try:
        out = segment(hdr, as_buffer(packet, kind))
    except OffloadError:
        return
    assert isinstance(out, list) and all(isinstance(p, bytearray) for p in out)


@CHEAP
@given(data=st.binary(max_size=9))
def test_vnet_header_parse_rejects_short_reads(data: bytes) -> None:
    with pytest.raises(OffloadError):
        VnetHeader.parse(data)
