"""TUN queue I/O, joined to the packet loop by bounded memory channels, in one of two modes.

`threads` (the design card's shape): one reader and one writer thread per queue
fd, each a single long `trio.to_thread.run_sync` call.
Threads hand over *batches* (lists of packets), never single packets: a thread hop costs tens of
microseconds, a packet's crypto about two.

The fds are non-blocking and the threads block in `poll` instead of `read`/`write`, together with
a shared eventfd: `Waker.wake()` makes every poll return at once, so cancelling the nursery stops
every thread within a poll round trip, never leaving one blocked in a syscall.

`inline` (the default): no threads and no channels. The packet loop's TUN reader task reads
a tick (`read_tick`), seals it and sends it; its UDP readers write what they decrypted to TUN
themselves (`fz_trio.shell.runner`). No thread hops, no GIL hand-overs and no task switch per
batch: on a 2-core machine shared by both tunnel ends this moves more bytes at a lower latency
under load, native kernels or not (docs/performance.md).
"""

from __future__ import annotations

import enum
import errno
import os
import select
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import trio


class TunIo(enum.Enum):
    THREADS = "threads"  # a reader and a writer thread per queue fd
    INLINE = "inline"  # readers and writers as Trio tasks on the event loop thread


# TUN I/O on the event loop: with the native kernels it still moves more than worker threads on
# the 2-core machines we measure on, at lower latency under load (docs/performance.md).
DEFAULT_TUN_IO = TunIo.INLINE
DEFAULT_TUN_QUEUES = 1  # more queues measured no faster on 2 cores (docs/performance.md)

# Reads per batch from a reader; the packet loop takes at most two batches per tick. With TUN
# offloads one read may be a 64 KB super-packet, so a batch also stops at READ_BATCH_BYTES.
READ_BATCH = 50
READ_BATCH_BYTES = 128 * 1024
_READ_SIZE = 65535 + 10  # the largest packet plus a virtio_net_hdr

# Writes one channel item to a TUN fd. It may raise BlockingIOError (the caller waits and retries
# the same item) and may return replacement items to write instead (see offload fallback).
ItemWriter = Callable[[int, Any], "list[Any] | None"]


def write_packet(fd: int, packet: bytes | bytearray) -> None:
    os.write(fd, packet)
    return None


class Waker:
    """An eventfd that, once written, stays readable: every thread polling it wakes and stops."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.stopped = False

    def wake(self) -> None:
        self.stopped = True
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def _poller(fd: int, events: int, waker: Waker) -> select.poll:
    poller = select.poll()
    poller.register(fd, events)
    poller.register(waker.fd, select.POLLIN)
    return poller


def drain(fd: int, on_error: Callable[[int], None]) -> list[bytes] | None:
    """Read what the non-blocking `fd` has, up to a batch; None once the fd is closed or its
    device deleted."""
    tick = read_tick(fd, on_error, READ_BATCH, READ_BATCH_BYTES)
    return None if tick is None else tick[0]


def read_tick(fd: int, on_error: Callable[[int], None], max_reads: int, max_bytes: int
              ) -> tuple[list[bytes], bool] | None:
    """Up to `max_reads` packets or `max_bytes` from the non-blocking `fd`, and whether the fd
    ran dry (so the caller waits before reading again); None once the fd is closed or its
    device deleted."""
    batch: list[bytes] = []
    size = 0
    read = os.read
    while len(batch) < max_reads and size < max_bytes:
        try:
            packet = read(fd, _READ_SIZE)
        except BlockingIOError:
            return batch, True
        except OSError as e:
            if e.errno == errno.EBADF:
                return None
            on_error(e.errno or 0)
            if e.errno == errno.EBADFD:
                # The device was deleted (`ip link del`): the fd reads EBADFD for ever, and the
                # link watch is about to stop the interface; spinning on it helps nobody.
                return None
            return batch, True
        batch.append(packet)
        size += len(packet)
    return batch, False


def read_loop(fd: int, waker: Waker, deliver: Callable[[list[bytes]], None],
              on_error: Callable[[int], None]) -> None:
    """Thread body: read packets from `fd` in batches and `deliver` each batch (which blocks
    while the channel is full — that is the backpressure)."""
    poller = _poller(fd, select.POLLIN, waker)
    while not waker.stopped:
        poller.poll()
        if waker.stopped:
            return
        batch = drain(fd, on_error)
        if batch is None:
            return
        if batch:
            deliver(batch)


def write_pending(fd: int, pending: deque[Any], write_item: ItemWriter,
                  on_error: Callable[[int], None]) -> bool:
    """Write the items of `pending` to `fd` in order, taking each off once written (the
    replacements a write asks for go first); True when the fd would block with items left.
    An item the kernel refuses is counted with `on_error` and skipped; EBADF (the fd was
    closed) is raised, with the item still first."""
    while pending:
        try:
            replacement = write_item(fd, pending[0])
        except BlockingIOError:
            return True
        except OSError as e:
            # The kernel refused this packet (e.g. EINVAL for a malformed one): count it.
            if e.errno == errno.EBADF:
                raise
            on_error(e.errno or 0)
            replacement = None
        pending.popleft()
        if replacement:
            pending.extendleft(reversed(replacement))
    return False


def write_loop(fd: int, waker: Waker, fetch: Callable[[], list[Any] | None],
               on_error: Callable[[int], None], write_item: ItemWriter = write_packet) -> None:
    """Thread body: `fetch` batches (None at the end) and write each item to `fd`."""
    poller = _poller(fd, select.POLLOUT, waker)
    while not waker.stopped:
        batch = fetch()
        if batch is None:
            return
        pending = deque(batch)
        while True:
            try:
                if not write_pending(fd, pending, write_item, on_error):
                    break
            except OSError:  # EBADF: the fd was closed
                return
            poller.poll()
            if waker.stopped:
                return


class ReaderHandoff:
    """Hands reader batches to the Trio side without a round trip per batch.

    `trio.from_thread.run` would block the reader for a whole thread round trip (~45 µs) per
    batch; instead the reader takes a slot of a thread semaphore (blocking while the channel is
    full — the backpressure) and schedules a non-blocking `send_nowait` on the Trio thread
    (~6 µs). The consumer gives the slot back with `consumed()` after each batch it receives,
    so the channel never holds more batches than it has room for.
    """

    def __init__(self, send: trio.MemorySendChannel[list[bytes]], capacity: int,
                 waker: Waker) -> None:
        self._send = send
        self._slots = threading.Semaphore(capacity)
        self._token = trio.lowlevel.current_trio_token()
        self._waker = waker

    def deliver(self, batch: list[bytes]) -> None:
        """Called on a reader thread; waits while the channel is full."""
        while not self._slots.acquire(timeout=0.1):
            if self._waker.stopped:
                return
        try:
            self._token.run_sync_soon(self._send.send_nowait, batch)
        except trio.RunFinishedError:
            pass

    def consumed(self) -> None:
        self._slots.release()


async def run_reader(fd: int, waker: Waker, handoff: ReaderHandoff,
                     on_error: Callable[[int], None], limiter: trio.CapacityLimiter) -> None:
    await trio.to_thread.run_sync(read_loop, fd, waker, handoff.deliver, on_error, limiter=limiter)


async def _receive_all(receive: trio.MemoryReceiveChannel[list[Any]]) -> list[Any]:
    """Wait for one batch, then take every batch already queued: one thread hop for all."""
    packets = await receive.receive()
    while True:
        try:
            packets = packets + receive.receive_nowait()
        except trio.WouldBlock:
            return packets


async def run_writer(fd: int, waker: Waker, receive: trio.MemoryReceiveChannel[list[Any]],
                     on_error: Callable[[int], None], limiter: trio.CapacityLimiter,
                     write_item: ItemWriter = write_packet) -> None:
    def fetch() -> list[Any] | None:
        try:
            return trio.from_thread.run(_receive_all, receive)
        except trio.EndOfChannel:
            return None

    await trio.to_thread.run_sync(write_loop, fd, waker, fetch, on_error, write_item,
                                  limiter=limiter)
