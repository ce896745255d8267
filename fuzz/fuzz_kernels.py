"""Coverage-guided differential fuzzing of the native batch kernels against their Python twin.

Every input drives one entry point of `fz_trio.datapath._kernels` (seal_packets, seal_segments,
open_run or coalesce) with arguments decoded from the fuzz bytes, then the Python twin
(`fz_trio.datapath._pykernels`) with the same arguments. A crash is: a sanitizer report, any
exception other than ValueError, ValueError from one twin only, a ValueError after which a
destination buffer or replay window was written, or any difference in results or written bytes.

Build and run (what `nox -s fuzz -- --targets kernels --seconds N` does; clang, ASan + UBSan,
libFuzzer coverage of the C code through -fsanitize=fuzzer-no-link; the sanitized build goes to
a temporary directory, the source tree and its normal extension are left alone):

    apt-get install -y clang                     # Debian 12: clang 14
    pip install atheris                          # PyPI wheel (its own libFuzzer, no sanitizer)
    T=$(mktemp -d)
    # 1. The extension, built out of tree with sanitizers and libFuzzer coverage counters.
    CC=clang LDSHARED="clang -shared" \
      CFLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer -O1 -g" \
      LDFLAGS="-fsanitize=address,undefined,fuzzer-no-link" \
      python setup.py build_ext --build-lib "$T/lib" --build-temp "$T/obj"
    rsync -a --exclude '*.so' --exclude __pycache__ fz_trio/ "$T/lib/fz_trio/"
    # 2. ASan (with UBSan) and libFuzzer in one preloadable library, as atheris' own build does
    #    (the wheel ships none): ASan's weak coverage hooks must not shadow libFuzzer's.
    R=$(dirname "$(clang -print-file-name=libclang_rt.asan-x86_64.a)")
    cp "$R/libclang_rt.asan-x86_64.a" "$T/asan.a" && ar d "$T/asan.a" asan_preinit.cpp.o
    clang -shared -o "$T/asan_with_fuzzer.so" -Wl,--whole-archive "$T/asan.a" \
      "$R/libclang_rt.fuzzer_no_main-x86_64.a" "$R/libclang_rt.ubsan_standalone_cxx-x86_64.a" \
      -Wl,--no-whole-archive -lpthread -ldl -lrt -lm -lstdc++
    # 3. Fuzz (a corpus directory is optional; crashes are written to ./crash-*).
    PYTHONSAFEPATH=1 PYTHONPATH="$T/lib" LD_PRELOAD="$T/asan_with_fuzzer.so" \
      ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 \
      UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      python fuzz/fuzz_kernels.py -max_total_time=600 [-max_len=8192] [CORPUS_DIR]
    # Reproduce a crash: the same environment, `python fuzz/fuzz_kernels.py crash-<sha1>`.

Without the preload and the clang build it still runs (e.g. against the normal extension), but
libFuzzer then sees only the Python twin's coverage (the twin is instrumented by atheris).
`FZ_FUZZ_SELFTEST=1` pits the twin against itself, to check the harness alone.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["fz_trio.datapath"]):
    from fz_trio.datapath import _pykernels as PY
    from fz_trio.datapath import aead, replay

if os.environ.get("FZ_FUZZ_SELFTEST") == "1":
    NATIVE: Any = PY
else:
    try:
        from fz_trio.datapath import _kernels as NATIVE
    except ImportError as e:  # pragma: no cover - the harness is useless without it
        sys.exit(f"fuzz_kernels: the native extension cannot be imported: {e}")
    NATIVE.init(*aead.pointers())

WINDOW_BYTES = replay.WINDOW_BYTES
KEY = bytes(range(32))
RECEIVER = 0x01020304


class Mismatch(AssertionError):
    pass


def _snap(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [_snap(v) for v in value]
    return value


def _shape(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return (type(value).__name__, bytes(value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_shape(v) for v in value])
    return value


def both(name: str, args: list[Any], mutable: tuple[int, ...] = ()) -> tuple[Any, list[Any]]:
    """Run `name` on both twins (mutable bytearrays copied per twin); raise Mismatch on any
    difference. Returns (result or None after ValueError, the Python twin's mutated args)."""
    before = [_snap(a) for a in args]
    outs = []
    for twin in (NATIVE, PY):
        call = [bytearray(a) if i in mutable else a for i, a in enumerate(args)]
        try:
            result, error = getattr(twin, name)(*call), None
        except ValueError as e:
            result, error = None, e
        for i, a in enumerate(args):
            if i not in mutable and _snap(a) != before[i]:
                raise Mismatch(f"{twin.__name__}.{name} wrote its read-only argument {i}")
        if error is not None:
            for i in mutable:
                if bytes(call[i]) != before[i]:
                    raise Mismatch(f"{twin.__name__}.{name} raised {error!r} but wrote arg {i}")
        outs.append((result, error, [call[i] for i in mutable]))
    (nres, nerr, nmut), (pres, perr, pmut) = outs
    if (nerr is None) != (perr is None):
        raise Mismatch(f"{name}: native error {nerr!r}, python error {perr!r}")
    if nmut != pmut:
        raise Mismatch(f"{name}: written buffers differ")
    if _shape(nres) != _shape(pres):
        raise Mismatch(f"{name}: results differ:\n native {nres!r}\n python {pres!r}")
    return pres, pmut


# --- decoding helpers ---------------------------------------------------------------------------

def _int(fdp: atheris.FuzzedDataProvider, choices: tuple[int, ...], lo: int, hi: int) -> int:
    """One of `choices` (edge values), or any integer in lo..hi."""
    pick = fdp.ConsumeIntInRange(0, len(choices))
    return choices[pick] if pick < len(choices) else fdp.ConsumeIntInRange(lo, hi)


def _key(fdp: atheris.FuzzedDataProvider) -> bytes:
    if fdp.ConsumeIntInRange(0, 31) == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    return KEY


def _slots(fdp: atheris.FuzzedDataProvider, total: int, longest: int) -> tuple[int, ...]:
    """(first, count, offset, stride, padded_len, dst_len, remote_index, counter): usually
    consistent, and any of them can be pushed out of range by the fuzzer."""
    first = _int(fdp, (0, -1, total, total + 1), 0, total)
    count = _int(fdp, (max(0, total - max(first, 0)), 0, 1, -1, total + 1), 0, total)
    padded = longest + _int(fdp, (0, 1, 16, -1), -64, 1024)
    stride = 32 + padded + _int(fdp, (0, 1, -1, -(32 + padded)), -64, 256)
    offset = _int(fdp, (0, 1, -1, 2**62), 0, 128)
    need = offset + (count - 1) * stride + 32 + padded if count > 0 else max(offset, 0)
    dst_len = max(0, need + _int(fdp, (0, 1, -1), -64, 256))
    if dst_len > 2**22:  # the call must fail anyway; do not allocate exabytes
        dst_len = fdp.ConsumeIntInRange(0, 4096)
    index = _int(fdp, (RECEIVER, 0, 2**32 - 1, 2**32, -1), 0, 2**32 - 1)
    counter = _int(fdp, (0, 2**64 - max(count, 1), 2**64 - max(count, 0) + 1, -1, 2**64),
                   0, 2**64 - 1)
    return first, count, offset, stride, padded, dst_len, index, counter


def _checksummed_v4(header: bytearray) -> None:
    header[10:12] = b"\0\0"
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = struct.pack("!H", ~total & 0xFFFF)


def _ip_packet(fdp: atheris.FuzzedDataProvider, payload_len: int | None = None,
               flow: int | None = None) -> bytearray:
    """An IPv4/IPv6 TCP/UDP packet whose header fields come from the fuzzer (or raw bytes)."""
    shape = fdp.ConsumeIntInRange(0, 9)
    if shape == 0:
        return bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)))
    version = 4 if shape <= 5 else 6
    proto = (6, 17, fdp.ConsumeIntInRange(0, 255))[fdp.ConsumeIntInRange(0, 2) % 3 if
                                                   fdp.ConsumeBool() else 0]
    flow = fdp.ConsumeIntInRange(0, 3) if flow is None else flow
    ip_opts = b""
    if version == 4 and fdp.ConsumeIntInRange(0, 7) == 0:
        ip_opts = b"\x01" * (4 * fdp.ConsumeIntInRange(0, 10))
    if payload_len is None:
        payload_len = _int(fdp, (0, 1, 100, 1400), 0, 9000)
    if proto == 6:
        opts = fdp.ConsumeBytes(4 * fdp.ConsumeIntInRange(0, 10))
        opts += b"\x01" * (-len(opts) % 4)
        l4 = bytearray(struct.pack("!HHIIBBHHH", 1000 + flow, 443, fdp.ConsumeIntInRange(
            0, 2**32 - 1), 7, ((20 + len(opts)) // 4) << 4, fdp.ConsumeIntInRange(0, 255),
            502, 0, 0)) + opts
    else:
        l4 = bytearray(struct.pack("!HHHH", 1000 + flow, 53, 8 + payload_len, 0))
    payload = fdp.ConsumeBytes(payload_len)
    payload += bytes(payload_len - len(payload))
    if version == 4:
        ihl = 20 + len(ip_opts)
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, fdp.ConsumeIntInRange(0, 3),
                                   ihl + len(l4) + payload_len, fdp.ConsumeIntInRange(0, 0xFFFF),
                                   (0, 0x4000, 0x2000, fdp.ConsumeIntInRange(0, 0xFFFF))[
                                       fdp.ConsumeIntInRange(0, 3)], 64, proto, 0,
                                   bytes([10, 0, 0, 1 + flow]), bytes([10, 0, 0, 9])) + ip_opts)
        _checksummed_v4(ip)
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000, len(l4) + payload_len, proto, 64,
                                   b"\xfd" + bytes(14) + bytes([1 + flow]), b"\xfd" + bytes(15)))
    packet = ip + l4 + payload
    for _ in range(fdp.ConsumeIntInRange(0, 2) if fdp.ConsumeIntInRange(0, 3) == 0 else 0):
        if packet:  # a stray byte anywhere: bad IHL, version, data offset, ...
            packet[fdp.ConsumeIntInRange(0, len(packet) - 1)] = fdp.ConsumeIntInRange(0, 255)
    return packet


# --- the four entry points ----------------------------------------------------------------------

def fuzz_seal_packets(fdp: atheris.FuzzedDataProvider) -> None:
    n = fdp.ConsumeIntInRange(0, 64)
    packets: list[Any] = []
    for _ in range(n):
        data = fdp.ConsumeBytes(_int(fdp, (0, 1, 20, 40, 1420), 0, 1600))
        packets.append((bytes, bytearray, memoryview)[fdp.ConsumeIntInRange(0, 2)](data))
    longest = max((len(p) for p in packets), default=0)
    first, count, offset, stride, padded, dst_len, index, counter = _slots(fdp, n, longest)
    dst = bytearray(fdp.ConsumeBytes(dst_len).ljust(dst_len, b"\xA5"))
    both("seal_packets", [packets, first, count, dst, offset, stride, padded, _key(fdp), index,
                          counter], mutable=(3,))


def fuzz_seal_segments(fdp: atheris.FuzzedDataProvider) -> None:
    packet = _ip_packet(fdp)
    gso = _int(fdp, (1, 536, 1448, 0, -1, 65535, 65536, 2**32), 1, 2000)
    version = packet[0] >> 4 if packet else 0
    hl = 0
    if len(packet) >= 20 and version in (4, 6):
        iphl = (packet[0] & 15) * 4 if version == 4 else 40
        proto = packet[9] if version == 4 else (packet[6] if len(packet) > 6 else 0)
        l4hl = (packet[iphl + 12] >> 4) * 4 if proto == 6 and len(packet) > iphl + 12 else 8
        hl = iphl + l4hl
    payload = max(0, len(packet) - hl)
    segments = max(1, -(-payload // gso)) if 0 < gso < 2**20 else 1
    longest = hl + min(payload, gso) if 0 < gso else hl
    first, count, offset, stride, padded, dst_len, index, counter = _slots(
        fdp, min(segments, 256), longest)
    dst = bytearray(fdp.ConsumeBytes(min(dst_len, 64)).ljust(dst_len, b"\x5A"))
    kind = (bytes, bytearray, memoryview)[fdp.ConsumeIntInRange(0, 2)]
    both("seal_segments", [kind(packet), gso, first, count, dst, offset, stride, padded,
                           _key(fdp), index, counter], mutable=(4,))


def fuzz_open_run(fdp: atheris.FuzzedDataProvider) -> None:
    size = _int(fdp, (32, 33, 48, 60, 100, 1452), 1, 1600)
    n = fdp.ConsumeIntInRange(1, 24)
    key = KEY if fdp.ConsumeIntInRange(0, 15) else bytes(32)
    sealer = (PY, NATIVE)[fdp.ConsumeIntInRange(0, 1)]
    counter = _int(fdp, (0, 2**64 - 64, 2**63), 0, 2**64 - 1)
    body = bytearray()
    for i in range(n):
        length = size if i < n - 1 or fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, size)
        kind = fdp.ConsumeIntInRange(0, 15)
        counter = min(2**64 - 1, max(0, counter + _int(fdp, (1, 1, 1, 0, -1, 8192, 8193, -8192),
                                                         -10**6, 10**6)))
        if kind == 0 or length < 32:
            datagram = bytearray(fdp.ConsumeBytes(length).ljust(length, b"\0"))
            if length >= 16 and fdp.ConsumeBool():
                datagram[:16] = struct.pack("<IIQ", 4, RECEIVER, counter)
        else:
            plain = bytearray(length - 32)
            shape = fdp.ConsumeIntInRange(0, 3)
            if shape:  # an inner IPv4/IPv6 packet, maybe with lying lengths, then padding
                inner = _ip_packet(fdp, payload_len=fdp.ConsumeIntInRange(0, max(0, length - 72)))
                inner = inner[:len(plain)]
                plain[:len(inner)] = inner
            index = RECEIVER if kind != 1 else fdp.ConsumeIntInRange(0, 2**32 - 1)
            datagram = bytearray(length)
            sealer.seal_packets([plain], 0, 1, datagram, 0, length, len(plain), key, index,
                                counter)
            if kind == 2:  # a bit flip anywhere
                bit = fdp.ConsumeIntInRange(0, 8 * length - 1)
                datagram[bit // 8] ^= 1 << (bit % 8)
            elif kind == 3:
                datagram[fdp.ConsumeIntInRange(0, 3)] = fdp.ConsumeIntInRange(0, 255)
            elif kind == 4 and body:  # a duplicate of an earlier datagram
                j = fdp.ConsumeIntInRange(0, len(body) // size - 1) if len(body) >= size else 0
                datagram = body[j * size:j * size + length]
        body += datagram
    nbytes = _int(fdp, (len(body), len(body) - 1, len(body) + 1, 0, -1), 0, len(body))
    body += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    buffer = (bytes, bytearray, memoryview)[fdp.ConsumeIntInRange(0, 2)](bytes(body))
    wkind = fdp.ConsumeIntInRange(0, 3)
    if wkind == 0:
        window = bytearray(fdp.ConsumeBytes(WINDOW_BYTES).ljust(WINDOW_BYTES, b"\0"))
    elif wkind == 1:
        window = bytearray(WINDOW_BYTES)
        window[:8] = struct.pack("=Q", fdp.ConsumeIntInRange(0, 2**64 - 1))
    elif wkind == 2 and fdp.ConsumeIntInRange(0, 7) == 0:
        window = bytearray(fdp.ConsumeIntInRange(0, WINDOW_BYTES + 16))
    else:
        window = replay.new_window()
    limit = _int(fdp, (2**64, 2**64 - 1, 0, 1, counter, counter + 1), 0, 2**64)
    a4 = fdp.ConsumeBytes(4 * fdp.ConsumeIntInRange(0, 3))
    a6 = fdp.ConsumeBytes(16 * fdp.ConsumeIntInRange(0, 2))
    if fdp.ConsumeIntInRange(0, 3) == 0:
        a4 = b"\x0a\x00\x00\x01" + a4
        a6 = b"\xfd" + bytes(14) + b"\x01" + a6
    receiver = RECEIVER if fdp.ConsumeIntInRange(0, 15) else _int(fdp, (0, 2**32, -1), 0,
                                                                   2**32 - 1)
    start = _int(fdp, (0, size, -1, len(body) + 1), 0, len(body))
    calls = 0
    while calls < 32:
        calls += 1
        result, (window,) = both("open_run", [buffer, start, nbytes, size, receiver, key, window,
                                              limit, a4, a6], mutable=(6,))
        if result is None or start >= nbytes:
            return
        start = result[0] if result[0] > start else start + size


def fuzz_coalesce(fdp: atheris.FuzzedDataProvider) -> None:
    n = fdp.ConsumeIntInRange(0, 80)
    udp = fdp.ConsumeBool()
    packets: list[bytearray] = []
    # Flows of segments whose fields mostly continue (seq, id, size), perturbed by the fuzzer.
    seqs = [fdp.ConsumeIntInRange(0, 2**32 - 1) for _ in range(4)]
    ids = [fdp.ConsumeIntInRange(0, 0xFFFF) for _ in range(4)]
    mss = _int(fdp, (1448, 1, 100), 1, 1500)
    for _ in range(n):
        if fdp.ConsumeIntInRange(0, 9) == 0:
            packets.append(bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 120))))
            continue
        f = fdp.ConsumeIntInRange(0, 3)
        v6 = f >= 2
        proto = 6 if f % 2 == 0 else 17
        size = mss if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, mss + 4)
        payload = fdp.ConsumeBytes(size).ljust(size, b"\x77")
        flags = 0x10 if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, 255)
        opts = b"" if fdp.ConsumeIntInRange(0, 7) else b"\x01\x01\x08\x0a" + fdp.ConsumeBytes(
            8).ljust(8, b"\0")
        if proto == 6:
            l4 = struct.pack("!HHIIBBHHH", 1000 + f, 443, seqs[f], 7, ((20 + len(opts)) // 4) << 4,
                             flags, 502, 0, 0) + opts
            seqs[f] = (seqs[f] + size) & 0xFFFFFFFF
        else:
            l4 = struct.pack("!HHHH", 1000 + f, 53, 8 + size, 0)
        if fdp.ConsumeIntInRange(0, 15) == 0:
            seqs[f] = fdp.ConsumeIntInRange(0, 2**32 - 1)
        if v6:
            ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000 | fdp.ConsumeIntInRange(0, 1),
                                       len(l4) + size, proto, 64, b"\xfd" + bytes(15),
                                       b"\xfd" + bytes(14) + b"\x02"))
        else:
            ident = ids[f] if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, 0xFFFF)
            ids[f] = (ids[f] + (0 if fdp.ConsumeIntInRange(0, 7) == 0 else 1)) & 0xFFFF
            frag = (0x4000, 0, 0x2000, 0x4001)[fdp.ConsumeIntInRange(0, 3) if
                                               fdp.ConsumeIntInRange(0, 7) == 0 else 0]
            ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0 if fdp.ConsumeIntInRange(0, 15)
                                       else 1, 20 + len(l4) + size, ident, frag, 64, proto, 0,
                                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
            _checksummed_v4(ip)
        packets.append(ip + l4 + payload)
    before = [bytes(p) for p in packets]
    outs = []
    for twin in (NATIVE, PY):
        mine = [bytearray(p) for p in packets]
        result = twin.coalesce(mine, udp)
        if [bytes(p) for p in mine] != before:
            raise Mismatch(f"{twin.__name__}.coalesce wrote its input")
        if not isinstance(result, list) or not all(
                isinstance(r, tuple) and len(r) == 2 and isinstance(r[0], bytes)
                and isinstance(r[1], bytes | bytearray) for r in result):
            raise Mismatch(f"{twin.__name__}.coalesce returned {type(result)} of the wrong shape")
        outs.append([(h, bytes(p)) for h, p in result])
    if outs[0] != outs[1]:
        raise Mismatch(f"coalesce differs: native {len(outs[0])} outputs, python {len(outs[1])}")


ENTRY_POINTS = (fuzz_seal_packets, fuzz_seal_segments, fuzz_open_run, fuzz_coalesce)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    fdp = atheris.FuzzedDataProvider(data)
    ENTRY_POINTS[fdp.ConsumeIntInRange(0, len(ENTRY_POINTS) - 1)](fdp)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
