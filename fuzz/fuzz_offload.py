"""Coverage-guided fuzzing of the TUN offloads through the Python twin: virtio_net_hdr parsing,
TSO/USO segmentation (`fz_trio.datapath.offload`), coalescing (`coalesce`) and the segment
sealing kernel (`_pykernels.seal_segments`, opened again with `_pykernels.open_run`).

The input's first byte picks what the rest is:

    0 READ      a TUN read: a 10-byte virtio_net_hdr and the packet, parsed and segmented as
                `Device.send_reads` does
    1 COALESCE  byte 1 bit 0: UDP too; then packets, each `length (2 bytes, LE) | bytes`, for
                `coalesce`
    2 SEAL      `gso_size (2 bytes, LE) | an IP packet`: planned, sealed into slots that fit,
                and opened again

A crash is: an exception other than `OffloadError` (READ, planning) or any exception at all
(coalescing; sealing and opening within the contract); a segment that is not a whole IP packet
with valid IPv4 and TCP/UDP checksums (checked by an independent routine); `Segments.write_run`
and `write` disagreeing; a coalesced super-packet that does not segment back into the packets it
was made of (each flow's payloads and TCP sequence numbers, in order); an input packet changed;
or sealed segments that do not open back to exactly what `segment` gives.

    pip install atheris
    python fuzz/fuzz_offload.py -max_total_time=60 /tmp/offload-corpus fuzz/corpus/offload
    python fuzz/fuzz_offload.py crash-<sha1>         # reproduce one input
"""

from __future__ import annotations

import struct

import atheris
import fuzzlib

with atheris.instrument_imports(include=["fz_trio.datapath", "fz_trio.core.ip"]):
    from fz_trio.core import ip
    from fz_trio.datapath import _pykernels as PY
    from fz_trio.datapath import replay
    from fz_trio.datapath.offload import (
        GSO_ECN,
        GSO_NONE,
        PLAIN_HDR,
        VNET_HDR_LEN,
        OffloadError,
        Segments,
        VnetHeader,
        segment,
    )

READ, COALESCE, SEAL = range(3)
KEY = bytes(range(32))
RECEIVER = 7
MAX_SEGMENTS = 256  # more are planned but not all built (each costs a Python loop)


class Failure(AssertionError):
    pass


def _sum16(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of big-endian 16-bit words, folded (independent of checksum.py)."""
    data = bytes(data) + b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _check_segment(packet: bytearray) -> None:
    layout = ip.layout(packet)
    if layout is None or ip.declared_length(packet) != len(packet) or len(packet) > 65535:
        raise Failure(f"a segment that is no whole IP packet: {bytes(packet[:64]).hex()}")
    version, iphl, proto = layout
    if version == 4:
        if _sum16(packet[:iphl]) != 0xFFFF:
            raise Failure(f"bad IPv4 header checksum: {bytes(packet[:64]).hex()}")
        addresses = packet[12:20]
    else:
        addresses = packet[8:40]
    l4 = packet[iphl:]
    pseudo = bytes(addresses) + struct.pack("!HH", proto, len(l4))
    if _sum16(pseudo + bytes(l4)) != 0xFFFF:
        raise Failure(f"bad {proto} checksum: {bytes(packet[:64]).hex()}")
    if proto == 17 and struct.unpack_from("!H", packet, iphl + 4)[0] != len(l4):
        raise Failure("a UDP length that is not the segment's")


def _check_plan(plan: Segments) -> list[bytearray] | None:
    """The plan's segments, each checked, or None when there are too many to build."""
    if plan.count > MAX_SEGMENTS:
        return None
    packets = plan.packets()
    if len(packets) != plan.count:
        raise Failure("packets() does not give count segments")
    for packet in packets:
        _check_segment(packet)
    full = plan.full_count
    if full:
        # write_run (the bulk path) writes what write does, slot by slot.
        padded = plan.full_length + 3
        buffer = bytearray(b"\xaa" * (padded * full))
        plan.write_run(0, full, buffer, 0, padded, padded)
        for i in range(full):
            slot = buffer[i * padded:(i + 1) * padded]
            if slot != packets[i] + bytes(padded - len(packets[i])):
                raise Failure(f"write_run and write differ at segment {i}")
    return packets


def fuzz_read(data: bytes) -> None:
    if len(data) <= VNET_HDR_LEN:
        return
    original = bytes(data)
    read = bytearray(data)
    try:
        hdr = VnetHeader.parse(read)
        packets = segment(hdr, memoryview(read)[VNET_HDR_LEN:])
        if hdr.gso_type & ~GSO_ECN != GSO_NONE:
            plan = Segments.of(hdr, memoryview(read)[VNET_HDR_LEN:])
            if plan.count <= MAX_SEGMENTS and _check_plan(plan) != packets:
                raise Failure("segment() and Segments.packets() differ")
    except OffloadError:
        pass
    if read != original:
        raise Failure("segmenting wrote its input")


def _flow(packet: bytes | bytearray) -> tuple[bytes, int, int] | None:
    """(flow key, L4 header length, TCP sequence or -1) of a TCP/UDP packet, None otherwise."""
    layout = ip.layout(packet)
    if layout is None:
        return None
    version, iphl, proto = layout
    if proto == 6 and len(packet) >= iphl + 20:
        l4hl = (packet[iphl + 12] >> 4) * 4
        seq = struct.unpack_from("!I", packet, iphl + 4)[0]
    elif proto == 17 and len(packet) >= iphl + 8:
        l4hl, seq = 8, -1
    else:
        return None
    addresses = packet[12:20] if version == 4 else packet[8:40]
    return bytes([version, proto]) + bytes(addresses) + bytes(packet[iphl:iphl + 4]), \
        iphl + l4hl, seq


def _by_flow(packets: list[bytes]) -> dict[bytes, list[tuple[bytes, int]]]:
    flows: dict[bytes, list[tuple[bytes, int]]] = {}
    for packet in packets:
        flow = _flow(packet)
        if flow is not None:
            key, hl, seq = flow
            flows.setdefault(key, []).append((bytes(packet[hl:]), seq))
    return flows


def fuzz_coalesce(data: bytes) -> None:
    udp = bool(data[:1] and data[0] & 1)
    packets: list[bytearray] = []
    i = 1
    while i + 2 <= len(data) and len(packets) < 128:
        (length,) = struct.unpack_from("<H", data, i)
        packets.append(bytearray(data[i + 2:i + 2 + length]))
        i += 2 + length
    before = [bytes(p) for p in packets]
    out = PY.coalesce(packets, udp)
    if [bytes(p) for p in packets] != before:
        raise Failure("coalesce wrote its input")
    expanded: list[bytes] = []
    for hdr, packet in out:
        if hdr == PLAIN_HDR:
            expanded.append(bytes(packet))
            continue
        try:
            segments = segment(VnetHeader.parse(hdr), packet)
        except OffloadError as e:
            raise Failure(f"a coalesced super-packet does not segment: {e}") from e
        for s in segments:
            _check_segment(s)
        expanded.extend(bytes(s) for s in segments)
    if len(expanded) != len(packets):
        raise Failure(f"{len(packets)} packets coalesced into {len(expanded)}")
    if _by_flow(expanded) != _by_flow(before):
        raise Failure("a coalesced flow does not segment back to its packets")


def fuzz_seal(data: bytes) -> None:
    gso_size = int.from_bytes(data[:2], "little")
    packet = bytes(data[2:])
    try:
        plan = Segments.plan(packet, gso_size)
    except OffloadError:
        return
    expected = _check_plan(plan)
    if expected is None:
        return
    count = plan.count
    padded = plan.full_length
    stride = padded + 32
    dst = bytearray(stride * count)
    PY.seal_segments(packet, gso_size, 0, count, dst, 0, stride, padded, KEY, RECEIVER, 0)
    window = bytearray(replay.WINDOW_BYTES)
    result = PY.open_run(dst, 0, len(dst), stride, RECEIVER, KEY, window, 1 << 64, b"", b"")
    next_start, opened, _unchecked, _dbytes, _pbytes, expired, forged, not_ip = result
    if (expired, forged, not_ip) != (0, 0, 0) or next_start != len(dst):
        raise Failure(f"sealed segments did not open: expired {expired}, forged {forged}, "
                      f"not IP {not_ip}")
    if [bytes(p) for p in opened] != [bytes(p) for p in expected]:
        raise Failure("sealed segments opened to something else than segment() gives")


ENTRIES = (fuzz_read, fuzz_coalesce, fuzz_seal)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if data:
        ENTRIES[data[0] % len(ENTRIES)](data[1:])


if __name__ == "__main__":
    fuzzlib.main(TestOneInput, __file__)
