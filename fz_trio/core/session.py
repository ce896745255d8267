"""Transport sessions (one per completed handshake) and the receiver-index table that finds them.

A Session holds the keys of one handshake and hands out its send counters: `reserve(count)`
returns the first of `count` counters no one else will ever get, before any sealing happens, so a
nonce never repeats even when the data path seals on another thread with the GIL released. The
data path keeps its replay state for the receiving key in `receive_state` (opaque here). A
Session does no timing itself: `created` is recorded and callers ask `usable_for_sending(now)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from fz_trio.core.timers import TimerConfig

if TYPE_CHECKING:
    from fz_trio.core.peer import Peer


@attrs.define(eq=False)
class Session:
    sending_key: bytes
    receiving_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool
    created: float
    send_counter: int = 0
    # The data path's per-session receive state (its replay window), created on first use.
    receive_state: bytearray | None = None

    def usable_for_sending(self, now: float, timers: TimerConfig) -> bool:
        return (
            self.send_counter < timers.reject_after_messages
            and now - self.created < timers.reject_after_time
        )

    def receive_limit(self, now: float, timers: TimerConfig) -> int:
        """Received counters must stay below this (0 once the session is too old to receive)."""
        if now - self.created >= timers.reject_after_time:
            return 0
        return timers.reject_after_messages

    def needs_rekey_on_send(self, now: float, timers: TimerConfig) -> bool:
        # Only the initiator rekeys by age, so both ends don't start handshakes at once.
        return self.send_counter >= timers.rekey_after_messages or (
            self.is_initiator and now - self.created >= timers.rekey_after_time
        )

    def sendable(self, count: int, timers: TimerConfig) -> int:
        """How many of `count` messages may still be sent before REJECT_AFTER_MESSAGES."""
        return min(count, timers.reject_after_messages - self.send_counter)

    def reserve(self, count: int) -> int:
        """The first of `count` consecutive send counters, now taken."""
        counter = self.send_counter
        self.send_counter = counter + count
        return counter


@attrs.define
class IndexTable:
    """Local receiver indices -> (peer, session or None for a pending handshake).

    Indices are random so that they say nothing about how many sessions exist.
    """

    random_bytes: Callable[[int], bytes]
    _entries: dict[int, tuple[Peer, Session | None]] = attrs.Factory(dict)

    def allocate(self, peer: Peer) -> int:
        while True:
            index = int.from_bytes(self.random_bytes(4), "little")
            if index not in self._entries:
                self._entries[index] = (peer, None)
                return index

    def bind(self, index: int, peer: Peer, session: Session) -> None:
        self._entries[index] = (peer, session)

    def free(self, index: int) -> None:
        self._entries.pop(index, None)

    def get(self, index: int) -> tuple[Peer, Session | None] | None:
        return self._entries.get(index)

    def __len__(self) -> int:
        return len(self._entries)
