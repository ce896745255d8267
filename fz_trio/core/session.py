"""Transport sessions (one per completed handshake) and the receiver-index table that finds them.

A Session seals outgoing packets with its sending key and a counter that never repeats, and opens
incoming ones after the replay window allows their counter. It does no timing itself: `created`
is recorded and callers ask `usable_for_sending(now)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from fz_trio.core import crypto
from fz_trio.core.messages import TRANSPORT_HEADER, TRANSPORT_HEADER_LEN, TYPE_TRANSPORT
from fz_trio.core.replay import ReplayWindow
from fz_trio.core.timers import TimerConfig

if TYPE_CHECKING:
    from fz_trio.core.peer import Peer

_TAG = crypto.TAG_LEN
_ZEROS = bytes(16)


@attrs.define(eq=False)
class Session:
    sending_key: bytes
    receiving_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool
    created: float
    send_counter: int = 0
    replay: ReplayWindow = attrs.Factory(ReplayWindow)

    def usable_for_sending(self, now: float, timers: TimerConfig) -> bool:
        return (
            self.send_counter < timers.reject_after_messages
            and now - self.created < timers.reject_after_time
        )

    def usable_for_receiving(self, counter: int, now: float, timers: TimerConfig) -> bool:
        return (
            counter < timers.reject_after_messages
            and now - self.created < timers.reject_after_time
        )

    def needs_rekey_on_send(self, now: float, timers: TimerConfig) -> bool:
        # Only the initiator rekeys by age, so both ends don't start handshakes at once.
        return self.send_counter >= timers.rekey_after_messages or (
            self.is_initiator and now - self.created >= timers.rekey_after_time
        )

    def seal_into(self, buffer: bytearray, offset: int,
                  packet: bytes | bytearray | memoryview, padded_len: int) -> int:
        """Write a complete transport message carrying `packet` (zero-padded to `padded_len`)
        at `buffer[offset:]`; returns its length."""
        start = offset + TRANSPORT_HEADER_LEN
        plain_end = start + len(packet)
        buffer[start:plain_end] = packet
        if padded_len > len(packet):
            buffer[plain_end:start + padded_len] = _ZEROS[: padded_len - len(packet)]
        return self.seal_in_buffer(buffer, offset, padded_len)

    def seal_in_buffer(self, buffer: bytearray, offset: int, padded_len: int) -> int:
        """Like `seal_into` for a padded plaintext already in place after the header's room
        (at `buffer[offset + 16:]`): write the header, encrypt; returns the message length."""
        counter = self.send_counter
        self.send_counter = counter + 1
        TRANSPORT_HEADER.pack_into(buffer, offset, TYPE_TRANSPORT, self.remote_index, counter)
        crypto.seal_in_place(self.sending_key, counter, buffer, offset + TRANSPORT_HEADER_LEN,
                             padded_len)
        return TRANSPORT_HEADER_LEN + padded_len + _TAG

    def seal_run(self, buffer: bytearray, offset: int, stride: int, padded_len: int,
                 count: int) -> None:
        """`seal_in_buffer` for `count` messages `stride` bytes apart (a GSO batch's slots), each
        with a padded plaintext of `padded_len` bytes already in place."""
        counter = self.send_counter
        self.send_counter = counter + count
        pack = TRANSPORT_HEADER.pack_into
        remote = self.remote_index
        for k in range(count):
            pack(buffer, offset + k * stride, TYPE_TRANSPORT, remote, counter + k)
        crypto.seal_many(self.sending_key, counter, buffer, offset + TRANSPORT_HEADER_LEN, stride,
                         padded_len, count)

    def open(self, buffer: bytes | bytearray | memoryview, start: int, end: int,
             counter: int) -> bytearray | None:
        """The padded plaintext of the authenticated datagram at `buffer[start:end]`, or None
        (forged, replayed, too old).

        The replay window is consulted before decryption and updated only after the tag verified,
        so a forged packet can never move the window.
        """
        if not self.replay.check(counter):
            return None
        length = end - start - TRANSPORT_HEADER_LEN
        out = bytearray(length - _TAG)
        try:
            crypto.open_into(self.receiving_key, counter, out, buffer,
                             start + TRANSPORT_HEADER_LEN, length)
        except crypto.CryptoError:
            return None
        if not self.replay.mark(counter):
            return None
        return out


@attrs.define
class IndexTable:
    """Local receiver indices -> (peer, session or None for a pending handshake).

    Indices are random so that they say nothing about how many sessions exist.
    """

    random_bytes: Callable[[int], bytes]
    _entries: dict[int, tuple[Peer, Any]] = attrs.Factory(dict)

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
