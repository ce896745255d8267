"""The sliding replay window for transport counters."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fz_trio.datapath.replay import WINDOW_SIZE, ReplayWindow


def accept(window: ReplayWindow, counter: int) -> bool:
    """What the receive path does: check before decrypting, mark after the tag verified."""
    return window.check(counter) and window.mark(counter)


def test_window_size_is_8192() -> None:
    assert WINDOW_SIZE == 8192


def test_in_order_counters_are_accepted_once() -> None:
    w = ReplayWindow()
    assert all(accept(w, c) for c in range(20_000))
    assert not any(accept(w, c) for c in range(20_000))


def test_first_counter_zero_is_accepted() -> None:
    w = ReplayWindow()
    assert accept(w, 0)
    assert not accept(w, 0)


def test_duplicates_are_refused_out_of_order_too() -> None:
    w = ReplayWindow()
    for c in [5, 3, 9, 4, 0]:
        assert accept(w, c)
    for c in [5, 3, 9, 4, 0]:
        assert not w.check(c)
        assert not w.mark(c)
    for c in [1, 2, 6, 7, 8, 10]:
        assert accept(w, c)


def test_check_does_not_change_the_window() -> None:
    w = ReplayWindow()
    for _ in range(3):
        assert w.check(100)
    assert w.check(0)  # nothing was marked: 100 did not move the window
    assert accept(w, 100)
    assert not w.check(100)


def test_edge_of_the_window() -> None:
    w = ReplayWindow()
    top = 100_000
    assert accept(w, top)
    assert accept(w, top - (WINDOW_SIZE - 1))  # the oldest counter still inside
    assert not accept(w, top - WINDOW_SIZE)  # just outside
    assert not accept(w, 0)
    assert not w.check(top - WINDOW_SIZE - 1)


def test_window_slides_with_the_greatest_counter() -> None:
    w = ReplayWindow()
    assert accept(w, 10)
    assert accept(w, 10 + WINDOW_SIZE - 1)
    assert not accept(w, 10)  # still inside, already seen
    assert accept(w, 11)  # still inside, unseen
    assert accept(w, 12 + WINDOW_SIZE)  # now 12 and older are outside
    assert not w.check(11)
    assert not w.check(12)  # 12 was never seen, but is now too old
    assert accept(w, 13)


def test_far_future_jump_clears_the_window() -> None:
    w = ReplayWindow()
    for c in range(100):
        assert accept(w, c)
    far = 1 << 62
    assert accept(w, far)
    assert not accept(w, far)
    assert not accept(w, 99)  # the old ones are now far outside
    assert accept(w, far - 1)
    assert accept(w, far - WINDOW_SIZE + 1)
    assert not accept(w, far - WINDOW_SIZE)
    assert accept(w, far + 1)
    # The largest counter WireGuard can carry still works.
    assert accept(w, 2**64 - 1)
    assert not accept(w, 2**64 - 1)


def test_jump_by_exactly_the_window_size() -> None:
    w = ReplayWindow()
    assert accept(w, 0)
    assert accept(w, 1)
    assert accept(w, WINDOW_SIZE)
    assert accept(w, 2)  # age WINDOW_SIZE - 2: inside and unseen
    assert not w.check(1)  # age WINDOW_SIZE - 1: inside, and already seen
    assert not w.check(0)  # age WINDOW_SIZE: outside


def _model_run(size: int, counters: list[int]) -> list[bool]:
    """A deliberately naive reference: remember everything, accept unseen counters in reach."""
    seen: set[int] = set()
    greatest = -1
    result = []
    for c in counters:
        ok = c not in seen and c > greatest - size
        if ok:
            seen.add(c)
            greatest = max(greatest, c)
        result.append(ok)
    return result


def _counter_sequences(size: int) -> st.SearchStrategy[list[int]]:
    # Mostly near each other (duplicates, reordering, the window edge), sometimes big jumps.
    step = st.one_of(st.integers(-size - 2, size + 2), st.integers(-4, 4),
                     st.integers(0, 10 * size))
    return st.lists(step, max_size=200).map(
        lambda steps: [max(0, v) for v in _cumulative(steps)])


def _cumulative(steps: list[int]) -> list[int]:
    out, total = [], 0
    for s in steps:
        total = max(0, total + s)
        out.append(total)
    return out


@settings(max_examples=150)
@given(_counter_sequences(WINDOW_SIZE))
def test_window_matches_a_naive_model(counters: list[int]) -> None:
    w = ReplayWindow()
    assert [accept(w, c) for c in counters] == _model_run(WINDOW_SIZE, counters)


@settings(max_examples=100)
@given(_counter_sequences(WINDOW_SIZE))
def test_each_counter_is_accepted_at_most_once_and_never_too_old(counters: list[int]) -> None:
    w = ReplayWindow()
    accepted: set[int] = set()
    greatest = -1
    for c in counters:
        ok = accept(w, c)
        if ok:
            assert c not in accepted
            assert c > greatest - WINDOW_SIZE  # never when older than greatest - window + 1
            accepted.add(c)
            greatest = max(greatest, c)
        else:
            assert c in accepted or c <= greatest - WINDOW_SIZE
