"""Batching outgoing datagrams for UDP GSO: which datagrams can share one `sendmsg`.

The kernel's UDP_SEGMENT cuts one buffer into datagrams of `segment_size` bytes; only the last may
be shorter. So per destination we keep an open batch whose segment size is that of its first
datagram: an equal-sized datagram joins it, a shorter one joins and closes it, a longer one (or a
full batch) starts the next. The core seals packets straight into the space `reserve` hands out,
so a packet is copied once, from the TUN read buffer into the batch buffer, and encrypted there.

Pure bookkeeping over bytearrays: the shell sends `take()`'s batches and gives the buffers back
with `recycle()`.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from fz_trio.core import Endpoint

# The kernel refuses more than 64 segments per send (UDP_MAX_SEGMENTS).
MAX_SEGMENTS = 64
# A UDP payload cannot exceed 65535 - 8 (UDP) - 20 (IPv4 header) bytes.
MAX_BATCH_BYTES = 65507
BUFFER_BYTES = MAX_BATCH_BYTES


@attrs.define(eq=False)
class Batch:
    """Datagrams for one destination, back to back in `buffer[:used]`."""

    endpoint: Endpoint
    buffer: bytearray
    segment_size: int = 0
    count: int = 0
    used: int = 0
    closed: bool = False

    @property
    def data(self) -> memoryview:
        return memoryview(self.buffer)[: self.used]

    def datagrams(self) -> Iterator[memoryview]:
        view = memoryview(self.buffer)
        size = self.segment_size
        for start in range(0, self.used, size):
            yield view[start : min(start + size, self.used)]


class GsoBatcher:
    """Collects outgoing datagrams into per-destination GSO batches, in order per destination."""

    def __init__(self, max_segments: int = MAX_SEGMENTS) -> None:
        self.max_segments = max_segments
        self._batches: list[Batch] = []
        self._open: dict[Endpoint, Batch] = {}
        self._free: list[bytearray] = []
        self._datagrams = 0

    def reserve(self, endpoint: Endpoint, length: int) -> tuple[bytearray, int]:
        """Space for one datagram of `length` bytes to `endpoint`: (buffer, offset) to write at."""
        _check_length(length)
        batch = self._open.get(endpoint)
        if batch is not None and not (
            batch.closed
            or length > batch.segment_size
            or batch.count >= self.max_segments
            or batch.used + length > MAX_BATCH_BYTES
        ):
            if length < batch.segment_size:
                batch.closed = True
        else:
            batch = Batch(endpoint, self._free.pop() if self._free else bytearray(BUFFER_BYTES),
                          segment_size=length)
            self._batches.append(batch)
            self._open[endpoint] = batch
        offset = batch.used
        batch.used = offset + length
        batch.count += 1
        self._datagrams += 1
        return batch.buffer, offset

    def reserve_run(self, endpoint: Endpoint, length: int, wanted: int
                    ) -> tuple[bytearray, int, int]:
        """Space for up to `wanted` datagrams of exactly `length` bytes each, back to back in one
        batch: (buffer, offset of the first, how many fit, at least 1)."""
        _check_length(length)
        batch = self._open.get(endpoint)
        if batch is None or (
            batch.closed
            or length != batch.segment_size
            or batch.count >= self.max_segments
            or batch.used + length > MAX_BATCH_BYTES
        ):
            batch = Batch(endpoint, self._free.pop() if self._free else bytearray(BUFFER_BYTES),
                          segment_size=length)
            self._batches.append(batch)
            self._open[endpoint] = batch
        fit = min(wanted, self.max_segments - batch.count,
                  (MAX_BATCH_BYTES - batch.used) // length)
        fit = max(fit, 1)
        offset = batch.used
        batch.used = offset + fit * length
        batch.count += fit
        self._datagrams += fit
        return batch.buffer, offset, fit

    def append(self, item: tuple[bytes | bytearray | memoryview, Endpoint]) -> None:
        """Add a finished datagram (handshake messages, mostly): `(datagram, endpoint)`."""
        datagram, endpoint = item
        buffer, offset = self.reserve(endpoint, len(datagram))
        buffer[offset : offset + len(datagram)] = datagram

    def __len__(self) -> int:
        """Datagrams waiting (not batches)."""
        return self._datagrams

    def take(self) -> list[Batch]:
        """All batches so far, in creation order; the batcher starts afresh."""
        batches, self._batches = self._batches, []
        self._open.clear()
        self._datagrams = 0
        return batches

    def recycle(self, batches: list[Batch]) -> None:
        """Give buffers back once sent, so the steady state allocates nothing."""
        for batch in batches:
            if len(self._free) < 64:  # bounds idle memory at 4 MiB
                self._free.append(batch.buffer)


def _check_length(length: int) -> None:
    # The caller drops (and counts) what cannot be one UDP datagram; reaching here is a bug.
    if not 0 < length <= MAX_BATCH_BYTES:
        raise ValueError(f"a datagram of {length} bytes does not fit a GSO buffer")
