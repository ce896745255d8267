"""The four WireGuard message types: strict parsing and serialisation.

Handshake messages are small immutable values. Transport data is on the hot path, so it is read
with `struct` straight from the datagram and never becomes an object.
"""

from __future__ import annotations

import struct

import attrs

TYPE_INITIATION = 1
TYPE_RESPONSE = 2
TYPE_COOKIE_REPLY = 3
TYPE_TRANSPORT = 4

INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
TRANSPORT_HEADER_LEN = 16
TRANSPORT_MIN_LEN = TRANSPORT_HEADER_LEN + 16  # header + tag of an empty (keepalive) packet

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")


class MessageError(ValueError):
    """A datagram that is not a well-formed WireGuard message."""


@attrs.frozen
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    def pack(self) -> bytes:
        return _INITIATION.pack(
            TYPE_INITIATION, self.sender, self.ephemeral, self.encrypted_static,
            self.encrypted_timestamp, self.mac1, self.mac2,
        )


@attrs.frozen
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            TYPE_RESPONSE, self.sender, self.receiver, self.ephemeral, self.encrypted_nothing,
            self.mac1, self.mac2,
        )


@attrs.frozen
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        return _COOKIE_REPLY.pack(TYPE_COOKIE_REPLY, self.receiver, self.nonce,
                                  self.encrypted_cookie)


Message = Initiation | Response | CookieReply


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The message type, or 0 when the 4-byte type field is not a known type with zero padding."""
    if len(data) < 4 or data[1] or data[2] or data[3]:
        return 0
    kind = data[0]
    return kind if TYPE_INITIATION <= kind <= TYPE_TRANSPORT else 0


_EXPECTED_LEN = {
    TYPE_INITIATION: INITIATION_LEN,
    TYPE_RESPONSE: RESPONSE_LEN,
    TYPE_COOKIE_REPLY: COOKIE_REPLY_LEN,
}


def parse_handshake(data: bytes | bytearray | memoryview) -> Message:
    """Parse an initiation, response or cookie reply; anything else raises MessageError."""
    kind = message_type(data)
    expected = _EXPECTED_LEN.get(kind)
    if expected is None:
        raise MessageError(f"not a handshake message (type field {bytes(data[:4]).hex()})")
    if len(data) != expected:
        raise MessageError(f"message type {kind} must be {expected} bytes, got {len(data)}")
    if kind == TYPE_INITIATION:
        _, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
        return Initiation(sender, eph, static, ts, mac1, mac2)
    if kind == TYPE_RESPONSE:
        _, sender, receiver, eph, empty, mac1, mac2 = _RESPONSE.unpack(data)
        return Response(sender, receiver, eph, empty, mac1, mac2)
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
    return CookieReply(receiver, nonce, cookie)


def parse_transport_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(receiver index, counter) of a transport data message."""
    if len(data) < TRANSPORT_MIN_LEN:
        raise MessageError(f"transport message too short ({len(data)} bytes)")
    kind, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    if kind != TYPE_TRANSPORT:
        raise MessageError("not a transport message")
    return receiver, counter


def padded_length(plain_len: int, mtu: int | None = None) -> int:
    """Plaintext is padded with zeros to a multiple of 16 to hide packet sizes, but (given the
    tunnel's `mtu`) not beyond the MTU unless the packet itself already is."""
    padded = (plain_len + 15) & ~15
    return padded if mtu is None else min(padded, max(plain_len, mtu))
