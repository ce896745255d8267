"""The sliding replay window for transport counters (RFC 6479: a ring of 64-bit words).

The window's state is one `bytearray` with a fixed layout, so the Python twin and the native
kernel check and mark the very same state: word 0 is the greatest counter seen (0 when none is
yet: counter 0 is then "the greatest, not marked"), words 1..RING_WORDS the ring, all unsigned
64-bit in the machine's byte order. Marking costs a few word operations whatever the window size.

`check` before decrypting (cheap rejection), `mark` only after the tag verified, so a forged
packet can never move the window. Counters WINDOW_SIZE or more behind the greatest seen are
refused. The ring has one word more than the size needs, because the word holding the newest
counter is partly in the future.
"""

from __future__ import annotations

# The Linux kernel keeps 8192 - 64; a window this wide absorbs the reordering of multi-queue paths.
WINDOW_SIZE = 8192
RING_WORDS = WINDOW_SIZE // 64 + 1
WINDOW_BYTES = 8 * (1 + RING_WORDS)


def new_window() -> bytearray:
    """The state of a window that has seen nothing."""
    return bytearray(WINDOW_BYTES)


def check(words: memoryview, counter: int) -> bool:
    """May `counter` be new? (`words` is the state cast to unsigned 64-bit words.)"""
    greatest = words[0]
    if counter > greatest:
        return True
    if greatest - counter >= WINDOW_SIZE:
        return False
    return not (words[1 + (counter >> 6) % RING_WORDS] >> (counter & 63)) & 1


def mark(words: memoryview, counter: int) -> bool:
    """Record `counter`; False (and no change) if it is a replay or too old."""
    greatest = words[0]
    if counter > greatest:
        # Clear the words the window slides over (all of them after a big jump).
        current = greatest >> 6
        new = counter >> 6
        for word in range(current + 1, min(new, current + RING_WORDS) + 1):
            words[1 + word % RING_WORDS] = 0
        words[0] = counter
    elif greatest - counter >= WINDOW_SIZE:
        return False
    index = 1 + (counter >> 6) % RING_WORDS
    bit = 1 << (counter & 63)
    if words[index] & bit:
        return False
    words[index] |= bit
    return True


class ReplayWindow:
    """A window as an object (tests, the REPL): the same state and rules the kernels use."""

    def __init__(self, state: bytearray | None = None) -> None:
        self.state = state if state is not None else new_window()
        self._words = memoryview(self.state).cast("Q")

    def check(self, counter: int) -> bool:
        return check(self._words, counter)

    def mark(self, counter: int) -> bool:
        return mark(self._words, counter)
