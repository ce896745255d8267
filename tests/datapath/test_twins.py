"""Differential tests of the batch kernels: the native extension against its Python twin.

`fz_trio.datapath._kernels` (C) and `fz_trio.datapath._pykernels` (the specification) must agree
byte for byte: every call runs on both with identical inputs — the destination buffer or replay
window starting as the same bytes — and the whole buffers afterwards, the results (types
included) and whether a `ValueError` was raised must be identical. After a `ValueError` nothing
may have been written, in either twin. Any other exception fails the test. Read-only inputs must
come back unchanged.

Without the native module these tests skip, saying why. `FZ_TRIO_TWINS_SELFTEST=1` runs them with
the Python twin standing in for the native one (a check of the tests themselves, not of the C).
Example counts scale with the hypothesis profile (tests/conftest.py): the default "ci" profile
keeps the whole file well under a minute on two cores.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fz_trio.datapath import _pykernels as PY
from fz_trio.datapath import aead, replay
from tests.datapath import strategies as S


def _native() -> tuple[ModuleType | None, str]:
    if os.environ.get("FZ_TRIO_TWINS_SELFTEST") == "1":
        return PY, "self-test: the Python twin stands in for the native one"
    try:
        from fz_trio.datapath import _kernels  # type: ignore[attr-defined]
    except ImportError as e:
        return None, (f"the native kernels fz_trio.datapath._kernels are not built ({e}); "
                      "build them with `python setup.py build_ext --inplace`")
    _kernels.init(*aead.pointers())
    return _kernels, "native extension"


NATIVE, NATIVE_REASON = _native()
pytestmark = pytest.mark.skipif(NATIVE is None, reason=NATIVE_REASON)

_BASE = settings.default.max_examples  # 100 under "ci", 1000 under "long"


def scaled(percent: int) -> settings:
    return settings(max_examples=max(5, _BASE * percent // 100), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example,
                                           HealthCheck.filter_too_much])


WINDOW_BYTES = replay.WINDOW_BYTES
RECEIVER = 0x11223344


# --- running both twins ------------------------------------------------------------------------


def _snapshot(value: Any) -> Any:
    """A deep copy of buffer contents, to check that read-only inputs are not written."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [_snapshot(v) for v in value]
    return value


def _shape(value: Any) -> Any:
    """A value with the types of its buffers kept (bytes == bytearray in Python)."""
    if isinstance(value, bytes | bytearray):
        return (type(value).__name__, bytes(value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_shape(v) for v in value])
    return value


def _first_difference(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"lengths {len(a)} != {len(b)}"
    i = next(i for i in range(len(a)) if a[i] != b[i])
    return f"first difference at byte {i}: python {a[i:i + 16].hex()} native {b[i:i + 16].hex()}"


@dataclass
class Outcome:
    result: Any
    error: ValueError | None
    mutated: list[bytearray]


def both(name: str, *args: Any, mutable: Sequence[int] = (),
         shape: Callable[[Any], Any] = _shape) -> Outcome:
    """Call `name` on both twins with the same arguments (each `mutable` bytearray copied per
    twin) and assert the same outcome; returns the Python twin's."""
    before = [_snapshot(a) for a in args]
    outcomes = []
    for twin in (PY, NATIVE):
        call = [bytearray(a) if i in mutable else a for i, a in enumerate(args)]
        try:
            result, error = getattr(twin, name)(*call), None
        except ValueError as e:
            result, error = None, e
        for i, a in enumerate(args):
            if i not in mutable:
                assert _snapshot(a) == before[i], f"{twin.__name__}.{name} wrote argument {i}"
        outcomes.append(Outcome(result, error, [call[i] for i in mutable]))
    py, native = outcomes
    assert (py.error is None) == (native.error is None), (
        f"{name}: python {'raised ' + repr(py.error) if py.error else 'returned'}, "
        f"native {'raised ' + repr(native.error) if native.error else 'returned'}")
    for i, p, n in zip(mutable, py.mutated, native.mutated, strict=True):
        if py.error is not None:
            assert bytes(p) == before[i], f"python {name} raised ValueError but wrote arg {i}"
            assert bytes(n) == before[i], f"native {name} raised ValueError but wrote arg {i}"
        elif p != n:
            raise AssertionError(f"{name}: argument {i} differs: "
                                 f"{_first_difference(bytes(p), bytes(n))}")
    if py.error is None:
        assert shape(py.result) == shape(native.result), (
            f"{name}: results differ:\n python {py.result!r}\n native {native.result!r}")
    return py


def test_twins_are_loaded() -> None:
    assert NATIVE is not None
    for name in ("seal_packets", "seal_segments", "open_run", "coalesce"):
        assert callable(getattr(NATIVE, name)), name


# --- seal_segments -------------------------------------------------------------------------------


@scaled(100)
@given(sp=S.super_packets(), data=st.data(), kind=st.sampled_from(["bytes", "bytearray",
                                                                   "memoryview"]))
def test_seal_segments(sp: S.SuperPacket, data: st.DataObject, kind: str) -> None:
    slots = data.draw(S.slots(sp.count, lambda f, c: sp.length(f)))
    packet = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](sp.packet)
    dst = bytearray(S.noise(slots.dst_seed, slots.dst_len))
    out = both("seal_segments", packet, sp.gso_size, slots.first, slots.count, dst, slots.offset,
               slots.stride, slots.padded_len, slots.key, slots.remote_index, slots.counter,
               mutable=[4])
    if slots.valid:
        assert out.error is None, out.error
        assert out.result is None


@scaled(100)
@given(case=S.malformed_super_packets(), first=st.integers(-1, 3), count=st.integers(0, 4),
       seed=S.seeds, key=S.keys)
def test_seal_segments_malformed(case: tuple[bytes, int], first: int, count: int, seed: int,
                                 key: bytes) -> None:
    packet, gso = case
    padded = 1600
    stride = padded + 32
    dst = bytearray(S.noise(seed, 7 + 4 * stride))
    both("seal_segments", packet, gso, first, count, dst, 7, stride, padded, key, RECEIVER, 1,
         mutable=[4])


@scaled(20)
@given(sp=S.super_packets(max_segments=64, proto=S.TCP, version=4), seed=S.seeds,
       extra=st.sampled_from([0, 1, 16]))
def test_seal_segments_whole_bulk_tcp(sp: S.SuperPacket, seed: int, extra: int) -> None:
    """The hot path: every segment of an IPv4 TCP super-packet, as the Device asks for them."""
    padded = sp.length(0) + extra
    stride = padded + 32
    dst = bytearray(S.noise(seed, sp.count * stride))
    out = both("seal_segments", sp.packet, sp.gso_size, 0, sp.count, dst, 0, stride, padded,
               bytes(32), 1, 0, mutable=[4])
    assert out.error is None


# --- seal_packets --------------------------------------------------------------------------------


@scaled(100)
@given(packets=S.plain_packets(), data=st.data())
def test_seal_packets(packets: list[bytes | bytearray | memoryview], data: st.DataObject) -> None:
    slots = data.draw(S.slots(len(packets),
                              lambda f, c: max(len(packets[f + k]) for k in range(c))))
    dst = bytearray(S.noise(slots.dst_seed, slots.dst_len))
    out = both("seal_packets", packets, slots.first, slots.count, dst, slots.offset, slots.stride,
               slots.padded_len, slots.key, slots.remote_index, slots.counter, mutable=[3])
    if slots.valid:
        assert out.error is None, out.error


@scaled(30)
@given(packets=S.plain_packets(), seed=S.seeds, offset=st.integers(-3, 3),
       stride_delta=st.integers(-3, 3), size_delta=st.integers(-3, 3))
def test_seal_packets_near_the_bounds(packets: list[bytes], seed: int, offset: int,
                                      stride_delta: int, size_delta: int) -> None:
    """Slots exactly filling the buffer, give or take a few bytes each way."""
    count = len(packets)
    padded = max((len(p) for p in packets), default=0)
    stride = padded + 32 + stride_delta
    size = max(0, (count - 1) * stride + padded + 32 + max(offset, 0) + size_delta) if count else 0
    dst = bytearray(S.noise(seed, size))
    both("seal_packets", packets, 0, count, dst, offset, stride, padded, bytes(range(32)), 9,
         2**64 - max(count, 1), mutable=[3])


# --- open_run ------------------------------------------------------------------------------------


@dataclass
class Run:
    buffer: bytes | bytearray | memoryview
    nbytes: int
    size: int
    key: bytes
    window: bytearray
    counter_limit: int
    allowed_v4: bytes
    allowed_v6: bytes
    start: int
    notes: list[str]


def _seal(twin: ModuleType, plaintext: bytes, key: bytes, index: int, counter: int) -> bytes:
    out = bytearray(len(plaintext) + 32)
    twin.seal_packets([plaintext], 0, 1, out, 0, len(out), len(plaintext), key, index, counter)
    return bytes(out)


def _sealers() -> list[ModuleType]:
    return [PY, NATIVE] if NATIVE is not None else [PY]


@st.composite
def window_states(draw: st.DrawFn) -> bytearray:
    kind = draw(st.sampled_from(["new", "new", "seen", "random", "random_small"]))
    if kind == "new":
        return replay.new_window()
    if kind == "seen":  # a window that saw a few counters (built by the Python twin's rules)
        window = replay.new_window()
        words = memoryview(window).cast("Q")
        for c in draw(S.counter_sequences(max_size=30)):
            if replay.check(words, c):
                replay.mark(words, c)
        return window
    state = bytearray(S.noise(draw(S.seeds), WINDOW_BYTES))
    greatest = draw(st.one_of(st.integers(0, 50_000), S.U64))
    if kind == "random_small":
        greatest = draw(st.integers(0, 300))
    state[0:8] = greatest.to_bytes(8, "little" if struct.pack("=H", 1)[0] else "big")
    return state


@st.composite
def runs(draw: st.DrawFn, max_datagrams: int = 24) -> Run:
    """A GSO receive buffer: datagrams of `size` bytes back to back (the last may be shorter),
    most of them transport messages for RECEIVER, some forged, replayed, duplicated, reordered,
    for another receiver, not transport at all, keepalives, truncated; then the buffer's tail."""
    key = draw(S.keys)
    size = draw(st.sampled_from([32, 33, 48, 52, 60, 61, 92, 100, 160, 532, 1132]))
    n = draw(st.integers(1, max_datagrams))
    base = draw(st.one_of(st.integers(0, 1000), st.integers(2**64 - 3000, 2**64 - 1000),
                          S.U64.map(lambda c: min(c, 2**64 - 200))))
    order = list(range(n))
    if draw(st.booleans()):
        random.Random(draw(S.seeds)).shuffle(order)
    counters = [min(base + k + draw(st.sampled_from([0] * 6 + [100, 9000, 10**7])),
                    2**64 - 2) for k in order]
    sealer = draw(st.sampled_from(_sealers()))
    datagrams: list[bytes] = []
    notes: list[str] = []
    for i in range(n):
        last = i == n - 1
        length = size
        if last and draw(st.booleans()):
            length = draw(st.integers(0, size))
        kind = draw(st.sampled_from(["good"] * 8 + [
            "flip", "other_receiver", "not_transport", "reserved", "duplicate", "replay",
            "other_key", "junk"]))
        if length < 32:
            kind = "short"
        notes.append(kind)
        plain = draw(S.inner_packets())[:length - 32] if length >= 32 else b""
        plain = plain + bytes(length - 32 - len(plain)) if length >= 32 else b""
        counter = counters[i]
        if kind == "replay" and i:
            counter = counters[draw(st.integers(0, i - 1))]
        if kind == "junk" or kind == "short":
            datagram = S.noise(draw(S.seeds), length)
            if length >= 16 and draw(st.booleans()):  # a header for us, garbage after it
                datagram = struct.pack("<IIQ", 4, RECEIVER, counter) + datagram[16:]
        else:
            index = RECEIVER if kind != "other_receiver" else draw(
                st.sampled_from([RECEIVER ^ 1, 0, 2**32 - 1]))
            datagram = _seal(sealer, plain, key if kind != "other_key" else bytes(32), index,
                             counter)
        if kind == "duplicate" and datagrams and len(datagrams[-1]) == length:
            datagram = datagrams[draw(st.integers(0, len(datagrams) - 1))]
        datagram = bytearray(datagram)
        if kind == "flip":
            bit = draw(st.integers(0, 8 * length - 1))
            datagram[bit // 8] ^= 1 << (bit % 8)
        elif kind == "not_transport":
            datagram[0] = draw(st.sampled_from([0, 1, 2, 3, 5, 0x84, 0xFF]))
        elif kind == "reserved":
            datagram[draw(st.integers(1, 3))] = draw(st.integers(1, 255))
        datagrams.append(bytes(datagram))
    body = b"".join(datagrams)
    nbytes = len(body)
    cut = draw(st.sampled_from([0] * 6 + [1, 15, 16, 17, 31, 32, 33]))
    if cut and draw(st.booleans()):
        nbytes = max(0, nbytes - cut)
        notes.append(f"cut{cut}")
    tail = S.noise(draw(S.seeds), draw(st.sampled_from([0, 0, 1, 40])))
    kind = draw(st.sampled_from(["bytes", "bytearray", "memoryview"]))
    buffer = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](body + tail)
    opened = [c for c, k in zip(counters, notes, strict=False) if k == "good"] or [0]
    limit = draw(st.one_of(st.just(2**64), st.just(2**64), st.just(2**64 - 1), st.just(0),
                           st.just(1), st.sampled_from(opened),
                           st.sampled_from(opened).map(lambda c: c + 1), S.U64))
    allowed_v4, allowed_v6 = draw(S.allowed_lists())
    start = draw(st.sampled_from([0] * 5 + [size, 2 * size, 1]))
    return Run(buffer, nbytes, size, key, draw(window_states()), limit, allowed_v4, allowed_v6,
               start, notes)


def open_like_the_device(run: Run, receiver: int = RECEIVER, max_calls: int = 64) -> bytearray:
    """Call open_run from `run.start` as a receive loop does: after a run ends at a datagram it
    does not take, skip that datagram and go on; both twins see the same window every call.
    Returns the final window."""
    window = run.window
    start = run.start
    for _ in range(max_calls):
        out = both("open_run", run.buffer, start, run.nbytes, run.size, receiver, run.key, window,
                   run.counter_limit, run.allowed_v4, run.allowed_v6, mutable=[6])
        if out.error is not None:
            break
        window = out.mutated[0]
        result = out.result
        assert isinstance(result, tuple) and len(result) == 8
        if start >= run.nbytes:
            break
        start = result[0] if result[0] > start else start + run.size
    return window


@scaled(150)
@given(run=runs())
def test_open_run(run: Run) -> None:
    open_like_the_device(run)


@scaled(30)
@given(run=runs(max_datagrams=6), receiver=st.sampled_from([RECEIVER, RECEIVER ^ 1]),
       broken=st.sampled_from(["size0", "size-1", "start-1", "nbytes+1", "nbytes-1",
                               "nbytes_huge", "start_huge", "key31", "key33", "window-8",
                               "window+8", "window0", "v4_3", "v6_15", "v6_4"]))
def test_open_run_bad_arguments(run: Run, receiver: int, broken: str) -> None:
    args: list[Any] = [run.buffer, run.start, run.nbytes, run.size, receiver, run.key,
                       run.window, run.counter_limit, run.allowed_v4, run.allowed_v6]
    n = len(run.buffer)
    value = {"size0": (3, 0), "size-1": (3, -1), "start-1": (1, -1), "nbytes+1": (2, n + 1),
             "nbytes-1": (2, -1), "nbytes_huge": (2, n + 10**6), "start_huge": (1, n + 10**6),
             "key31": (5, run.key[:31]), "key33": (5, run.key + b"\x00"),
             "window-8": (6, run.window[:-8]), "window+8": (6, run.window + bytes(8)),
             "window0": (6, bytearray()), "v4_3": (8, run.allowed_v4 + b"\x01\x02\x03"),
             "v6_15": (9, run.allowed_v6 + bytes(15)), "v6_4": (9, run.allowed_v6 + bytes(4))}
    where, replacement = value[broken]
    args[where] = replacement
    both("open_run", *args, mutable=[6])


@scaled(60)
@given(counters=S.counter_sequences(max_size=300), data=st.data(),
       window=window_states(), forge=st.integers(0, 10))
def test_replay_window_sequences(counters: list[int], data: st.DataObject, window: bytearray,
                                 forge: int) -> None:
    """Long sequences of counters (reordered, duplicated, jumping past 8192 and far beyond) as
    keepalives, opened in calls of random lengths; the windows must agree after every call."""
    key = bytes(range(1, 33))
    messages = bytearray()
    for i, c in enumerate(counters):
        message = bytearray(_seal(PY, b"", key, RECEIVER, c))
        if forge and i % forge == forge - 1:
            message[-1] ^= 0x80  # forged: must not move the window
        messages += message
    limit = data.draw(st.sampled_from([2**64, 2**64, max(counters), max(counters) + 1,
                                       counters[len(counters) // 2]]))
    start = 0
    while start < len(messages):
        end = min(len(messages), start + 32 * data.draw(st.integers(1, 40)))
        out = both("open_run", messages, start, end, 32, RECEIVER, key, window, limit, b"", b"",
                   mutable=[6])
        assert out.error is None
        assert out.result[0] == end
        window = out.mutated[0]
        start = end


@scaled(20)
@given(run=runs(max_datagrams=12))
def test_open_run_sealed_by_native_opened_twice(run: Run) -> None:
    """Opening the same run twice with the window the first pass left: all replays now."""
    window = open_like_the_device(run)
    run.window = window
    open_like_the_device(run)


def test_open_run_counter_two_to_the_64_minus_one() -> None:
    """The greatest counter, authenticated under counter_limit 2**64: the window's word 0 would
    have to hold 2**64. Both twins must do the same thing (and a ValueError writes nothing)."""
    key = bytes(32)
    for limit in (2**64, 2**64 - 1):
        for window in (replay.new_window(), bytearray(S.noise(5, WINDOW_BYTES))):
            message = _seal(PY, b"", key, RECEIVER, 2**64 - 1)
            both("open_run", message, 0, len(message), 32, RECEIVER, key, window, limit, b"", b"",
                 mutable=[6])


# --- integers beyond 64 bits, and other edges --------------------------------------------------


_HUGE = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**65, -(2**63), -(2**63) - 1, -(2**64)]


@pytest.mark.parametrize("huge", _HUGE)
@pytest.mark.parametrize("where", ["first", "count", "offset", "stride", "padded_len",
                                   "remote_index", "counter"])
def test_seal_packets_huge_integers(where: str, huge: int) -> None:
    """Contract violations with integers a C long cannot hold are ValueErrors too (the spec
    raises ValueError for every out-of-range argument; an OverflowError is a mismatch)."""
    args = {"first": 0, "count": 2, "offset": 0, "stride": 100, "padded_len": 60,
            "remote_index": 1, "counter": 5}
    args[where] = huge
    dst = bytearray(S.noise(1, 400))
    both("seal_packets", [b"a" * 10, b"b" * 60], args["first"], args["count"], dst,
         args["offset"], args["stride"], args["padded_len"], bytes(32), args["remote_index"],
         args["counter"], mutable=[3])


@pytest.mark.parametrize("huge", _HUGE)
@pytest.mark.parametrize("where", ["gso_size", "first", "count", "offset", "counter"])
def test_seal_segments_huge_integers(where: str, huge: int) -> None:
    flow = S.Flow(4, S.TCP, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1, 2)
    packet = bytes(S.build(flow, bytes(3000)))
    args = {"gso_size": 1000, "first": 0, "count": 3, "offset": 0, "counter": 5}
    args[where] = huge
    dst = bytearray(S.noise(2, 3 * 1100))
    both("seal_segments", packet, args["gso_size"], args["first"], args["count"], dst,
         args["offset"], 1100, 1040, bytes(32), 1, args["counter"], mutable=[4])


@pytest.mark.parametrize("huge", _HUGE)
@pytest.mark.parametrize("where", ["start", "nbytes", "size", "receiver", "counter_limit"])
def test_open_run_huge_integers(where: str, huge: int) -> None:
    key = bytes(32)
    message = _seal(PY, b"", key, RECEIVER, 3)
    args = {"start": 0, "nbytes": 32, "size": 32, "receiver": RECEIVER, "counter_limit": 2**64}
    args[where] = huge
    both("open_run", message, args["start"], args["nbytes"], args["size"], args["receiver"], key,
         replay.new_window(), args["counter_limit"], b"", b"", mutable=[6])


def test_empty_calls() -> None:
    dst = bytearray(S.noise(3, 10))
    both("seal_packets", [], 0, 0, dst, 0, 0, 0, bytes(32), 0, 0, mutable=[3])
    both("seal_packets", [], 0, 0, dst, 10, 0, 0, bytes(32), 0, 2**64, mutable=[3])
    both("seal_packets", [], 0, 0, dst, 11, 0, 0, bytes(32), 0, 0, mutable=[3])
    both("open_run", b"", 0, 0, 1, 0, bytes(32), replay.new_window(), 0, b"", b"", mutable=[6])
    both("open_run", b"x" * 40, 40, 40, 40, 0, bytes(32), replay.new_window(), 0, b"", b"",
         mutable=[6])
    both("coalesce", [], False, shape=_coalesce_shape)
    both("coalesce", [bytearray()], True, shape=_coalesce_shape)


# --- coalesce ------------------------------------------------------------------------------------


def _coalesce_shape(result: Any) -> Any:
    assert isinstance(result, list)
    out = []
    for item in result:
        assert isinstance(item, tuple) and len(item) == 2
        hdr, packet = item
        assert isinstance(hdr, bytes) and isinstance(packet, bytes | bytearray)
        out.append((hdr, bytes(packet)))
    return out


@dataclass(frozen=True)
class FlowPlan:
    flow: S.Flow
    mss: int
    segments: int
    seq: int
    ident: int
    id_pattern: str


@st.composite
def flow_segments(draw: st.DrawFn, flow: S.Flow) -> list[bytearray]:
    """One flow's segments as a sender puts them on the wire, with perturbations that must stop
    (or must not stop) a merge: gaps, flag / option / ack / window / TOS / TTL changes, short
    segments, PSH mid-run, IPv4 id patterns (counting, fixed with and without DF, random)."""
    mss = draw(st.one_of(st.integers(500, 1448), st.integers(1, 100)))
    n = draw(st.integers(1, 70))
    seq = draw(S.sequence_numbers)
    ident = draw(S.ipv4_ids)
    pattern = draw(st.sampled_from(["count", "count", "fixed", "random", "wrap"]))
    if pattern == "wrap":
        ident, pattern = 0xFFFF - draw(st.integers(0, 3)), "count"
    per = st.sampled_from(["same"] * 20 + ["gap", "flags", "options", "ack", "window", "tos",
                                           "ttl", "short", "psh", "long", "df", "frag", "id"])
    out = []
    for i in range(n):
        change = draw(per)
        size = mss
        if change == "short":
            size = draw(st.integers(0, max(0, mss - 1)))
        elif change == "long":
            size = mss + draw(st.integers(1, 10))
        elif i == n - 1 and draw(st.booleans()):
            size = draw(st.integers(0, mss))
        payload = S.noise(draw(S.seeds), size)
        kw: dict[str, Any] = {}
        f = flow
        if change == "flags":
            kw["flags"] = draw(st.integers(0, 255))
        elif change == "psh":
            kw["flags"] = S.ACK | S.PSH
        elif change == "options" and flow.proto == S.TCP:
            kw["options"] = draw(S.tcp_options())
        elif change == "ack":
            kw["ack"] = draw(S.U32)
        elif change == "window":
            kw["window"] = draw(S.U16)
        elif change == "tos":
            f = S.Flow(**{**flow.__dict__, "tos": draw(st.integers(0, 255))})
        elif change == "ttl":
            f = S.Flow(**{**flow.__dict__, "ttl": draw(st.integers(0, 255))})
        elif change == "df":
            f = S.Flow(**{**flow.__dict__, "df": not flow.df})
        elif change == "frag":
            kw["frag"] = draw(st.sampled_from([0x2000, 0x0001, 0x4001, 0x8000, 0x4000 | 0x8000]))
        if i == n - 1 and "flags" not in kw and draw(st.booleans()):
            kw["flags"] = draw(st.sampled_from([S.ACK | S.PSH, S.ACK | S.FIN, S.ACK | S.PSH | S.FIN,
                                                S.ACK | S.CWR, S.ACK | S.ECE, S.ACK | S.URG]))
        this_id = {"count": ident + i, "fixed": ident,
                   "random": draw(S.U16)}[pattern]
        if change == "id":
            this_id = draw(S.U16)
        if change != "gap":
            out.append(S.build(f, payload, seq=seq, ident=this_id, **kw))
        seq += size
    return out


@st.composite
def traffic(draw: st.DrawFn) -> list[bytearray]:
    """Segments of 1..4 flows, merged (per-flow order kept) round-robin, in bursts, or one flow
    after another, with garbage packets and non-TCP/UDP packets sprinkled in."""
    nflows = draw(st.integers(1, 4))
    flows = [draw(S.flows(ip_options=draw(st.integers(0, 4)) == 0)) for _ in range(nflows)]
    if nflows > 1 and draw(st.booleans()):  # the same 5-tuple twice but for one field
        flows[1] = S.Flow(**{**flows[0].__dict__,
                             "sport": flows[0].sport ^ draw(st.sampled_from([0, 1]))})
    queues = [draw(flow_segments(f)) for f in flows]
    mode = draw(st.sampled_from(["sequential", "round_robin", "bursts"]))
    rng = random.Random(draw(S.seeds))
    out: list[bytearray] = []
    if mode == "sequential":
        for q in queues:
            out += q
    else:
        while any(queues):
            live = [q for q in queues if q]
            q = live[rng.randrange(len(live))] if mode == "bursts" else live[0]
            take = rng.randint(1, 8) if mode == "bursts" else 1
            out += q[:take]
            del q[:take]
            if mode == "round_robin":
                queues.append(queues.pop(queues.index(q)))
    extras = draw(st.integers(0, 5))
    for _ in range(extras):
        kind = draw(st.sampled_from(["noise", "truncated", "icmp", "v4_short", "v6_short"]))
        seed = draw(S.seeds)
        if kind == "noise":
            packet = bytearray(S.noise(seed, draw(st.integers(0, 80))))
        elif kind == "truncated" and out:
            p = out[rng.randrange(len(out))]
            packet = bytearray(p[:draw(st.integers(0, len(p)))])
        elif kind == "icmp":
            packet = bytearray(S.ip_header(flows[0], 8, 1, proto=1)) + S.noise(seed, 8)
        elif kind == "v4_short":
            packet = bytearray(b"\x45" + S.noise(seed, draw(st.integers(19, 45))))
        else:
            packet = bytearray(b"\x60" + S.noise(seed, draw(st.integers(39, 65))))
        out.insert(draw(st.integers(0, len(out))), packet)
    return out


def _coalesce_both(packets: list[bytearray], udp: bool) -> None:
    """Each twin gets its own copies (the Python twin returns some input objects as they are)."""
    before = [bytes(p) for p in packets]
    results = []
    for twin in (PY, NATIVE):
        mine = [bytearray(p) for p in packets]
        results.append(_coalesce_shape(twin.coalesce(mine, udp)))
        assert [bytes(p) for p in mine] == before, f"{twin.__name__}.coalesce wrote its input"
    py, native = results
    if py != native:
        for i, (a, b) in enumerate(zip(py, native, strict=False)):
            assert a == b, (f"coalesce output {i} differs: python hdr {a[0].hex()} "
                            f"len {len(a[1])}, native hdr {b[0].hex()} len {len(b[1])}; "
                            f"{_first_difference(a[1], b[1]) if a[1] != b[1] else ''}")
        raise AssertionError(f"coalesce: {len(py)} outputs in python, {len(native)} in native")


@scaled(150)
@given(packets=traffic(), udp=st.booleans())
def test_coalesce_flows(packets: list[bytearray], udp: bool) -> None:
    _coalesce_both(packets, udp)


@scaled(60)
@given(packets=st.lists(st.one_of(
    st.binary(max_size=80).map(bytearray),
    st.tuples(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x44]), st.binary(min_size=19,
                                                                      max_size=90)).map(
        lambda t: bytearray(bytes([t[0]]) + t[1])),
    st.tuples(S.seeds, st.integers(20, 200), st.sampled_from([S.TCP, S.UDP])).map(
        lambda t: _tweaked_header(*t))), max_size=40), udp=st.booleans())
def test_coalesce_garbage(packets: list[bytearray], udp: bool) -> None:
    _coalesce_both(packets, udp)


@scaled(60)
@given(flow=S.flows(S.UDP), n=st.integers(2, 8), at=st.integers(0, 7),
       wrong=st.integers(0, 0xFFFF))
def test_coalesce_udp_length_mismatch(flow: S.Flow, n: int, at: int, wrong: int) -> None:
    """A run of one UDP flow in which one datagram's UDP length field lies: both twins leave
    that datagram alone and agree on the rest."""
    packets = [S.build(flow, bytes([i]) * 100, ident=i) for i in range(n)]
    at %= n
    struct.pack_into("!H", packets[at], flow.iphl + 4, wrong)
    _coalesce_both(packets, True)


def _tweaked_header(seed: int, size: int, proto: int) -> bytearray:
    """Random bytes behind a plausible IPv4/IPv6 header with protocol `proto`."""
    data = bytearray(S.noise(seed, size))
    if seed & 1:
        data[0] = 0x45
        data[6] = data[6] & 0x40
        data[7] = 0
        data[9] = proto
    else:
        data[0] = 0x60 | (data[0] & 0x0F)
        data[6] = proto
    return data


@scaled(40)
@given(packets=traffic(), udp=st.booleans(), cut=st.data())
def test_coalesce_then_reseal(packets: list[bytearray], udp: bool, cut: st.DataObject) -> None:
    """The super-packets coalesce builds, cut up again by seal_segments with their own gso_size:
    a round trip through two kernels in both twins."""
    for hdr, packet in PY.coalesce([bytearray(p) for p in packets], udp):
        gso_size = struct.unpack_from("<H", hdr, 4)[0]
        if not gso_size:
            continue
        plan_count = -(-(len(packet) - struct.unpack_from("<H", hdr, 2)[0]) // gso_size)
        padded = struct.unpack_from("<H", hdr, 2)[0] + gso_size
        dst = bytearray(S.noise(1, max(1, plan_count) * (padded + 32)))
        both("seal_segments", bytes(packet), gso_size, 0, max(1, plan_count), dst, 0,
             padded + 32, padded, bytes(32), 7, 0, mutable=[4])
