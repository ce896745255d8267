"""The data path's batch kernels in Python: the specification, and the fallback without a compiler.

`fz_trio/datapath/_kernels.c` implements the same four functions with the same arguments, results
and errors, byte for byte (tests/datapath/test_twins.py holds them to it). Each call does a whole
run of packets, never one: the caller (the Device) has decided which peer, which session, which
counters and which GSO slots; a kernel only moves and transforms bytes.

Errors: a `ValueError` means the caller broke the contract (an offset outside a buffer, a segment
longer than its slot); nothing is written then. Hostile packet contents are never an error: they
are counted drops in the results.

Transport message layout (WireGuard type 4): `<IIQ` header (type 4 with three zero bytes,
receiver index, counter), then the zero-padded plaintext encrypted with ChaCha20-Poly1305 under the
nonce `0^32 || LE64(counter)`, no associated data, then the 16-byte tag.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fz_trio.datapath import replay
from fz_trio.datapath.aead import TAG_LEN, open_into, seal_in_place
from fz_trio.datapath.coalesce import coalesce as _coalesce
from fz_trio.datapath.offload import OffloadError, Segments

Buffer = bytes | bytearray | memoryview

TRANSPORT_HEADER = struct.Struct("<IIQ")
HEADER_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
TYPE_TRANSPORT = 4
_ZEROS = bytes(65536)


def _zero(dst: bytearray, start: int, end: int) -> None:
    n = end - start
    dst[start:end] = _ZEROS[:n] if n <= len(_ZEROS) else bytes(n)


def _check_slots(dst: bytearray, offset: int, stride: int, padded_len: int, count: int,
                 key: bytes, remote_index: int, counter: int) -> None:
    if count < 0 or padded_len < 0 or offset < 0:
        raise ValueError("negative count, length or offset")
    if len(key) != 32:
        raise ValueError("key must be 32 bytes")
    if not 0 <= remote_index < 1 << 32 or not 0 <= counter or counter + count > 1 << 64:
        raise ValueError("receiver index or counter out of range")
    if count > 1 and stride < OVERHEAD + padded_len:
        raise ValueError("slots overlap")
    if count and offset + (count - 1) * stride + OVERHEAD + padded_len > len(dst):
        raise ValueError("slots run past the end of the buffer")


def seal_packets(packets: Sequence[Buffer], first: int, count: int, dst: bytearray, offset: int,
                 stride: int, padded_len: int, key: bytes, remote_index: int,
                 counter: int) -> None:
    """Seal `packets[first:first+count]` into transport messages `stride` bytes apart in `dst`,
    the first at `offset`, under counters `counter`, `counter + 1`, ...; each plaintext is
    zero-padded to `padded_len` bytes (every packet must fit), each message is
    `padded_len + 32` bytes."""
    _check_slots(dst, offset, stride, padded_len, count, key, remote_index, counter)
    if first < 0 or first + count > len(packets):
        raise ValueError("packet range outside the list")
    if any(len(packets[first + k]) > padded_len for k in range(count)):
        raise ValueError("a packet is longer than its slot")
    pack = TRANSPORT_HEADER.pack_into
    for k in range(count):
        packet = packets[first + k]
        start = offset + k * stride
        body = start + HEADER_LEN
        n = len(packet)
        pack(dst, start, TYPE_TRANSPORT, remote_index, counter + k)
        dst[body:body + n] = packet
        if padded_len > n:
            _zero(dst, body + n, body + padded_len)
        seal_in_place(key, counter + k, dst, body, padded_len)


def seal_segments(packet: Buffer, gso_size: int, first: int, count: int, dst: bytearray,
                  offset: int, stride: int, padded_len: int, key: bytes, remote_index: int,
                  counter: int) -> None:
    """Like `seal_packets` for segments `first..first+count-1` of the TSO/USO super-packet
    `packet` (an IP packet, TCP or UDP, `gso_size` payload bytes per segment): each segment is
    built in its slot with valid IP and TCP/UDP headers and checksums (as `Segments.write`),
    padded and sealed there."""
    _check_slots(dst, offset, stride, padded_len, count, key, remote_index, counter)
    try:
        plan = Segments.plan(packet, gso_size)
    except OffloadError as e:
        raise ValueError(str(e)) from e
    if first < 0 or first + count > plan.count:
        raise ValueError("segment range outside the super-packet")
    if any(plan.length(first + k) > padded_len for k in range(count)):
        raise ValueError("a segment is longer than its slot")
    pack = TRANSPORT_HEADER.pack_into
    full = plan.full_count
    # Full-sized segments in one loop, a short last segment on its own.
    run = max(0, min(first + count, full) - first)
    if run:
        plan.write_run(first, run, dst, offset + HEADER_LEN, stride, padded_len)
    for k in range(run, count):
        start = offset + k * stride
        n = plan.write(first + k, dst, start + HEADER_LEN)
        if padded_len > n:
            _zero(dst, start + HEADER_LEN + n, start + HEADER_LEN + padded_len)
    for k in range(count):
        start = offset + k * stride
        pack(dst, start, TYPE_TRANSPORT, remote_index, counter + k)
        seal_in_place(key, counter + k, dst, start + HEADER_LEN, padded_len)


OpenResult = tuple[int, list[bytearray], list[int], int, int, int, int, int]


def open_run(buffer: Buffer, start: int, nbytes: int, size: int, receiver: int, key: bytes,
             window: bytearray, counter_limit: int, allowed_v4: bytes,
             allowed_v6: bytes) -> OpenResult:
    """Open the run of transport messages for `receiver` that starts at `buffer[start]`, among
    datagrams of `size` bytes (the last may be shorter) back to back in `buffer[:nbytes]`.

    The run ends at the first datagram that is shorter than 32 bytes, is not a transport message,
    or is for another receiver; its start is returned first. Per message: a counter not below
    `counter_limit` is an `expired` drop; the replay `window` is checked before decryption and
    marked only after the tag verified (else a `forged` drop, replays included); the plaintext's
    padding is cut by the inner IP length (an inner packet that is no IPv4/IPv6 or is longer than
    the plaintext is a `not_ip` drop). An empty plaintext is a keepalive: counted, not returned.

    Returns (next start, packets, unchecked, datagram bytes, plaintext bytes, expired, forged,
    not_ip). `unchecked` lists the indices in `packets` whose inner source address is not among
    `allowed_v4` (4-byte addresses back to back) or `allowed_v6` (16-byte ones): the caller must
    check those against its routing table. Datagram and plaintext bytes count every
    authenticated message (padding included, keepalives and later drops too): they are what the
    peer's timers and `rx_bytes` see.
    """
    if size <= 0 or start < 0 or nbytes > len(buffer) or len(key) != 32:
        raise ValueError("bad run bounds or key")
    if len(window) != replay.WINDOW_BYTES:
        raise ValueError("bad replay window state")
    if len(allowed_v4) % 4 or len(allowed_v6) % 16:
        raise ValueError("allowed sources must be whole addresses")
    words = memoryview(window).cast("Q")
    unpack = TRANSPORT_HEADER.unpack_from
    packets: list[bytearray] = []
    unchecked: list[int] = []
    datagram_bytes = plain_bytes = expired = forged = not_ip = 0
    while start < nbytes:
        end = min(start + size, nbytes)
        if end - start < OVERHEAD:
            break
        kind, index, counter = unpack(buffer, start)
        if kind != TYPE_TRANSPORT or index != receiver:
            break
        length = end - start - HEADER_LEN
        message_start, start = start, start + size
        if counter >= counter_limit:
            expired += 1
            continue
        if not replay.check(words, counter):
            forged += 1
            continue
        plain = bytearray(length - TAG_LEN)
        if (not open_into(key, counter, plain, buffer, message_start + HEADER_LEN, length)
                or not replay.mark(words, counter)):
            forged += 1
            continue
        datagram_bytes += end - message_start
        if not plain:
            continue
        plain_bytes += len(plain)
        version = plain[0] >> 4
        if version == 4 and len(plain) >= 20:
            inner = (plain[2] << 8) | plain[3]
            source, allowed, width = plain[12:16], allowed_v4, 4
        elif version == 6 and len(plain) >= 40:
            inner = 40 + ((plain[4] << 8) | plain[5])
            source, allowed, width = plain[8:24], allowed_v6, 16
        else:
            inner = 0
        if not 20 <= inner <= len(plain):
            not_ip += 1
            continue
        if inner != len(plain):
            del plain[inner:]
        if not any(allowed[i:i + width] == source for i in range(0, len(allowed), width)):
            unchecked.append(len(packets))
        packets.append(plain)
    return (start, packets, unchecked, datagram_bytes, plain_bytes, expired, forged, not_ip)


def coalesce(packets: Sequence[bytearray], udp: bool) -> list[tuple[bytes, bytes | bytearray]]:
    """Merge consecutive segments of each TCP flow (and UDP flow with `udp`) into super-packets:
    (vnet header, packet) pairs to write to TUN, every flow's order kept (see
    `fz_trio.datapath.coalesce`)."""
    return _coalesce(packets, udp=udp)
