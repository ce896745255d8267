"""Glue between a TUN device opened with IFF_VNET_HDR and the packet loop.

The decisions (how to split a super-packet, what to coalesce) are the pure functions of
`fz_trio.core.offload`; this module applies them to TUN reads and writes and keeps the counts.
"""

from __future__ import annotations

import errno
import logging
import os

import attrs

from fz_trio.core.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    PLAIN_HDR,
    VNET_HDR_LEN,
    OffloadError,
    Segments,
    VnetHeader,
    coalesce,
    segment,
)

log = logging.getLogger(__name__)

WriteItem = tuple[bytes, bytes | bytearray]


@attrs.define
class TunOffload:
    """The active offload mode of one device and what it has done."""

    mode: str  # "tso+uso", "tso" or "csum"
    coalescing: bool = True
    super_packets_read: int = 0
    segments_from_super_packets: int = 0
    super_packets_written: int = 0
    gso_writes_rejected: int = 0
    malformed_reads: int = 0

    @property
    def uso(self) -> bool:
        return "uso" in self.mode

    def packets_from_read(self, read: bytes) -> memoryview | bytearray | Segments | None:
        """What one TUN read carries: a view of a plain packet (no copy), a copy of a packet whose
        checksum was partial, now complete, or the plan of a super-packet's segments; None
        (counted) when malformed."""
        if len(read) <= VNET_HDR_LEN:
            self.malformed_reads += 1
            return None
        if read[1] == GSO_NONE and not read[0] & F_NEEDS_CSUM:
            return memoryview(read)[VNET_HDR_LEN:]
        try:
            hdr = VnetHeader.parse(read)
            if hdr.gso_type & ~GSO_ECN == GSO_NONE:
                return segment(hdr, memoryview(read)[VNET_HDR_LEN:])[0]
            segments = Segments.of(hdr, memoryview(read)[VNET_HDR_LEN:])
        except OffloadError as e:
            self.malformed_reads += 1
            log.debug("dropping a TUN read: %s", e)
            return None
        self.super_packets_read += 1
        self.segments_from_super_packets += segments.count
        return segments

    def items_for_writer(self, packets: list[bytearray]) -> list[WriteItem]:
        if not self.coalescing:
            return [(PLAIN_HDR, packet) for packet in packets]
        items = coalesce(packets, udp=self.uso)
        self.super_packets_written += sum(1 for hdr, _ in items if hdr is not PLAIN_HDR)
        return items

    def write_item(self, fd: int, item: WriteItem) -> list[WriteItem] | None:
        """Write one (vnet header, packet); if the kernel refuses a GSO write, stop coalescing
        from now on and write that super-packet's segments instead, so nothing is lost."""
        try:
            os.writev(fd, item)
            return None
        except OSError as e:
            hdr, packet = item
            if e.errno != errno.EINVAL or hdr[1] == GSO_NONE:
                raise
            if self.coalescing:
                log.warning("the kernel refused a GSO write to TUN; "
                            "writing plain packets from now on")
            self.coalescing = False
            self.gso_writes_rejected += 1
            return [(PLAIN_HDR, s) for s in segment(VnetHeader.parse(hdr), packet)]
