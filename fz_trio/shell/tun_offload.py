"""Glue between a TUN device opened with IFF_VNET_HDR and the packet loop.

Reads are taken apart by the Device (`fz_trio.datapath`); this module prepares the writes:
coalescing (the data path's kernel) and the fallback when the kernel refuses a GSO write.
"""

from __future__ import annotations

import errno
import logging
import os

import attrs

from fz_trio.datapath import GSO_NONE, PLAIN_HDR, VnetHeader, kernels, segment
from fz_trio.shell.stats import IoStats
from fz_trio.shell.tun import OffloadMode

log = logging.getLogger(__name__)

WriteItem = tuple[bytes, bytes | bytearray]


@attrs.define
class TunOffload:
    """The active offload mode of one device and what it has done."""

    mode: OffloadMode
    stats: IoStats
    coalescing: bool = True  # until the kernel refuses a GSO write

    def items_for_writer(self, packets: list[bytearray]) -> list[WriteItem]:
        if not self.coalescing:
            return [(PLAIN_HDR, packet) for packet in packets]
        items = kernels.coalesce(packets, self.mode.uso)
        self.stats.tun_super_packets_written += sum(1 for hdr, _ in items if hdr is not PLAIN_HDR)
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
            self.stats.tun_gso_writes_rejected += 1
            return [(PLAIN_HDR, s) for s in segment(VnetHeader.parse(hdr), packet)]
