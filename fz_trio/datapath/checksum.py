"""Internet checksums (RFC 1071) for the data path: ones' complement sums of byte runs.

The ones' complement sum of a buffer is `int.from_bytes(buf, "big") % 0xFFFF` (because
2**16 ≡ 1 mod 0xFFFF): one C-speed pass instead of a Python loop over 16-bit words.
"""

from __future__ import annotations


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
