"""The GSO batcher's rules: which datagrams may share one UDP_SEGMENT send."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fz_trio.datapath.gso import MAX_BATCH_BYTES, MAX_SEGMENTS, GsoBatcher

A = ("198.18.0.1", 51820)
B = ("198.18.0.2", 51820)


def put(batcher: GsoBatcher, endpoint: tuple[str, int], data: bytes) -> None:
    batcher.append((data, endpoint))


def test_equal_sizes_share_a_batch_and_a_shorter_one_closes_it() -> None:
    g = GsoBatcher()
    for i in range(3):
        put(g, A, bytes([i]) * 100)
    put(g, A, b"x" * 40)  # shorter: joins as the last segment
    put(g, A, b"y" * 100)  # must start a new batch
    batches = g.take()
    assert [(b.segment_size, b.count) for b in batches] == [(100, 4), (100, 1)]
    assert [bytes(d) for d in batches[0].datagrams()] == [bytes([0]) * 100, bytes([1]) * 100,
                                                          bytes([2]) * 100, b"x" * 40]


def test_longer_datagram_starts_a_new_batch() -> None:
    g = GsoBatcher()
    put(g, A, b"a" * 60)
    put(g, A, b"b" * 100)
    assert [(b.segment_size, b.count) for b in g.take()] == [(60, 1), (100, 1)]


def test_destinations_are_batched_separately_in_order() -> None:
    g = GsoBatcher()
    put(g, A, b"1" * 50)
    put(g, B, b"2" * 50)
    put(g, A, b"3" * 50)
    batches = g.take()
    assert [(b.endpoint, b.count) for b in batches] == [(A, 2), (B, 1)]


def test_segment_and_byte_limits() -> None:
    g = GsoBatcher()
    for _ in range(MAX_SEGMENTS + 1):
        put(g, A, b"z" * 100)
    assert [b.count for b in g.take()] == [MAX_SEGMENTS, 1]
    big = MAX_BATCH_BYTES // 3 + 1
    for _ in range(3):
        put(g, A, b"q" * big)
    assert [b.count for b in g.take()] == [2, 1]


def test_buffers_are_reused_after_recycle() -> None:
    g = GsoBatcher()
    put(g, A, b"a" * 10)
    batches = g.take()
    buffer = batches[0].buffer
    g.recycle(batches)
    put(g, A, b"b" * 10)
    assert g.take()[0].buffer is buffer


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), st.integers(1, 1500)), max_size=300))
def test_every_datagram_comes_out_once_in_order_per_destination(items: list) -> None:
    g = GsoBatcher()
    sent: dict[tuple[str, int], list[bytes]] = {A: [], B: []}
    for n, (endpoint, size) in enumerate(items):
        data = (n.to_bytes(4, "big") * (size // 4 + 1))[:size]
        sent[endpoint].append(data)
        put(g, endpoint, data)
    got: dict[tuple[str, int], list[bytes]] = {A: [], B: []}
    for batch in g.take():
        assert batch.count <= MAX_SEGMENTS and batch.used <= MAX_BATCH_BYTES
        datagrams = [bytes(d) for d in batch.datagrams()]
        # GSO's rule: every segment has the batch's size except possibly the last, shorter one.
        assert all(len(d) == batch.segment_size for d in datagrams[:-1])
        assert len(datagrams[-1]) <= batch.segment_size
        got[batch.endpoint].extend(datagrams)
    assert got == sent


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), st.integers(1, 1500), st.integers(0, 100)),
                max_size=60))
def test_runs_and_single_datagrams_keep_the_gso_rules(items: list) -> None:
    """`reserve_run` mixed with `reserve`: every datagram once, in order, in valid batches."""
    g = GsoBatcher()
    sent: dict[tuple[str, int], list[bytes]] = {A: [], B: []}
    n = 0
    for endpoint, size, run in items:
        if run == 0:
            data = (n.to_bytes(4, "big") * (size // 4 + 1))[:size]
            sent[endpoint].append(data)
            put(g, endpoint, data)
            n += 1
            continue
        left = run
        while left:
            buffer, offset, fit = g.reserve_run(endpoint, size, left)
            assert 1 <= fit <= left
            for k in range(fit):
                data = (n.to_bytes(4, "big") * (size // 4 + 1))[:size]
                buffer[offset + k * size:offset + (k + 1) * size] = data
                sent[endpoint].append(data)
                n += 1
            left -= fit
    got: dict[tuple[str, int], list[bytes]] = {A: [], B: []}
    for batch in g.take():
        assert batch.count <= MAX_SEGMENTS and batch.used <= MAX_BATCH_BYTES
        datagrams = [bytes(d) for d in batch.datagrams()]
        assert len(datagrams) == batch.count
        assert all(len(d) == batch.segment_size for d in datagrams[:-1])
        assert len(datagrams[-1]) <= batch.segment_size
        got[batch.endpoint].extend(datagrams)
    assert got == sent
