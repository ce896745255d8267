"""The tunnel's UDP sockets: one IPv4 and one IPv6, on the same port, non-blocking.

Two sockets rather than one dual-stack socket so that an IPv4 endpoint never shows up as an
IPv4-mapped IPv6 address and a host without IPv6 still works.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import sys
import weakref

import attrs
import trio

from fz_trio.datapath import Batch
from fz_trio.shell.stats import IoStats

log = logging.getLogger(__name__)

SO_MARK = getattr(socket, "SO_MARK", 36)
# When the tunnel is saturated its backlog waits in the receiving socket, so the buffer's size is
# the delay under load: 16 MiB (connlib's choice) held ~10 ms at 1.2 Gbit/s; 256 KiB (the kernel
# doubles it) still takes a few GSO bursts and keeps the RTT under load at wireguard-go's
# (docs/performance.md). Drops past it are the kernel's, counted (UdpRcvbufErrors).
SOCKET_BUFFER_BYTES = 256 * 1024
# ... except under a handshake flood: a GRO read of one is ~10 KB of datagrams in an skb several
# times that size, so 256 KiB holds a few of them and data arriving behind them is dropped
# whenever the loop is busy for a millisecond. Flood reads are drained in microseconds each, so
# a larger buffer costs no delay; it is set while under load and undone after.
UNDER_LOAD_BUFFER_BYTES = 1024 * 1024


class UdpError(Exception):
    pass


@attrs.define
class UdpSockets:
    v4: socket.socket | None
    v6: socket.socket | None
    port: int

    def for_host(self, host: str) -> socket.socket | None:
        return self.v6 if ":" in host else self.v4

    def all(self) -> list[socket.socket]:
        return [s for s in (self.v4, self.v6) if s is not None]

    def close(self) -> None:
        """Close both sockets (again: nothing)."""
        for sock in self.all():
            if sock.fileno() == -1:
                continue
            try:
                trio.lowlevel.notify_closing(sock)  # wakes a task waiting on it, if any
            except RuntimeError:
                pass  # not in a Trio run: nobody can be waiting
            sock.close()


def _set_buffer(sock: socket.socket, option: int, nbytes: int) -> None:
    try:
        # SO_*BUFFORCE ignores rmem_max/wmem_max when we are root; fall back if refused.
        force = {socket.SO_SNDBUF: 32, socket.SO_RCVBUF: 33}[option]
        sock.setsockopt(socket.SOL_SOCKET, force, nbytes)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, nbytes)


def set_receive_buffer(udp: UdpSockets, nbytes: int) -> None:
    """SO_RCVBUF of both sockets (what the kernel grants: rmem_max bounds it without
    CAP_NET_ADMIN)."""
    for sock in udp.all():
        if sock.fileno() != -1:
            _set_buffer(sock, socket.SO_RCVBUF, nbytes)


def _tune(sock: socket.socket, fwmark: int | None) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        _set_buffer(sock, option, SOCKET_BUFFER_BYTES)
    if fwmark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
    sock.setblocking(False)


def set_fwmark(udp: UdpSockets, fwmark: int) -> None:
    """Mark what the sockets send (0: unmarked); OSError when the kernel refuses."""
    for sock in udp.all():
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)


def open_udp(listen_port: int | None, *, fwmark: int | None = None) -> UdpSockets:
    """Bind both families to `listen_port` (0/None: the kernel picks one, shared by both)."""
    port = listen_port or 0
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        v4.bind(("0.0.0.0", port))
        _tune(v4, fwmark)
    except OSError as e:
        v4.close()
        raise UdpError(f"cannot bind UDP port {port}: {e.strerror}") from e
    port = v4.getsockname()[1]
    v6: socket.socket | None = None
    try:
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::", port))
        _tune(v6, fwmark)
    except OSError as e:
        if v6 is not None:
            v6.close()
        v6 = None
        if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            log.warning("no IPv6 UDP socket on port %d: %s", port, e.strerror)
    return UdpSockets(v4, v6, port)


# --- UDP GSO (send) and GRO (receive) -----------------------------------------------------------
# Not in Python 3.11's socket module; values from linux/udp.h.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
_SEGMENT = struct.Struct("=H")
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams of one flow; False where unsupported."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


def send_segments(sock: socket.socket, data: memoryview, segment_size: int, count: int,
                  endpoint: tuple[str, int]) -> None:
    """Send `count` datagrams laid back to back in `data` with one sendmsg (UDP_SEGMENT).

    Raises BlockingIOError when the socket buffer is full, OSError when the kernel refuses GSO.
    """
    if count == 1:
        sock.sendto(data, endpoint)
    else:
        sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segment_size))], 0, endpoint)


def receive_segments(sock: socket.socket, buffer: bytearray) -> tuple[int, int, tuple[str, int]]:
    """One recvmsg into `buffer`: (bytes, segment size, source). With GRO the bytes may hold many
    datagrams of `segment size` (the last one shorter); without it, segment size = bytes."""
    nbytes, ancdata, _flags, source = sock.recvmsg_into([buffer], _GRO_CMSG_SPACE)
    segment = nbytes
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            segment = int.from_bytes(data[:4], sys.byteorder) or nbytes
    return nbytes, segment, source


_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)


@attrs.define
class BatchSender:
    """Sends the core's GSO batches: one sendmsg each while the kernel accepts UDP_SEGMENT,
    one sendto per datagram after it refused (the fallback is counted and logged once)."""

    stats: IoStats
    gso: bool = True  # False from the kernel's first refusal on (or from the start: --no-gso)
    # Several tasks send on one socket (readers, timers, handshakes) and Trio lets only one of
    # them wait for it to become writable: the others queue here instead of failing.
    _waits: weakref.WeakKeyDictionary[socket.socket, trio.Lock] = attrs.Factory(
        weakref.WeakKeyDictionary)

    async def send(self, sock: socket.socket, batch: Batch) -> None:
        while self.gso or batch.count == 1:
            try:
                send_segments(sock, batch.data, batch.segment_size, batch.count, batch.endpoint)
                if batch.count > 1:
                    self.stats.udp_gso_sends += 1
                else:
                    self.stats.udp_plain_sends += 1
                return
            except BlockingIOError:
                if not await self._writable(sock):  # backpressure: the kernel queue is full
                    self.stats.error("udp_send", errno.EBADF, batch.count)
                    return
            except OSError as e:
                if batch.count > 1 and e.errno in _GSO_REFUSED:
                    log.warning("the kernel refused UDP GSO (%s); sending datagrams one by one",
                                e.strerror)
                    self.gso = False
                    self.stats.udp_gso_fallbacks += 1
                    break
                self.stats.error("udp_send", e.errno, batch.count)
                return
        for datagram in batch.datagrams():
            while True:
                try:
                    sock.sendto(datagram, batch.endpoint)
                    self.stats.udp_plain_sends += 1
                    break
                except BlockingIOError:
                    if not await self._writable(sock):
                        self.stats.error("udp_send", errno.EBADF)
                        return
                except OSError as e:
                    self.stats.error("udp_send", e.errno)
                    break


    async def _writable(self, sock: socket.socket) -> bool:
        """Wait until `sock` can take more; False when it was closed meanwhile (a new listen
        port replaced it)."""
        lock = self._waits.get(sock)
        if lock is None:
            lock = self._waits[sock] = trio.Lock()
        try:
            async with lock:
                await trio.lowlevel.wait_writable(sock)
        except trio.ClosedResourceError:
            return False
        return True
