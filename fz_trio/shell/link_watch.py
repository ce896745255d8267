"""Follow our own interface through rtnetlink: its MTU changes and its deletion.

A userspace WireGuard must exit when its interface is deleted (`ip link del wg0` is how
`wg-quick down` ends) and must follow an MTU that someone else sets (`wg-quick` runs
`ip link set mtu` after the implementation has started, and the data path pads to the MTU).

The kernel announces both on the rtnetlink multicast group RTMGRP_LINK, so we subscribe a raw
`AF_NETLINK`/`NETLINK_ROUTE` socket to it and sleep in `trio.lowlevel.wait_readable` until it has
something: no polling, and a quiet link costs nothing. We use the standard `socket` module and parse
the few structures ourselves: pyroute2's async API is asyncio-only, and its sync one would need a
thread per watcher.

What can go wrong, and what we do about it:

- The link may be deleted before we are subscribed (between opening the TUN and binding the socket).
  After binding, we ask the kernel for the link once (RTM_GETLINK by index); anything that happens
  later is queued on the socket, so no deletion falls between the two.
- The kernel drops notifications when the socket's receive buffer is full and then fails the next
  recv with ENOBUFS. Anything may be lost, including the deletion, so we throw away what is still
  queued (all of it older than the overflow) and ask the kernel for the link's state again.
- A datagram that does not parse (it never happens with a real kernel, but a length field must never
  make us raise) is skipped message by message: `parse_link_events` is pure and bounds-checks every
  length.

Everything works on the network namespace of the calling thread, like the TUN device itself; the
helpers use netlink or ioctls, never /sys, whose view is that of the namespace sysfs was mounted in.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from types import TracebackType

import attrs
import trio

from fz_trio.ifname import check_interface_name

__all__ = [
    "IFLA_IFNAME",
    "IFLA_MTU",
    "LinkEvent",
    "LinkState",
    "LinkWatch",
    "LinkWatchError",
    "RTMGRP_LINK",
    "RTM_DELLINK",
    "RTM_GETLINK",
    "RTM_NEWLINK",
    "link_index",
    "link_mtu",
    "parse_link_events",
    "query_link",
    "watch_link",
]

log = logging.getLogger(__name__)

# linux/netlink.h and linux/rtnetlink.h
RTMGRP_LINK = 0x1
NLMSG_ERROR = 2
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
NLM_F_REQUEST = 0x1
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute's type
# linux/if_link.h
IFLA_IFNAME = 3
IFLA_MTU = 4
# linux/sockios.h
SIOCGIFMTU = 0x8921

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # len, type
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_IFREQ_INT = struct.Struct("16si20x")  # struct ifreq with an int member (ifr_mtu), 40 bytes

# A link notification for one ordinary device is 1-2 KiB; 64 KiB holds any datagram rtnetlink
# sends for a single link (it sizes its skb per message) and we detect truncation anyway.
_RECV_SIZE = 65536
# After an overflow we discard what is queued before asking for the link's state again. The queue
# holds at most one receive buffer's worth, so this bound is only hit under an endless flood of link
# events, and then we re-check anyway.
_MAX_DISCARD = 10000
_QUERY_TIMEOUT = 2.0  # seconds; the kernel answers RTM_GETLINK within the send() itself


def _align4(n: int) -> int:
    # NLMSG_ALIGN and RTA_ALIGN are both 4.
    return (n + 3) & ~3


class LinkWatchError(Exception):
    """The kernel refused the netlink socket or a link query; the message says which step."""


@attrs.frozen
class LinkEvent:
    """One RTM_NEWLINK or RTM_DELLINK notification about a link (family AF_UNSPEC)."""

    deleted: bool  # RTM_DELLINK: the link is gone from this namespace (deleted or moved away)
    index: int
    flags: int  # the link's IFF_* flags
    mtu: int | None  # IFLA_MTU, when the message carries it
    ifname: str | None  # IFLA_IFNAME, when the message carries it


@attrs.frozen
class LinkState:
    """What the kernel says about a link right now (the answer to RTM_GETLINK)."""

    index: int
    ifname: str | None
    mtu: int | None
    flags: int


# -- the pure parser ---------------------------------------------------------------------------
def _messages(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(type, seq, payload) of each netlink message in one datagram, stopping at the first bad one.

    A message whose length field is too small or runs past the datagram ends the walk: after it,
    nothing says where the next message starts.
    """
    view = memoryview(data)
    off = 0
    while off + _NLMSGHDR.size <= len(view):
        length, msg_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(view, off)
        if length < _NLMSGHDR.size or off + length > len(view):
            return
        yield msg_type, seq, view[off + _NLMSGHDR.size : off + length]
        off += _align4(length)


def _parse_ifinfo(msg_type: int, payload: memoryview) -> LinkEvent | None:
    """The link event in one RTM_NEWLINK/RTM_DELLINK payload, or None when it is malformed or not
    about a link as such (bridge-port notifications use family AF_BRIDGE on the same group, and
    their RTM_DELLINK only means that the port left its bridge)."""
    if len(payload) < _IFINFOMSG.size:
        return None
    family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload, 0)
    if family != socket.AF_UNSPEC:
        return None
    mtu: int | None = None
    ifname: str | None = None
    off = _IFINFOMSG.size
    while off + _RTATTR.size <= len(payload):
        rta_len, rta_type = _RTATTR.unpack_from(payload, off)
        if rta_len < _RTATTR.size or off + rta_len > len(payload):
            return None
        value = payload[off + _RTATTR.size : off + rta_len]
        rta_type &= NLA_TYPE_MASK
        if rta_type == IFLA_MTU:
            if len(value) < _U32.size:
                return None
            (mtu,) = _U32.unpack_from(value, 0)
        elif rta_type == IFLA_IFNAME:
            raw = bytes(value).split(b"\0", 1)[0]
            ifname = raw.decode("utf-8", errors="surrogateescape")
        off += _align4(rta_len)
    # Fewer than 4 bytes left over are only the padding of the last attribute; more would have
    # been read as one.
    return LinkEvent(
        deleted=(msg_type == RTM_DELLINK), index=index, flags=flags, mtu=mtu, ifname=ifname
    )


def parse_link_events(data: bytes | bytearray | memoryview, ifindex: int | None) -> list[LinkEvent]:
    """The link events in one rtnetlink datagram, for link `ifindex` only (None: every link).

    Pure and total: truncated or malformed messages are skipped (a bad length ends the datagram,
    since nothing then says where the next message starts); this never raises on any input.
    Messages other than RTM_NEWLINK/RTM_DELLINK of family AF_UNSPEC are ignored.
    """
    events: list[LinkEvent] = []
    for msg_type, _seq, payload in _messages(data):
        if msg_type not in (RTM_NEWLINK, RTM_DELLINK):
            continue
        event = _parse_ifinfo(msg_type, payload)
        if event is not None and (ifindex is None or event.index == ifindex):
            events.append(event)
    return events


# -- sync helpers --------------------------------------------------------------------------------
def _netlink_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except OSError as exc:
        raise LinkWatchError(f"cannot open a rtnetlink socket: {exc.strerror}") from exc


def query_link(ifindex: int) -> LinkState | None:
    """Ask the kernel (RTM_GETLINK) about link `ifindex`; None when there is no such link.

    Blocking in principle, instant in practice: the kernel handles the request inside send() and
    the answer is already queued when recv() runs, so this is safe to call from a Trio task.
    Raises LinkWatchError when the kernel refuses the query itself.
    """
    if not 0 < ifindex < 2**31:
        return None  # the kernel never hands out such an index; it would reject the request
    with _netlink_socket() as sock:
        sock.settimeout(_QUERY_TIMEOUT)
        seq = 1
        request = _NLMSGHDR.pack(
            _NLMSGHDR.size + _IFINFOMSG.size, RTM_GETLINK, NLM_F_REQUEST, seq, 0
        ) + _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
        try:
            sock.bind((0, 0))
            sock.send(request)
            buf = bytearray(_RECV_SIZE)
            while True:
                n = sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
                for msg_type, msg_seq, payload in _messages(buf[: min(n, len(buf))]):
                    if msg_seq != seq:
                        continue
                    if msg_type == NLMSG_ERROR and len(payload) >= _I32.size:
                        (err,) = _I32.unpack_from(payload, 0)
                        if -err == errno.ENODEV:
                            return None
                        if err != 0:
                            raise LinkWatchError(
                                f"RTM_GETLINK for link {ifindex}: {os.strerror(-err)}"
                            )
                    elif msg_type == RTM_NEWLINK:
                        event = _parse_ifinfo(msg_type, payload)
                        if event is not None and event.index == ifindex:
                            return LinkState(ifindex, event.ifname, event.mtu, event.flags)
                if n > len(buf):
                    raise LinkWatchError(f"RTM_GETLINK for link {ifindex}: answer truncated")
        except OSError as exc:
            raise LinkWatchError(f"RTM_GETLINK for link {ifindex}: {exc}") from exc


def link_index(ifname: str) -> int | None:
    """The index of interface `ifname` in this namespace, or None when there is none."""
    try:
        check_interface_name(ifname)
        return socket.if_nametoindex(ifname)
    except (OSError, ValueError):
        return None


def link_mtu(ifname: str) -> int:
    """The MTU of interface `ifname` (SIOCGIFMTU). Raises OSError (ENODEV) when there is none."""
    try:
        raw = check_interface_name(ifname)
    except ValueError as exc:
        raise OSError(errno.ENODEV, str(exc)) from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifr = fcntl.ioctl(sock, SIOCGIFMTU, _IFREQ_INT.pack(raw, 0))
    mtu: int = _IFREQ_INT.unpack(ifr)[1]
    return mtu


# -- the watcher -----------------------------------------------------------------------------------
class LinkWatch:
    """A subscription to link `ifindex`'s notifications; `watch_link` is the usual way to use it.

    open() subscribes and checks that the link still exists; run() then follows it: it calls
    `on_mtu(mtu)` whenever the MTU differs from the last one seen, and returns when the link is
    gone. `on_mtu` runs synchronously in the watching task and must not block.

    `rcvbuf` sets the socket's receive buffer (SO_RCVBUF; the kernel doubles it and enforces a
    minimum); the default is the kernel's, which is plenty for link events. `overruns` counts the
    times the kernel dropped notifications (ENOBUFS) and we re-checked the link.
    """

    def __init__(
        self, ifindex: int, *, on_mtu: Callable[[int], None], rcvbuf: int | None = None
    ) -> None:
        self.ifindex = ifindex
        self.on_mtu = on_mtu
        self.rcvbuf = rcvbuf
        self.mtu: int | None = None  # the last MTU seen (and reported to on_mtu)
        self.gone = False
        self.overruns = 0
        self.skipped_truncated = 0  # datagrams longer than our buffer (never for a TUN device)
        self._sock: socket.socket | None = None
        self._buf = bytearray(_RECV_SIZE)

    # -- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> LinkWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket. Idempotent. Only call it when run() is not waiting on it."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # -- subscribe -------------------------------------------------------------------------------
    def open(self) -> LinkState | None:
        """Subscribe to RTMGRP_LINK, then look the link up: its state, or None when it is gone.

        The order matters: once bound, every later change is queued on our socket, so a deletion
        either shows in this lookup or arrives as an event; none can fall between the two.
        Sets `mtu` to the current MTU without calling on_mtu (watch_link reports it).
        """
        if self._sock is not None:
            raise LinkWatchError("LinkWatch.open() was already called")
        sock = _netlink_socket()
        try:
            if self.rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise LinkWatchError(f"cannot subscribe to link notifications: {exc}") from exc
        self._sock = sock
        state = query_link(self.ifindex)
        if state is None:
            self.gone = True
        else:
            self.mtu = state.mtu
        return state

    # -- follow ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the link until it is gone, then return (at once if it already is)."""
        sock = self._sock
        if sock is None:
            raise LinkWatchError("LinkWatch.run() before open()")
        while not self.gone:
            await trio.lowlevel.wait_readable(sock)
            try:
                n = sock.recv_into(self._buf, len(self._buf), socket.MSG_TRUNC)
            except BlockingIOError:
                continue  # woken for nothing (someone else read it, or a spurious wakeup)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise LinkWatchError(f"reading link notifications: {exc}") from exc
                self._resync(sock)
                continue
            if n > len(self._buf):
                # Part of the datagram was cut off: it may have held our event. Treat it like lost
                # events (this is about other, much larger links; a TUN's message is ~1 KiB).
                self.skipped_truncated += 1
                self._resync(sock)
                continue
            for event in parse_link_events(memoryview(self._buf)[:n], self.ifindex):
                self._apply(event)
                if self.gone:
                    break

    def _apply(self, event: LinkEvent) -> None:
        if event.deleted:
            self.gone = True
            log.debug("link %d (%s) is gone", self.ifindex, event.ifname)
        elif event.mtu is not None:
            self._set_mtu(event.mtu)

    def _set_mtu(self, mtu: int) -> None:
        if mtu != self.mtu:
            self.mtu = mtu
            self.on_mtu(mtu)

    def _resync(self, sock: socket.socket) -> None:
        """Notifications were lost: discard the stale ones still queued and look the link up.

        What is queued predates the overflow; replaying it after the lookup would leave us with
        an old MTU. Events queued after the lookup are newer than it and are handled as usual.
        """
        self.overruns += 1
        for _ in range(_MAX_DISCARD):
            try:
                sock.recv_into(self._buf, len(self._buf), socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise LinkWatchError(f"reading link notifications: {exc}") from exc
        state = query_link(self.ifindex)
        log.debug("link %d: notifications were lost; now %s", self.ifindex, state)
        if state is None:
            self.gone = True
        elif state.mtu is not None:
            self._set_mtu(state.mtu)


async def watch_link(
    ifindex: int,
    on_mtu: Callable[[int], None],
    *,
    task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow link `ifindex`; return when it is deleted (or moved to another namespace).

    Subscribes first, then calls `on_mtu` once with the link's current MTU, so a change made
    before the subscription is not missed either; after that, `on_mtu(mtu)` whenever the MTU
    changes. `task_status.started()` gets that first MTU, or None when the link was already gone
    (and then this returns at once). Returning normally always means "the link is gone": the
    caller cancels what belongs to the interface. Raises LinkWatchError if netlink fails.

    `on_mtu` may be given by position, for `nursery.start(watch_link, index, on_mtu)` (Trio's
    start() passes no keyword arguments).
    """
    with LinkWatch(ifindex, on_mtu=on_mtu) as watch:
        state = watch.open()
        if state is None:
            task_status.started(None)
            return
        if watch.mtu is not None:
            on_mtu(watch.mtu)
        task_status.started(watch.mtu)
        await watch.run()
