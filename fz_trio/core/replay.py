"""The sliding replay window for transport counters (RFC 6479 style, held in one Python int)."""

from __future__ import annotations

import attrs

# The Linux kernel keeps 8192 - 64; a window this wide absorbs the reordering of multi-queue paths.
WINDOW_SIZE = 8192


@attrs.define
class ReplayWindow:
    """`check` before decrypting (cheap rejection), `mark` only after the tag verified.

    Bit i of `_bits` stands for counter `_greatest - i`; counters older than the window are refused.
    """

    size: int = WINDOW_SIZE
    _greatest: int = -1
    _bits: int = 0

    def check(self, counter: int) -> bool:
        if counter > self._greatest:
            return True
        age = self._greatest - counter
        if age >= self.size:
            return False
        return not (self._bits >> age) & 1

    def mark(self, counter: int) -> bool:
        """Record `counter`; False (and no change) if it is a replay or too old."""
        if counter > self._greatest:
            shift = counter - self._greatest
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self._greatest = counter
            return True
        age = self._greatest - counter
        if age >= self.size or (self._bits >> age) & 1:
            return False
        self._bits |= 1 << age
        return True
