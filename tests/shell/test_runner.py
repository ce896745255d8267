"""The packet loops' own bookkeeping, on real sockets (the loops themselves run in the
interop tests, against real TUN devices and peers)."""

from __future__ import annotations

import socket
from typing import Any, cast

from fz_trio.datapath import Device
from fz_trio.shell.runner import PacketLoops
from fz_trio.shell.stats import IoStats
from fz_trio.shell.udp import UNDER_LOAD_BUFFER_BYTES, BatchSender, open_udp


def _receive_buffer(sock: socket.socket | None) -> int:
    assert sock is not None
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


async def test_new_sockets_get_the_flood_buffer_while_under_load() -> None:
    stats = IoStats()
    old, new = open_udp(0), open_udp(0)
    try:
        loops = PacketLoops(Device(None), cast(Any, None), old, BatchSender(stats), stats)
        loops._under_load_since = 1.0  # a handshake flood began before the port changed
        assert await loops.replace_udp(new) is old
        assert loops.udp is new
        # The kernel doubles what it is asked for (and reports the doubled value).
        assert _receive_buffer(new.v4) >= UNDER_LOAD_BUFFER_BYTES
        assert new.v6 is None or _receive_buffer(new.v6) >= UNDER_LOAD_BUFFER_BYTES
    finally:
        old.close()
        new.close()
