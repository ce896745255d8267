"""The four WireGuard message types: round trips, strict lengths and types, transport headers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fz_trio.core import messages
from fz_trio.core.messages import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    RESPONSE_LEN,
    TRANSPORT_HEADER_LEN,
    CookieReply,
    Initiation,
    MessageError,
    Response,
    message_type,
    padded_length,
    parse_handshake,
    parse_transport_header,
)

u32 = st.integers(0, 2**32 - 1)


def b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


initiations = st.builds(Initiation, u32, b(32), b(48), b(28), b(16), b(16))
responses = st.builds(Response, u32, u32, b(32), b(16), b(16), b(16))
cookie_replies = st.builds(CookieReply, u32, b(24), b(32))
handshake_messages = st.one_of(initiations, responses, cookie_replies)


def sample_initiation() -> Initiation:
    return Initiation(0x01020304, bytes(range(32)), bytes(range(48)), bytes(range(28)),
                      b"\xaa" * 16, b"\xbb" * 16)


def sample_response() -> Response:
    return Response(7, 0xFFFFFFFF, b"\x11" * 32, b"\x22" * 16, b"\x33" * 16, b"\x44" * 16)


def sample_cookie_reply() -> CookieReply:
    return CookieReply(0xDEADBEEF, b"\x55" * 24, b"\x66" * 32)


SAMPLES = [sample_initiation(), sample_response(), sample_cookie_reply()]
EXPECTED_LEN = {1: 148, 2: 92, 3: 64}


def test_wire_layout_of_initiation() -> None:
    msg = sample_initiation()
    data = msg.pack()
    assert len(data) == INITIATION_LEN == 148
    assert data[:4] == b"\x01\x00\x00\x00"
    assert data[4:8] == (0x01020304).to_bytes(4, "little")  # indices are little-endian
    assert data[8:40] == msg.ephemeral
    assert data[40:88] == msg.encrypted_static
    assert data[88:116] == msg.encrypted_timestamp
    assert data[116:132] == msg.mac1
    assert data[132:148] == msg.mac2


def test_wire_layout_of_response() -> None:
    msg = sample_response()
    data = msg.pack()
    assert len(data) == RESPONSE_LEN == 92
    assert data[:4] == b"\x02\x00\x00\x00"
    assert data[4:8] == (7).to_bytes(4, "little")
    assert data[8:12] == b"\xff\xff\xff\xff"
    assert data[12:44] == msg.ephemeral
    assert data[44:60] == msg.encrypted_nothing
    assert data[60:76] == msg.mac1
    assert data[76:92] == msg.mac2


def test_wire_layout_of_cookie_reply() -> None:
    msg = sample_cookie_reply()
    data = msg.pack()
    assert len(data) == COOKIE_REPLY_LEN == 64
    assert data[:4] == b"\x03\x00\x00\x00"
    assert data[4:8] == (0xDEADBEEF).to_bytes(4, "little")
    assert data[8:32] == msg.nonce
    assert data[32:64] == msg.encrypted_cookie


@settings(max_examples=50)
@given(handshake_messages)
def test_handshake_round_trip(msg: messages.Message) -> None:
    data = msg.pack()
    assert parse_handshake(data) == msg
    assert parse_handshake(bytearray(data)) == msg
    assert parse_handshake(memoryview(data)) == msg
    assert message_type(data) == data[0]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("delta", [-1, 1, -4, 16])
def test_wrong_length_is_rejected(msg: messages.Message, delta: int) -> None:
    data = msg.pack()
    bad = data[:delta] if delta < 0 else data + bytes(delta)
    with pytest.raises(MessageError):
        parse_handshake(bad)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("position", [1, 2, 3])
def test_nonzero_reserved_bytes_are_rejected(msg: messages.Message, position: int) -> None:
    data = bytearray(msg.pack())
    data[position] = 1
    assert message_type(data) == 0
    with pytest.raises(MessageError):
        parse_handshake(data)


@pytest.mark.parametrize("kind", [0, 5, 6, 0x80, 0xFF])
def test_unknown_type_is_rejected(kind: int) -> None:
    data = bytearray(sample_initiation().pack())
    data[0] = kind
    assert message_type(data) == 0
    with pytest.raises(MessageError):
        parse_handshake(data)


def test_a_message_of_another_types_length_is_rejected() -> None:
    # A response's bytes relabelled as an initiation (and so on) must not parse.
    init, resp, cookie = (m.pack() for m in SAMPLES)
    for data, other in [(init, 2), (init, 3), (resp, 1), (resp, 3), (cookie, 1), (cookie, 2)]:
        relabelled = bytes([other]) + data[1:]
        with pytest.raises(MessageError):
            parse_handshake(relabelled)


def test_transport_is_not_a_handshake_message() -> None:
    data = struct.pack("<IIQ", 4, 1, 2) + bytes(16)
    assert message_type(data) == messages.TYPE_TRANSPORT
    with pytest.raises(MessageError):
        parse_handshake(data)


def test_message_type_of_short_data() -> None:
    for data in [b"", b"\x01", b"\x01\x00", b"\x01\x00\x00"]:
        assert message_type(data) == 0
        with pytest.raises(MessageError):
            parse_handshake(data)


# --- transport header -------------------------------------------------------------------------


@settings(max_examples=50)
@given(u32, st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=100))
def test_transport_header_round_trip(receiver: int, counter: int, rest: bytes) -> None:
    data = b"\x04\x00\x00\x00" + receiver.to_bytes(4, "little") + counter.to_bytes(8, "little")
    assert len(data) == TRANSPORT_HEADER_LEN
    assert parse_transport_header(data + rest) == (receiver, counter)
    assert parse_transport_header(memoryview(bytearray(data + rest))) == (receiver, counter)


def test_transport_minimum_is_header_plus_tag() -> None:
    header = struct.pack("<IIQ", 4, 9, 10)
    assert messages.TRANSPORT_MIN_LEN == 32
    assert parse_transport_header(header + bytes(16)) == (9, 10)  # a keepalive
    for short in range(32):
        with pytest.raises(MessageError):
            parse_transport_header((header + bytes(16))[:short])


@pytest.mark.parametrize("type_field", [b"\x04\x00\x00\x01", b"\x04\x01\x00\x00",
                                        b"\x01\x00\x00\x00", b"\x00\x00\x00\x04"])
def test_transport_header_with_wrong_type_field(type_field: bytes) -> None:
    with pytest.raises(MessageError):
        parse_transport_header(type_field + bytes(28))


def test_padded_length() -> None:
    assert [padded_length(n) for n in (0, 1, 15, 16, 17, 32, 1419, 1420)] == [
        0, 16, 16, 16, 32, 32, 1424, 1424]


# --- arbitrary input --------------------------------------------------------------------------


def _lengths_near_the_real_ones() -> st.SearchStrategy[bytes]:
    # Random bytes of the exact lengths, with a valid type field, reach the deeper parsing paths.
    return st.builds(
        lambda kind, body: bytes([kind, 0, 0, 0]) + body,
        st.sampled_from([1, 2, 3, 4]),
        st.sampled_from([INITIATION_LEN, RESPONSE_LEN, COOKIE_REPLY_LEN, 32, 33]).flatmap(
            lambda n: st.binary(min_size=n - 4, max_size=n - 4)),
    )


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), _lengths_near_the_real_ones()))
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    kind = message_type(data)
    assert kind in (0, 1, 2, 3, 4)
    try:
        msg = parse_handshake(data)
    except MessageError:
        assert kind not in (1, 2, 3) or len(data) != EXPECTED_LEN[kind]
    else:
        assert msg.pack() == data
    try:
        parse_transport_header(data)
    except MessageError:
        pass
    else:
        assert kind == 4 and len(data) >= 32
