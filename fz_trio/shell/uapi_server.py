"""The UAPI socket: `/var/run/wireguard/IFACE.sock`, where `wg`, `wg-quick` and `fz-trio show`
talk to a running interface (wireguard.com/xplatform).

A small Trio listener: each connection's bytes go through `fz_trio.uapi.RequestReader`, each
request to the app's handler, each reply back. Permissions are wireguard-go's: the directory
0755, the socket itself root-only (created under umask 077). A socket file left by a process
that died is replaced; one that still answers means another process serves the interface, and
starting fails. The socket is removed on the way out (cancellation included), unless another
process has replaced it meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable

import attrs
import trio

from fz_trio.uapi import CLOSE, SOCKET_DIR, Request, RequestReader, UapiError, socket_path

log = logging.getLogger(__name__)

# A connection is one `wg` command; more at once than this are refused (closed at once), so a
# local client cannot exhaust our descriptors.
MAX_CONNECTIONS = 32
_RECV_BYTES = 65536

Handler = Callable[[Request | UapiError], Awaitable[bytes]]


class UapiServerError(Exception):
    pass


def _claim_path(path: str) -> None:
    """Make room for our socket at `path`: a stale one goes, a live one is another process's."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UapiServerError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise UapiServerError(f"cannot check {path}: {e.strerror}") from e
        os.unlink(path)  # nobody listens: left by a process that died
    else:
        raise UapiServerError(f"{path} is in use: another process serves this interface")
    finally:
        probe.close()


@attrs.define
class UapiListener:
    sock: socket.socket
    path: str
    inode: int  # of the socket file we bound, so close() never removes another process's

    def close(self) -> None:
        self.sock.close()
        try:
            if os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def open_listener(ifname: str) -> UapiListener:
    """Bind and listen on the interface's UAPI socket (blocking, fast; before the loops run)."""
    path = socket_path(ifname)
    try:
        os.makedirs(SOCKET_DIR, mode=0o755, exist_ok=True)
        _claim_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as e:
        raise UapiServerError(f"cannot create {path}: {e.strerror}") from e
    # The socket file takes its mode from the umask at bind(); the umask is process-wide, but
    # nothing else creates files while an interface comes up.
    old_umask = os.umask(0o077)
    try:
        sock.bind(path)
        sock.listen(16)
        inode = os.lstat(path).st_ino
    except OSError as e:
        sock.close()
        raise UapiServerError(f"cannot listen on {path}: {e.strerror}") from e
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return UapiListener(sock, path, inode)


async def serve(listener: UapiListener, handler: Handler, *,
                on_error: Callable[[str], None]) -> None:
    """Accept connections until cancelled; each runs requests through `handler` in order.
    `on_error` counts what was refused (too many connections, a request closed on)."""
    sock = trio.socket.from_stdlib_socket(listener.sock)
    slots = trio.Semaphore(MAX_CONNECTIONS)
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await sock.accept()
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                on_error("too_many_connections")
                conn.close()
                continue
            nursery.start_soon(_serve_connection, conn, handler, slots, on_error)


async def _serve_connection(conn: trio.socket.SocketType, handler: Handler,
                            slots: trio.Semaphore, on_error: Callable[[str], None]) -> None:
    reader = RequestReader()
    try:
        with conn:
            while True:
                try:
                    data = await conn.recv(_RECV_BYTES)
                except OSError:
                    return
                if not data:
                    return
                for event in reader.feed(data):
                    if event is CLOSE:
                        on_error("closed_bad_request")
                        return
                    reply = await handler(event)
                    if not await _send_all(conn, reply):
                        return
    finally:
        slots.release()


async def _send_all(conn: trio.socket.SocketType, data: bytes) -> bool:
    view = memoryview(data)
    while view:
        try:
            sent = await conn.send(view)
        except OSError:  # the client went away before reading its reply
            return False
        view = view[sent:]
    return True
