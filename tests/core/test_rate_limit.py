"""The handshake rate limiter alone (driven by `now`), and inside a Tunnel under a flood."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fz_trio.core.rate_limit import HandshakeRateLimiter


def test_a_burst_of_five_then_twenty_a_second() -> None:
    limiter = HandshakeRateLimiter()
    assert [limiter.allow("198.18.0.66", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    # One second later twenty more (the bucket holds at most the burst of five at a time).
    allowed = sum(limiter.allow("198.18.0.66", 1.0 + i / 100) for i in range(100))
    assert 20 <= allowed <= 26
    assert limiter.allow("198.18.0.67", 1.0)  # another source has its own bucket


def test_an_ipv6_source_is_its_64() -> None:
    limiter = HandshakeRateLimiter()
    hosts = [f"fd00:18::{i:x}" for i in range(1, 8)]  # seven hosts of one /64
    assert [limiter.allow(h, 0.0) for h in hosts] == [True] * 5 + [False] * 2
    assert limiter.allow("fd00:19::1", 0.0)  # another /64


def test_memory_is_bounded_and_idle_sources_are_forgotten() -> None:
    limiter = HandshakeRateLimiter(max_sources=100)
    assert all(limiter.allow(f"198.18.{i // 256}.{i % 256}", 0.0) for i in range(100))
    assert not limiter.allow("198.19.0.1", 0.1)  # full: a new source waits
    assert len(limiter) == 100
    assert limiter.allow("198.19.0.1", 1.5)  # a second later the idle ones are gone
    assert len(limiter) == 1


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 0.2)), max_size=300))
def test_no_source_ever_gets_more_than_rate_times_time_plus_burst(
        events: list[tuple[int, float]]) -> None:
    limiter = HandshakeRateLimiter()
    now, allowed = 0.0, [0, 0, 0, 0]
    for source, step in events:
        now += step
        allowed[source] += limiter.allow(f"198.18.0.{source}", now)
    assert all(count <= 5 + 20 * now + 1e-9 for count in allowed)
