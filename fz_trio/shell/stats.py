"""One interface's statistics, one object: what the protocol did, the data path, and the IO.

The core reports into `protocol` (its `Counters`), the data path into `datapath`, the shell's
loops, sockets and TUN writers into `io`; the REPL shows the object and `fz-trio up` logs it as
one JSON line when it stops. The shell never writes into the core's counters: an IO error is
the shell's to count, a drop the protocol decided is the core's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from fz_trio.core import Counters
from fz_trio.datapath import DataPathStats


@attrs.define
class IoStats:
    """What the IO shell did: reads, sends, offload fallbacks, and the errors the kernel gave."""

    udp_receive_calls: int = 0
    udp_datagrams_received: int = 0
    udp_gso_sends: int = 0  # sendmsg calls carrying more than one datagram
    udp_plain_sends: int = 0
    udp_gso_fallbacks: int = 0
    tun_batches_read: int = 0
    tun_packets_read: int = 0
    tun_super_packets_written: int = 0
    tun_gso_writes_rejected: int = 0
    uapi_gets: int = 0
    uapi_sets: int = 0  # applied; refused ones are errors "uapi_errno_N"
    # "udp_send", "udp_receive", "tun_read", "tun_write", "no_socket_for_family", "uapi"
    # (+ errno), and the UAPI server's "uapi_too_many_connections", "uapi_closed_bad_request"
    errors: Counter[str] = attrs.Factory(Counter)

    def error(self, where: str, errno: int | None = None, count: int = 1) -> None:
        self.errors[where if errno is None else f"{where}_errno_{errno}"] += count


@attrs.define
class InterfaceStats:
    protocol: Counters
    datapath: DataPathStats
    io: IoStats = attrs.Factory(IoStats)

    def as_dict(self) -> dict[str, Any]:
        io = attrs.asdict(self.io)
        io["errors"] = dict(self.io.errors)
        return {"protocol": self.protocol.as_dict(), "datapath": attrs.asdict(self.datapath),
                "io": io}
