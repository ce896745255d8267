"""The client side of the UAPI socket, blocking and small: what `fz-trio show` and `fz-trio down`
use to talk to a running interface (fz-trio's, or any other userspace WireGuard's).

`request` is the one exchange: connect to `/var/run/wireguard/IFNAME.sock`, send one request,
read until its reply is complete (`fz_trio.uapi.reply_length`). Everything that goes wrong is a
`UapiClientError` whose `kind` says what happened (the message says it to a person):

- `NOT_RUNNING`: no socket, or a socket nobody listens on (left by a process that died);
- `PERMISSION_DENIED`: the socket is root's (0700), and so the caller must be root;
- `TIMED_OUT`: the server did not answer within the timeout;
- `CLOSED`: the server closed the connection without a (whole) reply — what wireguard-go does
  with an operation it does not know, such as fz-trio's `fz_status=1` and `fz_stop=1`;
- `REFUSED`: the server answered `errno=N` (the error's `errno`);
- `BAD_REPLY`: the reply is not what the protocol says;
- `BAD_NAME`: the kernel would refuse the interface name (so no socket can have it).

`get`, `status`, `stop` and `list_interfaces` are built on it.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from typing import Any, Final

from fz_trio.uapi import (
    SOCKET_DIR,
    DeviceState,
    ExtensionRequest,
    GetRequest,
    UapiError,
    format_request,
    parse_get_reply,
    parse_status_reply,
    reply_errno,
    reply_length,
    socket_path,
)

__all__ = [
    "BAD_NAME",
    "BAD_REPLY",
    "CLOSED",
    "DEFAULT_TIMEOUT",
    "NOT_RUNNING",
    "PERMISSION_DENIED",
    "REFUSED",
    "STOP_WAIT",
    "TIMED_OUT",
    "UapiClientError",
    "get",
    "list_interfaces",
    "request",
    "status",
    "stop",
]

NOT_RUNNING: Final = "not_running"
PERMISSION_DENIED: Final = "permission_denied"
TIMED_OUT: Final = "timed_out"
CLOSED: Final = "closed"
REFUSED: Final = "refused"
BAD_REPLY: Final = "bad_reply"
BAD_NAME: Final = "bad_name"

DEFAULT_TIMEOUT: Final = 5.0
STOP_WAIT: Final = 10.0
# A reply is at most a few hundred bytes a peer; far more than this is not a UAPI server.
MAX_REPLY_BYTES: Final = 64 * 1024 * 1024
_RECV_BYTES: Final = 65536
_POLL: Final = 0.05
_SOCK_SUFFIX: Final = ".sock"
_LIST_TIMEOUT: Final = 1.0


class UapiClientError(Exception):
    """A UAPI exchange that failed; `kind` is one of the module's constants, `errno` the
    server's for REFUSED (else None). The message names the interface, never a key."""

    def __init__(self, ifname: str, kind: str, message: str, errno: int | None = None) -> None:
        super().__init__(ifname, kind, message, errno)
        self.ifname = ifname
        self.kind = kind
        self.message = message
        self.errno = errno

    def __str__(self) -> str:
        return self.message


def _path(ifname: str) -> str:
    try:
        return socket_path(ifname)
    except ValueError as e:
        raise UapiClientError(ifname, BAD_NAME, str(e)) from None


def _connect_error(ifname: str, path: str, e: OSError) -> UapiClientError:
    if isinstance(e, FileNotFoundError | ConnectionRefusedError):
        why = "no such socket" if isinstance(e, FileNotFoundError) else "nobody listens on it"
        return UapiClientError(ifname, NOT_RUNNING,
                               f"interface {ifname} is not running ({path}: {why})")
    if isinstance(e, PermissionError):
        return UapiClientError(ifname, PERMISSION_DENIED,
                               f"permission denied on {path} (its UAPI socket is root's)")
    if isinstance(e, TimeoutError):
        return UapiClientError(ifname, TIMED_OUT, f"interface {ifname} does not answer ({path})")
    return UapiClientError(ifname, NOT_RUNNING, f"cannot connect to {path}: {e.strerror or e}")


def request(ifname: str, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """Send one whole request to interface `ifname` and return its whole reply (ending with
    `errno=N` and the blank line; the errno is not looked at). `timeout` bounds the exchange."""
    path = _path(ifname)
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(remaining())
            sock.connect(path)
        except OSError as e:
            raise _connect_error(ifname, path, e) from None
        reply = bytearray()
        try:
            sock.settimeout(remaining())
            sock.sendall(data)
            length = None
            while length is None:
                if len(reply) > MAX_REPLY_BYTES:
                    raise UapiClientError(ifname, BAD_REPLY,
                                          f"interface {ifname}: the reply is too long")
                sock.settimeout(remaining())
                chunk = sock.recv(_RECV_BYTES)
                if not chunk:
                    raise UapiClientError(ifname, CLOSED, _closed(ifname, reply))
                # Only the new bytes (and the one before them) can complete the blank line,
                # so a long reply is scanned once, not again with every chunk.
                start = max(len(reply) - 1, 0)
                reply += chunk
                tail = reply_length(bytes(reply[start:]))
                length = None if tail is None else start + tail
        except TimeoutError:
            raise UapiClientError(ifname, TIMED_OUT,
                                  f"interface {ifname} did not answer within {timeout:g} s"
                                  ) from None
        except (BrokenPipeError, ConnectionResetError):
            # A server closing with our request unread resets the connection (Linux unix
            # sockets do that), so this is the same as a close without a reply.
            raise UapiClientError(ifname, CLOSED, _closed(ifname, reply)) from None
        except OSError as e:
            raise UapiClientError(ifname, CLOSED,
                                  f"interface {ifname}: {e.strerror or e}") from None
    return bytes(reply[:length])


def _closed(ifname: str, reply: bytearray) -> str:
    part = " (after part of a reply)" if reply else ""
    return f"interface {ifname} closed the connection without a reply{part}"


def _reply_errno(reply: bytes) -> int | None:
    """The N of a reply's closing `errno=N` line, None if it has none (not a UAPI reply)."""
    lines = reply.split(b"\n")
    if len(lines) < 3 or lines[-2:] != [b"", b""]:
        return None
    key, equals, value = lines[-3].partition(b"=")
    if key != b"errno" or not equals:
        return None
    try:
        return reply_errno(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _checked(ifname: str, reply: bytes) -> bytes:
    """`reply` if it ends with errno=0; REFUSED with the server's errno, BAD_REPLY without one."""
    errno = _reply_errno(reply)
    if errno is None:
        raise UapiClientError(ifname, BAD_REPLY,
                              f"interface {ifname}: the reply does not end with errno=N")
    if errno:
        raise UapiClientError(ifname, REFUSED,
                              f"interface {ifname}: the server answered errno={errno} "
                              f"({os.strerror(errno)})", errno=errno)
    return reply


def _bad_reply(ifname: str, e: UapiError) -> UapiClientError:
    return UapiClientError(ifname, BAD_REPLY, f"interface {ifname}: {e.message}")


def get(ifname: str, timeout: float = DEFAULT_TIMEOUT) -> DeviceState:
    """`get=1`: the configuration and peer statistics (what `wg show` prints)."""
    reply = _checked(ifname, request(ifname, format_request(GetRequest()), timeout))
    try:
        return parse_get_reply(reply)
    except UapiError as e:
        raise _bad_reply(ifname, e) from None


def status(ifname: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
    """fz-trio's status object (`fz_status=1`), or None when whatever serves `ifname` does not
    know the extension: wireguard-go closes the connection, and a server answering errno≠0 is
    taken the same way. Other failures raise UapiClientError as `request` does."""
    try:
        reply = _checked(ifname, request(ifname, format_request(ExtensionRequest("status")),
                                         timeout))
    except UapiClientError as e:
        if e.kind in (CLOSED, REFUSED):
            return None
        raise
    try:
        return parse_status_reply(reply)
    except UapiError as e:
        raise _bad_reply(ifname, e) from None


def stop(ifname: str, timeout: float = DEFAULT_TIMEOUT, wait: float = STOP_WAIT) -> None:
    """Ask fz-trio to take `ifname` down and exit (`fz_stop=1`), then wait up to `wait` seconds
    for its socket to go (0: do not wait). A server that does not know the extension gives
    CLOSED (wireguard-go) or REFUSED; a socket still there after `wait` gives TIMED_OUT."""
    path = _path(ifname)
    try:
        inode: int | None = os.lstat(path).st_ino
    except OSError:
        inode = None
    reply = _checked(ifname, request(ifname, format_request(ExtensionRequest("stop")), timeout))
    if reply != b"errno=0\n\n":
        raise UapiClientError(ifname, BAD_REPLY,
                              f"interface {ifname}: a stop reply is errno=0 alone")
    deadline = time.monotonic() + wait
    while _same_socket(path, inode):
        if time.monotonic() >= deadline:
            raise UapiClientError(ifname, TIMED_OUT,
                                  f"interface {ifname} was asked to stop, but {path} is still "
                                  f"there after {wait:g} s")
        time.sleep(_POLL)


def _same_socket(path: str, inode: int | None) -> bool:
    """Whether the socket file we talked to is still there (a new one in its place, a new
    process's, is not)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return inode is None or st.st_ino == inode


def list_interfaces() -> list[str]:
    """The interfaces with a UAPI socket someone listens on, sorted by name (`wg show`'s
    userspace list, which is shared across network namespaces). Stale sockets are skipped,
    not removed; without root nothing answers, so the list is empty."""
    try:
        entries = os.listdir(SOCKET_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError:
        return []
    names = []
    for entry in entries:
        if not entry.endswith(_SOCK_SUFFIX) or len(entry) <= len(_SOCK_SUFFIX):
            continue
        name = entry[:-len(_SOCK_SUFFIX)]
        try:
            path = socket_path(name)
        except ValueError:
            continue
        if _answers(path):
            names.append(name)
    return sorted(names)


def _answers(path: str) -> bool:
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_LIST_TIMEOUT)
        try:
            sock.connect(path)
        except TimeoutError:
            return True  # someone is there, only busy (a full backlog)
        except OSError:
            return False
    return True
