"""WireGuard's cross-platform userspace API (UAPI, wireguard.com/xplatform), sans-IO.

wg(8) configures a userspace implementation through the unix stream socket
`/var/run/wireguard/IFNAME.sock` (`socket_path`). This module is the protocol only: bytes in,
requests out (`RequestReader`, `parse_request`); replies and client requests as bytes
(`format_get`, `format_errno`, `format_set`, ...); replies parsed back on the client side
(`parse_get_reply`). No sockets, no Trio, no clock.

The protocol, as wireguard-go (device/uapi.go) speaks it:

- A connection carries requests one after another. Each starts with an operation line:
  `get=1` (must be followed directly by the blank line), or `set=1` followed by `key=value` lines
  up to a blank line. Any other operation line makes the server close the connection without a
  reply (`CLOSE`). Every reply ends with `errno=N` and a blank line, 0 meaning success.
- set, interface keys (before the first `public_key`): `private_key` (hex; all zeros removes
  the key), `listen_port` (0: a random port), `fwmark` (0 or empty: off), `replace_peers=true`.
- set, peer keys: `public_key` starts a peer block, then `remove=true`, `update_only=true`,
  `preshared_key` (hex; all zeros: none), `endpoint` (`1.2.3.4:51820`, `[fd00::1]:51820`),
  `persistent_keepalive_interval` (seconds, 0: off), `replace_allowed_ips=true`, `allowed_ip`
  (`addr/len`, repeatable), `protocol_version` (only `1`).
- Errors: a line without '=' is EPROTO; an unknown key, a bad value, a flag other than `true`
  is EINVAL; a server that cannot bind `listen_port` or set `fwmark` answers EADDRINUSE.

fz-trio's own operations (extensions; wg(8) never sends them), each followed directly by the
blank line like `get=1`:

- `fz_status=1`: the reply is one line `fz_status=<compact JSON object>`, then `errno=0` and the
  blank line (`format_status`, `parse_status_reply`). The object must never hold key material.
- `fz_stop=1`: ask the daemon to shut down; it replies `errno=0` first.

Where fz-trio deliberately differs from wireguard-go:

- A set is all or nothing. The reader takes the whole request up to its blank line and yields
  either the complete `SetRequest` or the first error in it; the server then applies the request
  entirely or not at all (bind the new port first, and answer EADDRINUSE with nothing changed).
  wireguard-go applies line by line and leaves the rest of a failed request to be misread as
  operations; here the connection stays in step and its next request is read correctly. For the
  same reason a `get=1` (or extension) followed by anything but the blank line is answered
  EINVAL once its own blank line has arrived (wireguard-go looks at one byte only).
- Lines of a set may end in "\\r\\n" (wireguard-go's line scanner drops the "\\r"); operation
  lines may not (wireguard-go closes the connection on `set=1\\r`).
- A line of a request that is not UTF-8 or holds a NUL byte makes that request fail with
  EPROTO; an operation line that is not one of ours (binary garbage included) means CLOSE.
- A line longer than `MAX_LINE` or a request longer than `MAX_REQUEST_BYTES` means CLOSE: nothing
  of that request is applied and the reader stops.
- An unfinished request when the client hangs up is dropped, never applied (wireguard-go applies
  a set cut short by EOF at a line boundary).
- `endpoint` must be an IP literal without a %zone and with a port from 1 (wireguard-go takes a
  zone and port 0, then fails at the socket). `allowed_ip` follows Go's netip.ParsePrefix: an
  explicit length without leading zeros; host bits are masked ("10.0.0.1/24" is 10.0.0.0/24).
  A private key is clamped when read, as wireguard-go does, so `get` shows it clamped.
- Error messages never quote a key (`fz_trio.redact`, the same rule as for config files): the
  values of key lines are never shown; any other value or key name is quoted with every run of
  32 or more base64 characters (a key in either spelling, whole or with a few characters lost)
  replaced and cut to 40 characters, and a value parser's reason is given only for a value
  without such a run. A message is at most 300 characters.
- `allowed_ip=-prefix` (removal, in the newest wireguard-go) is not supported: EINVAL.

How a `SetRequest` is applied, to match wireguard-go (the applier's contract):

1. `private_key`: set it (`bytes(32)`: remove it). A peer whose public key equals the new
   public key is removed. `listen_port`, `fwmark`: rebind / re-mark. `replace_peers`: remove
   every peer. All of this before the peers.
2. Each `PeerChange` in order (one public key may appear in several). A change whose public key
   is the device's own (after step 1) is ignored entirely. `remove`: remove the peer if present,
   nothing else (such a change carries no other field). Else, if the peer is absent:
   `update_only` ignores the change, otherwise the peer is created (with defaults; it starts if
   the device is up). Then `preshared_key` (`bytes(32)`: none), `endpoint`,
   `persistent_keepalive` (turning it on from 0 sends a keepalive at once), then
   `replace_allowed_ips` clears the peer's prefixes, then `allowed_ips` are inserted in order; a
   prefix another peer holds moves to this one.
3. Line order inside a block is kept where it changes the outcome: `replace_allowed_ips` after
   `allowed_ip` lines, or `remove` after other lines, starts a new `PeerChange` for the same key,
   so applying the changes in order gives wireguard-go's result (prefixes taken from another peer
   stay taken). `update_only` anywhere in a block applies to the whole block; the one difference
   left: for an absent peer with `update_only` after `allowed_ip` lines, wireguard-go would move
   those prefixes away from their owner and drop them, fz-trio leaves them with their owner.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Callable
from typing import Any, Final

import attrs

from fz_trio.core import (
    KEY_LEN,
    Endpoint,
    Network,
    clamp,
    decode_hex_key,
    encode_hex_key,
    format_endpoint,
)
from fz_trio.ifname import check_interface_name
from fz_trio.redact import bounded, reason, shown
from fz_trio.values import parse_ip_endpoint, parse_network, parse_uint

__all__ = [
    "CLOSE",
    "EADDRINUSE",
    "EINVAL",
    "EIO",
    "EPROTO",
    "EUNKNOWN",
    "MAX_LINE",
    "MAX_REQUEST_BYTES",
    "SOCKET_DIR",
    "Close",
    "DeviceState",
    "Event",
    "ExtensionRequest",
    "GetRequest",
    "PeerChange",
    "PeerState",
    "Request",
    "RequestReader",
    "SetRequest",
    "UapiError",
    "format_errno",
    "format_get",
    "format_request",
    "format_set",
    "format_status",
    "parse_get_reply",
    "parse_request",
    "parse_status_reply",
    "reply_errno",
    "reply_length",
    "socket_path",
]

# wireguard-go's errno values (ipc/uapi_unix.go). On the wire they are negative, "errno=-22"
# (wireguard-go's IpcError codes are -EINVAL and so on, and wg(8) prints strerror(-N)); here
# they are kept positive, as Python's errno module has them.
EIO: Final = 5
EPROTO: Final = 71
EINVAL: Final = 22
EADDRINUSE: Final = 98
EUNKNOWN: Final = 55  # wireguard-go's "other error" (ENOANO)

SOCKET_DIR: Final = "/var/run/wireguard"

# The longest legitimate line is about 70 bytes (an IPv6 allowed_ip or endpoint), so 4 KiB only
# ever stops garbage. 16 MiB holds `wg setconf` with some 50 000 peers (~300 bytes each).
MAX_LINE: Final = 4096
MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024

MAX_FWMARK: Final = 2**32 - 1
MAX_COUNTER: Final = 2**64 - 1  # tx_bytes, rx_bytes: Go's uint64
MAX_SECONDS: Final = 2**63 - 1  # last_handshake_time_sec: Go's int64

_ZERO_KEY: Final = bytes(KEY_LEN)
_STATUS_OPS: Final = ("status", "stop")


def socket_path(ifname: str) -> str:
    """The UAPI socket of interface `ifname`; ValueError if the kernel would refuse the name
    (which also keeps "/" and ".." out of the path)."""
    check_interface_name(ifname)
    return f"{SOCKET_DIR}/{ifname}.sock"


class UapiError(Exception):
    """A request the server answers with `errno=N`, or a reply that says one (client side).

    `message` is short and never holds a key (`fz_trio.redact.bounded` makes sure); it is for
    logs, the peer only sees the number.
    """

    def __init__(self, errno: int, message: str) -> None:
        message = bounded(message)
        super().__init__(errno, message)  # both in args: the error stays picklable
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (errno={self.errno})"


# --------------------------------------------------------------------------------------------
# Requests.


def _check_key(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, bytes) and len(value) == KEY_LEN):
        raise ValueError(f"{attribute.name} must be {KEY_LEN} bytes")


def _range_check(low: int, high: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be a number from {low} to {high}")

    return check


def _check_endpoint(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    # The same rules as the parser's: what a client may send is what a request may hold.
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int)):
        raise ValueError(f"{attribute.name} must be an (ip, port) tuple")
    try:
        parse_ip_endpoint(format_endpoint(value))
    except ValueError:
        raise ValueError(f"{attribute.name} must be an IP address and a port from 1") from None


def _check_networks(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(
            isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in value):
        raise ValueError(f"{attribute.name} must be a tuple of IP networks")


def _clamp_unless_zero(key: bytes | None) -> bytes | None:
    # wireguard-go clamps a private key as it reads it; the request holds what the device will.
    if key is None or not isinstance(key, bytes) or len(key) != KEY_LEN or key == _ZERO_KEY:
        return key  # wrong types and lengths are for the validator to refuse
    return clamp(key)


def _zero_to_none(key: bytes | None) -> bytes | None:
    # In a get reply an all-zero key means "none"; one spelling keeps equality meaningful.
    return None if key == _ZERO_KEY else key


@attrs.frozen
class GetRequest:
    """`get=1`: the device's configuration and peer statistics."""


@attrs.frozen
class PeerChange:
    """One peer block of a set; see the module docstring for how it is applied."""

    public_key: bytes = attrs.field(validator=_check_key)
    remove: bool = False
    update_only: bool = False
    # None: unchanged; bytes(32): no preshared key.
    preshared_key: bytes | None = attrs.field(default=None, repr=False, validator=_check_key)
    endpoint: Endpoint | None = attrs.field(default=None, validator=_check_endpoint)
    # None: unchanged; 0: off.
    persistent_keepalive: int | None = attrs.field(default=None,
                                                   validator=_range_check(0, 65535))
    replace_allowed_ips: bool = False
    # Inserted in order, after replace_allowed_ips.
    allowed_ips: tuple[Network, ...] = attrs.field(default=(), validator=_check_networks)

    def __attrs_post_init__(self) -> None:
        # A removed peer takes nothing more from its block (wireguard-go makes it a dummy), so
        # a removal carrying changes would say something the device never does.
        if self.remove and (self.preshared_key is not None or self.endpoint is not None
                            or self.persistent_keepalive is not None
                            or self.replace_allowed_ips or self.allowed_ips):
            raise ValueError("a PeerChange that removes the peer carries no other change")


@attrs.frozen
class SetRequest:
    """`set=1`: interface changes, then peer changes in order."""

    # None: unchanged; bytes(32): remove the key. A non-zero key is stored clamped.
    private_key: bytes | None = attrs.field(default=None, repr=False,
                                            converter=_clamp_unless_zero, validator=_check_key)
    # None: unchanged; 0: a random port.
    listen_port: int | None = attrs.field(default=None, validator=_range_check(0, 65535))
    # None: unchanged; 0: off.
    fwmark: int | None = attrs.field(default=None, validator=_range_check(0, MAX_FWMARK))
    replace_peers: bool = False
    peers: tuple[PeerChange, ...] = ()


@attrs.frozen
class ExtensionRequest:
    """fz-trio's own operations: "status" (`fz_status=1`) or "stop" (`fz_stop=1`)."""

    op: str = attrs.field(validator=attrs.validators.in_(_STATUS_OPS))


Request = GetRequest | SetRequest | ExtensionRequest


class Close(enum.Enum):
    """The type of `CLOSE`: the server closes the connection without a reply."""

    CLOSE = "close"


CLOSE: Final = Close.CLOSE

# What RequestReader.feed yields: a request to answer, an error to answer with `errno=N`, or
# CLOSE. Events before a CLOSE are complete requests and are answered before closing.
Event = GetRequest | SetRequest | ExtensionRequest | UapiError | Close


def _parse_true(key: str, value: str) -> bool:
    if value != "true":
        raise UapiError(EINVAL, f"{key}='{shown(value)}': the only value allowed is 'true'")
    return True


def _parse_key_value(key: str, value: str) -> bytes:
    try:
        return decode_hex_key(value)
    except ValueError as e:  # decode_hex_key's messages never quote the text
        raise UapiError(EINVAL, f"invalid {key}: {e}") from None


def _parse_value(key: str, value: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(value)
    except ValueError as e:
        # The parsers quote the value, or pieces of it: their reason only for a value that
        # holds nothing key-like.
        raise UapiError(EINVAL, f"invalid {key}: {reason(value, e)}") from None


def _parse_fwmark(value: str) -> int:
    return 0 if value == "" else parse_uint(value, 0, MAX_FWMARK)


def _parse_port(value: str) -> int:
    return parse_uint(value, 0, 65535)


def _parse_allowed_ip(value: str) -> Network:
    return parse_network(value, strict=True)


@attrs.define
class _Entry:
    """A PeerChange being read."""

    public_key: bytes
    update_only: bool = False
    remove: bool = False
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[Network] = attrs.Factory(list)

    def changes_anything(self) -> bool:
        return (self.preshared_key is not None or self.endpoint is not None
                or self.persistent_keepalive is not None or self.replace_allowed_ips
                or bool(self.allowed_ips))

    def freeze(self) -> PeerChange:
        return PeerChange(
            public_key=self.public_key, remove=self.remove, update_only=self.update_only,
            preshared_key=self.preshared_key, endpoint=self.endpoint,
            persistent_keepalive=self.persistent_keepalive,
            replace_allowed_ips=self.replace_allowed_ips, allowed_ips=tuple(self.allowed_ips))


class _SetBody:
    """The lines of one `set=1`, up to its blank line: a SetRequest or the first error."""

    def __init__(self) -> None:
        self.error: UapiError | None = None
        self.private_key: bytes | None = None
        self.listen_port: int | None = None
        self.fwmark: int | None = None
        self.replace_peers = False
        self.entries: list[_Entry] = []
        self.block: list[_Entry] = []  # the entries of the current public_key block
        self.dummy = False  # the current block said remove=true: the rest of it is ignored

    @staticmethod
    def ends(raw: bytes) -> bool:
        return raw in (b"", b"\r")  # a blank line, after Go's bufio.ScanLines drops the "\r"

    def line(self, raw: bytes) -> None:
        if self.error is not None:
            return  # only the first error is reported; the lines are still consumed
        try:
            self._line(raw)
        except UapiError as e:
            self.error = e

    def finish(self) -> SetRequest | UapiError:
        if self.error is not None:
            return self.error
        return SetRequest(
            private_key=self.private_key, listen_port=self.listen_port, fwmark=self.fwmark,
            replace_peers=self.replace_peers,
            peers=tuple(entry.freeze() for entry in self.entries))

    def _line(self, raw: bytes) -> None:
        raw = raw.removesuffix(b"\r")  # as Go's bufio.ScanLines
        if b"\0" in raw:
            raise UapiError(EPROTO, "a line holds a NUL byte")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UapiError(EPROTO, "a line is not UTF-8 text") from None
        key, equals, value = text.partition("=")
        if not equals:
            raise UapiError(EPROTO, "a line without '='")  # never quoted: it may be a key
        if key == "public_key":
            self._start_block(_parse_key_value(key, value))
        elif not self.block:
            self._interface_line(key, value)
        else:
            self._peer_line(key, value)

    def _interface_line(self, key: str, value: str) -> None:
        if key == "private_key":
            self.private_key = _clamp_unless_zero(_parse_key_value(key, value))
        elif key == "listen_port":
            self.listen_port = _parse_value(key, value, _parse_port)
        elif key == "fwmark":
            self.fwmark = _parse_value(key, value, _parse_fwmark)
        elif key == "replace_peers":
            self.replace_peers = _parse_true(key, value)
        else:
            raise UapiError(EINVAL, f"unknown interface key '{shown(key)}'")

    def _start_block(self, public_key: bytes) -> None:
        entry = _Entry(public_key)
        self.entries.append(entry)
        self.block = [entry]
        self.dummy = False

    def _split(self, **fields: Any) -> _Entry:
        """A new entry for the current key, after the current one: lines that wireguard-go
        applies after what the block has changed so far."""
        entry = _Entry(self.block[0].public_key, update_only=self.block[0].update_only, **fields)
        self.entries.append(entry)
        self.block.append(entry)
        return entry

    def _peer_line(self, key: str, value: str) -> None:
        # Every value is checked even in a removed block: wireguard-go refuses a bad one there.
        current = self.block[-1]
        if key == "remove":
            _parse_true(key, value)
            if self.dummy:
                return
            if current.changes_anything():
                self._split(remove=True)
            else:
                current.remove = True
            self.dummy = True
        elif key == "update_only":
            _parse_true(key, value)
            if not self.dummy:
                for entry in self.block:
                    entry.update_only = True
        elif key == "preshared_key":
            psk = _parse_key_value(key, value)
            if not self.dummy:
                current.preshared_key = psk
        elif key == "endpoint":
            endpoint = _parse_value(key, value, parse_ip_endpoint)
            if not self.dummy:
                current.endpoint = endpoint
        elif key == "persistent_keepalive_interval":
            seconds = _parse_value(key, value, _parse_port)
            if not self.dummy:
                current.persistent_keepalive = seconds
        elif key == "replace_allowed_ips":
            _parse_true(key, value)
            if self.dummy:
                return
            if current.allowed_ips:
                self._split(replace_allowed_ips=True)
            else:
                current.replace_allowed_ips = True
        elif key == "allowed_ip":
            network = _parse_value(key, value, _parse_allowed_ip)
            if not self.dummy:
                current.allowed_ips.append(network)
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(EINVAL, f"protocol_version='{shown(value)}': only 1 is known")
        else:
            raise UapiError(EINVAL, f"unknown peer key '{shown(key)}'")


class _EmptyBody:
    """The body of `get=1` and the extensions: nothing but the blank line."""

    def __init__(self, request: GetRequest | ExtensionRequest, op: str) -> None:
        self.request = request
        self.op = op
        self.error: UapiError | None = None

    @staticmethod
    def ends(raw: bytes) -> bool:
        return not raw  # wireguard-go wants "\n" right after the operation, not "\r\n"

    def line(self, raw: bytes) -> None:
        if self.error is None:
            self.error = UapiError(EINVAL, f"{self.op} must be followed by a blank line")

    def finish(self) -> GetRequest | ExtensionRequest | UapiError:
        return self.error if self.error is not None else self.request


_Body = _SetBody | _EmptyBody

_EMPTY_OPS: Final[dict[bytes, Callable[[], GetRequest | ExtensionRequest]]] = {
    b"get=1": GetRequest,
    b"fz_status=1": lambda: ExtensionRequest("status"),
    b"fz_stop=1": lambda: ExtensionRequest("stop"),
}


class RequestReader:
    """Requests from the bytes of one connection, as they arrive.

    `feed` returns the events completed by the new bytes, in order. After a CLOSE the reader
    is `closed` (`close_reason` says why, for the log) and `feed` returns nothing more.
    At EOF an unfinished request is simply dropped (`pending` says whether there was one).
    """

    def __init__(self, *, max_line: int = MAX_LINE,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.max_line = max_line
        self.max_request_bytes = max_request_bytes
        self.closed = False
        self.close_reason: str | None = None
        self._buffer = bytearray()
        self._scanned = 0  # no newline in _buffer before this offset
        self._body: _Body | None = None  # None: the next line is an operation
        self._request_bytes = 0  # of the current request, complete lines only

    @property
    def pending(self) -> bool:
        """Whether part of a request has arrived but not its end."""
        return not self.closed and (self._body is not None or bool(self._buffer))

    def feed(self, data: bytes) -> list[Event]:
        if self.closed:
            return []
        self._buffer += data
        events: list[Event] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                # Checked before the newline comes, so a peer sending no newline cannot make
                # the buffer grow without bound.
                rest = len(self._buffer) - start
                if rest > self.max_line:
                    events.append(self._close("a line is too long"))
                elif self._request_bytes + rest > self.max_request_bytes:
                    events.append(self._close("the request is too long"))
                break
            if end - start > self.max_line:
                events.append(self._close("a line is too long"))
                break
            self._request_bytes += end + 1 - start
            if self._request_bytes > self.max_request_bytes:
                events.append(self._close("the request is too long"))
                break
            event = self._line(bytes(self._buffer[start:end]))
            start = self._scanned = end + 1
            if event is not None:
                events.append(event)
                if event is CLOSE:
                    break
        if self.closed:
            self._buffer.clear()
            self._body = None
        else:
            del self._buffer[:start]
            self._scanned = len(self._buffer)
        return events

    def _close(self, reason: str) -> Close:
        self.closed = True
        self.close_reason = reason
        return CLOSE

    def _line(self, line: bytes) -> Event | None:
        body = self._body
        if body is None:
            if line == b"set=1":
                self._body = _SetBody()
            elif line in _EMPTY_OPS:
                self._body = _EmptyBody(_EMPTY_OPS[line](), line.decode("ascii"))
            else:
                return self._close("an unknown operation")
            return None
        if not body.ends(line):
            body.line(line)
            return None
        self._body = None
        self._request_bytes = 0
        return body.finish()


def parse_request(data: bytes) -> Request:
    """Exactly one whole request (its blank line included); UapiError for what the server
    would answer with an errno, and EPROTO for what it would close the connection on, for an
    unfinished request, or for bytes after the request."""
    reader = RequestReader()
    events = reader.feed(data)
    if not events:
        raise UapiError(EPROTO, "an unfinished request")
    event = events[0]
    if isinstance(event, Close):
        raise UapiError(EPROTO, reader.close_reason or "the connection would be closed")
    if len(events) > 1 or reader.pending:
        raise UapiError(EPROTO, "data after the request")
    if isinstance(event, UapiError):
        raise event
    return event


# --------------------------------------------------------------------------------------------
# What the client sends.


def format_set(request: SetRequest) -> bytes:
    """The bytes of `request` on the wire, in wg(8)'s order; `parse_request` gives it back."""
    lines = ["set=1"]
    if request.private_key is not None:
        lines.append(f"private_key={encode_hex_key(request.private_key)}")
    if request.listen_port is not None:
        lines.append(f"listen_port={request.listen_port}")
    if request.fwmark is not None:
        lines.append(f"fwmark={request.fwmark}")
    if request.replace_peers:
        lines.append("replace_peers=true")
    for peer in request.peers:
        lines.append(f"public_key={encode_hex_key(peer.public_key)}")
        # update_only and remove first: in wireguard-go they act on what follows them.
        if peer.update_only:
            lines.append("update_only=true")
        if peer.remove:
            lines.append("remove=true")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={encode_hex_key(peer.preshared_key)}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        if peer.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        if peer.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={network}" for network in peer.allowed_ips)
    return ("\n".join(lines) + "\n\n").encode("ascii")


def format_request(request: Request) -> bytes:
    """Any request as the client sends it."""
    if isinstance(request, SetRequest):
        return format_set(request)
    if isinstance(request, GetRequest):
        return b"get=1\n\n"
    return f"fz_{request.op}=1\n\n".encode("ascii")


# --------------------------------------------------------------------------------------------
# Replies.


def format_errno(errno: int) -> bytes:
    """The whole reply of a request that failed (or, with 0, of a set that worked): `errno=-N`,
    negative as wireguard-go sends it, so that wg(8) names the error."""
    if isinstance(errno, bool) or not isinstance(errno, int) or errno < 0:
        raise ValueError("errno must be a number from 0")
    return f"errno={-errno}\n\n".encode("ascii")


def reply_errno(value: str) -> int:
    """The errno of a reply's `errno=` value, positive: "-22" (wireguard-go, us) and "22"
    (lenient) are both EINVAL. ValueError if it is no number."""
    return parse_uint(value.removeprefix("-"), 0, 2**31 - 1)


@attrs.frozen
class PeerState:
    """One peer as `get` reports it."""

    public_key: bytes = attrs.field(validator=_check_key)
    # None: no preshared key (printed as 64 zeros, like wireguard-go; bytes(32) means the same).
    preshared_key: bytes | None = attrs.field(repr=False, converter=_zero_to_none,
                                              validator=_check_key)
    # Not checked like a request's: it is whatever the socket reported (perhaps with a %zone).
    endpoint: Endpoint | None
    # Wall clock (seconds, nanoseconds) of the last handshake; (0, 0): never.
    last_handshake: tuple[int, int] = attrs.field()
    tx_bytes: int = attrs.field(validator=_range_check(0, MAX_COUNTER))
    rx_bytes: int = attrs.field(validator=_range_check(0, MAX_COUNTER))
    persistent_keepalive: int = attrs.field(validator=_range_check(0, 65535))  # 0: off
    allowed_ips: tuple[Network, ...] = attrs.field(validator=_check_networks)

    @last_handshake.validator
    def _check_last_handshake(self, _attribute: attrs.Attribute[Any],
                              value: tuple[int, int]) -> None:
        seconds, nanoseconds = value
        if not (0 <= seconds <= MAX_SECONDS and 0 <= nanoseconds < 1_000_000_000):
            raise ValueError("last_handshake must be (seconds, nanoseconds below 10**9)")


@attrs.frozen
class DeviceState:
    """The device as `get` reports it."""

    # None: no private key (the line is left out); bytes(32) means the same.
    private_key: bytes | None = attrs.field(repr=False, converter=_zero_to_none,
                                            validator=_check_key)
    listen_port: int = attrs.field(validator=_range_check(0, 65535))  # the bound port; 0: none
    fwmark: int = attrs.field(validator=_range_check(0, MAX_FWMARK))  # 0: off
    peers: tuple[PeerState, ...]


def format_get(state: DeviceState) -> bytes:
    """The whole reply to `get=1`, in wireguard-go's order, ending with errno=0."""
    lines: list[str] = []
    if state.private_key is not None:
        lines.append(f"private_key={encode_hex_key(state.private_key)}")
    if state.listen_port:
        lines.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        lines.append(f"fwmark={state.fwmark}")
    for peer in state.peers:
        lines.append(f"public_key={encode_hex_key(peer.public_key)}")
        lines.append(f"preshared_key={encode_hex_key(peer.preshared_key or _ZERO_KEY)}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        lines.append(f"last_handshake_time_sec={peer.last_handshake[0]}")
        lines.append(f"last_handshake_time_nsec={peer.last_handshake[1]}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        lines.extend(f"allowed_ip={network}" for network in peer.allowed_ips)
    lines.append("errno=0")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def reply_length(data: bytes) -> int | None:
    """The length of the first complete reply at the start of `data`, None if it has not all
    arrived: a reply's lines are never empty, so it ends at the first blank line."""
    end = data.find(b"\n\n")
    return None if end < 0 else end + 2


def _reply_lines(data: bytes) -> list[tuple[str, str]]:
    """The key=value lines before a reply's errno line; UapiError if it says errno≠0."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UapiError(EPROTO, "the reply is not UTF-8 text") from None
    if not text.endswith("\n\n") or reply_length(data) != len(data):
        raise UapiError(EPROTO, "the reply does not end with one blank line")
    pairs = []
    for line in text[:-2].split("\n"):
        key, equals, value = line.partition("=")
        if not equals:
            raise UapiError(EPROTO, "a reply line without '='")
        pairs.append((key, value))
    key, value = pairs.pop()
    if key != "errno":
        raise UapiError(EPROTO, "the reply does not end with errno=N")
    try:
        errno = reply_errno(value)
    except ValueError:
        raise UapiError(EPROTO, f"the reply's errno is not a number: '{shown(value)}'") from None
    if errno:
        raise UapiError(errno, f"the server answered errno={errno}")
    return pairs


def _reply_value(key: str, value: str, parse: Callable[[str], Any]) -> Any:
    try:
        return _parse_value(key, value, parse)
    except UapiError as e:
        raise UapiError(EPROTO, f"in the reply: {e.message}") from None


def _reply_key(key: str, value: str) -> bytes:
    try:
        return _parse_key_value(key, value)
    except UapiError as e:
        raise UapiError(EPROTO, f"in the reply: {e.message}") from None


def _reply_endpoint(text: str) -> Endpoint:
    # Whatever the server holds, wireguard-go's zones and port 0 included.
    return parse_ip_endpoint(text, allow_zone=True, allow_port_zero=True)


def _counter(value: str) -> int:
    return parse_uint(value, 0, MAX_COUNTER)


def _seconds(value: str) -> int:
    return parse_uint(value, 0, MAX_SECONDS)


def _nanoseconds(value: str) -> int:
    return parse_uint(value, 0, 999_999_999)


def _fwmark(value: str) -> int:
    return parse_uint(value, 0, MAX_FWMARK)


def _protocol_version(value: str) -> int:
    if value != "1":
        raise ValueError(f"protocol_version {value!r} is not 1")
    return 1


# Peer fields of a get reply: key -> (PeerState field or "" for a check only, parser).
_PEER_REPLY_KEYS: Final[dict[str, tuple[str, Callable[[str], Any]]]] = {
    "endpoint": ("endpoint", _reply_endpoint),
    "last_handshake_time_sec": ("sec", _seconds),
    "last_handshake_time_nsec": ("nsec", _nanoseconds),
    "tx_bytes": ("tx_bytes", _counter),
    "rx_bytes": ("rx_bytes", _counter),
    "persistent_keepalive_interval": ("persistent_keepalive", _parse_port),
    "protocol_version": ("", _protocol_version),
}


def _peer_state(fields: dict[str, Any], allowed_ips: list[Network]) -> PeerState:
    return PeerState(
        public_key=fields["public_key"], preshared_key=fields.get("preshared_key"),
        endpoint=fields.get("endpoint"),
        last_handshake=(fields.get("sec", 0), fields.get("nsec", 0)),
        tx_bytes=fields.get("tx_bytes", 0), rx_bytes=fields.get("rx_bytes", 0),
        persistent_keepalive=fields.get("persistent_keepalive", 0),
        allowed_ips=tuple(allowed_ips))


def parse_get_reply(data: bytes) -> DeviceState:
    """The client side of `get=1`: one whole reply. UapiError with the server's errno, or
    EPROTO for a malformed reply. Keys this version does not know are skipped, as wg(8) does."""
    device: dict[str, Any] = {}
    peers: list[PeerState] = []
    peer: dict[str, Any] | None = None
    allowed_ips: list[Network] = []
    for key, value in _reply_lines(data):
        if key == "public_key":
            if peer is not None:
                peers.append(_peer_state(peer, allowed_ips))
            peer, allowed_ips = {"public_key": _reply_key(key, value)}, []
        elif peer is None:
            if key == "private_key":
                device["private_key"] = _reply_key(key, value)
            elif key == "listen_port":
                device["listen_port"] = _reply_value(key, value, _parse_port)
            elif key == "fwmark":
                device["fwmark"] = _reply_value(key, value, _fwmark)
        elif key == "preshared_key":
            peer["preshared_key"] = _reply_key(key, value)
        elif key == "allowed_ip":
            allowed_ips.append(_reply_value(key, value, _parse_allowed_ip))
        elif key in _PEER_REPLY_KEYS:
            field, parse = _PEER_REPLY_KEYS[key]
            parsed = _reply_value(key, value, parse)
            if field:
                peer[field] = parsed
    if peer is not None:
        peers.append(_peer_state(peer, allowed_ips))
    return DeviceState(private_key=device.get("private_key"),
                       listen_port=device.get("listen_port", 0),
                       fwmark=device.get("fwmark", 0), peers=tuple(peers))


def format_status(obj: dict[str, Any]) -> bytes:
    """The whole reply to `fz_status=1`. `obj` must be JSON-serialisable, finite and free of key
    material; compact JSON with escaped non-ASCII keeps it one line."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return f"fz_status={text}\nerrno=0\n\n".encode("ascii")


def parse_status_reply(data: bytes) -> dict[str, Any]:
    """The client side of `fz_status=1`: the status object, or UapiError as parse_get_reply."""
    pairs = _reply_lines(data)
    if len(pairs) != 1 or pairs[0][0] != "fz_status":
        raise UapiError(EPROTO, "a status reply is one fz_status line and errno")
    try:
        obj = json.loads(pairs[0][1])
    except ValueError:
        raise UapiError(EPROTO, "the status is not JSON") from None
    if not isinstance(obj, dict):
        raise UapiError(EPROTO, "the status is not a JSON object")
    return obj
