"""The sliding replay window for transport counters (RFC 6479: a ring of 64-bit words).

Marking a counter costs a few small-int operations whatever the window size; a window held as
one big int would copy a kilobyte per packet.
"""

from __future__ import annotations

import attrs

# The Linux kernel keeps 8192 - 64; a window this wide absorbs the reordering of multi-queue paths.
WINDOW_SIZE = 8192
_WORD_BITS = 64


@attrs.define
class ReplayWindow:
    """`check` before decrypting (cheap rejection), `mark` only after the tag verified.

    Counters `size` or more behind the greatest seen are refused. The ring has one word more
    than `size` needs, because the word holding the newest counter is partly in the future.
    """

    size: int = WINDOW_SIZE
    _greatest: int = -1
    _ring: list[int] = attrs.field(init=False)
    _words: int = attrs.field(init=False)
    _usable: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._words = -(-self.size // _WORD_BITS) + 1
        self._ring = [0] * self._words
        self._usable = self.size

    def check(self, counter: int) -> bool:
        if counter > self._greatest:
            return True
        if self._greatest - counter >= self._usable:
            return False
        return not (self._ring[(counter >> 6) % self._words] >> (counter & 63)) & 1

    def mark(self, counter: int) -> bool:
        """Record `counter`; False (and no change) if it is a replay or too old."""
        ring = self._ring
        words = self._words
        greatest = self._greatest
        if counter > greatest:
            # Clear the words the window slides over (all of them after a big jump).
            current = greatest >> 6 if greatest >= 0 else -1
            new = counter >> 6
            for word in range(current + 1, min(new, current + words) + 1):
                ring[word % words] = 0
            self._greatest = counter
        elif greatest - counter >= self._usable:
            return False
        index = (counter >> 6) % words
        bit = 1 << (counter & 63)
        if ring[index] & bit:
            return False
        ring[index] |= bit
        return True
