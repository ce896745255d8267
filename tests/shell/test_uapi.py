"""Tests for fz_trio.uapi (the sans-IO userspace API) and the value parsers it shares with the
config parser (fz_trio.values, the hex keys of fz_trio.core)."""

from __future__ import annotations

import base64
import ipaddress
import pickle
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fz_trio.core import (
    Network,
    clamp,
    decode_hex_key,
    encode_hex_key,
    encode_key,
    format_endpoint,
)
from fz_trio.uapi import (
    CLOSE,
    EADDRINUSE,
    EINVAL,
    EIO,
    EPROTO,
    EUNKNOWN,
    MAX_LINE,
    SOCKET_DIR,
    DeviceState,
    Event,
    ExtensionRequest,
    GetRequest,
    PeerChange,
    PeerState,
    RequestReader,
    SetRequest,
    UapiError,
    format_errno,
    format_get,
    format_request,
    format_set,
    format_status,
    parse_get_reply,
    parse_request,
    parse_status_reply,
    reply_length,
    socket_path,
)
from fz_trio.values import parse_ip_endpoint, parse_network, parse_prefixed

# ---------------------------------------------------------------------------------------------
# Helpers

PRIVATE = clamp(bytes(range(32)))
PEER_A = bytes(range(100, 132))
PEER_B = bytes(range(200, 232))
PSK = bytes(range(50, 82))
ZERO = bytes(32)

# Anything that looks like a whole key in either spelling; no message may contain one.
KEY_TEXT_RE = re.compile(r"[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=")


def hx(key: bytes) -> str:
    return encode_hex_key(key)


def net(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


def set_bytes(*lines: str) -> bytes:
    return ("set=1\n" + "".join(line + "\n" for line in lines) + "\n").encode()


def parse_set(*lines: str) -> SetRequest:
    request = parse_request(set_bytes(*lines))
    assert isinstance(request, SetRequest)
    return request


def set_error(*lines: str) -> UapiError:
    with pytest.raises(UapiError) as info:
        parse_request(set_bytes(*lines))
    return info.value


def peer_lines(key: bytes, *lines: str) -> list[str]:
    return [f"public_key={hx(key)}", *lines]


def describe(event: Event) -> Any:
    """Events as comparable values (exceptions do not compare equal by content)."""
    if isinstance(event, UapiError):
        return ("error", event.errno)
    return event


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Any]:
    reader = RequestReader()
    events: list[Any] = []
    previous = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += [describe(e) for e in reader.feed(data[previous:cut])]
        previous = cut
    return events


def feed_whole(data: bytes, **limits: int) -> list[Event]:
    return RequestReader(**limits).feed(data)


def assert_no_key_text(error: UapiError) -> None:
    assert not KEY_TEXT_RE.search(error.message), error.message
    assert not KEY_TEXT_RE.search(str(error)), str(error)
    assert not KEY_TEXT_RE.search(repr(error)), repr(error)


# ---------------------------------------------------------------------------------------------
# Hex keys and the shared value parsers


def test_hex_keys_round_trip_and_are_lowercase() -> None:
    assert encode_hex_key(PEER_A) == PEER_A.hex()
    assert decode_hex_key(PEER_A.hex()) == PEER_A
    assert decode_hex_key(PEER_A.hex().upper()) == PEER_A


@pytest.mark.parametrize("text", [
    "", "00" * 31, "00" * 33, "0" * 63, "g" * 64, " " + "0" * 63, "0" * 62 + " 0",
    "00 " * 21 + "0", "+" + "0" * 63, "٠" * 64, base64.b64encode(PSK).decode(),
])
def test_decode_hex_key_rejects_without_echoing(text: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_hex_key(text)
    if text.strip():
        assert text not in str(info.value)


def test_encode_hex_key_needs_32_bytes() -> None:
    with pytest.raises(ValueError):
        encode_hex_key(bytes(31))


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1/24", "10.0.0.0/24"),
    ("10.0.0.1/32", "10.0.0.1/32"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("fd00::1/64", "fd00::/64"),
    ("FD00:0::1/128", "fd00::1/128"),
    ("::/0", "::/0"),
])
def test_strict_network_masks_host_bits(text: str, expected: str) -> None:
    assert parse_network(text, strict=True) == net(expected)


@pytest.mark.parametrize("text", [
    "10.0.0.1", "fd00::1", "10.0.0.0/024", "10.0.0.0/00", "10.0.0.0/33", "fd00::/129",
    "10.0.0.0/+8", "10.0.0.0/", "/8", "10.0.0.0/255.0.0.0", "fe80::1%eth0/64", "010.0.0.0/8",
    "10.0.0.0/8 ", " 10.0.0.0/8",
])
def test_strict_network_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_network(text, strict=True)


def test_loose_network_keeps_the_config_rules() -> None:
    assert parse_network("10.0.0.1") == net("10.0.0.1/32")
    assert parse_network("10.0.0.0/08") == net("10.0.0.0/8")
    assert parse_prefixed("fd00::1") == (ipaddress.IPv6Address("fd00::1"), 128)


@pytest.mark.parametrize("text, expected", [
    ("1.2.3.4:51820", ("1.2.3.4", 51820)),
    ("[fd00::1]:1", ("fd00::1", 1)),
    ("[FD00:0::0001]:65535", ("fd00::1", 65535)),
    ("1.2.3.4:051820", ("1.2.3.4", 51820)),
])
def test_ip_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert parse_ip_endpoint(text) == expected


@pytest.mark.parametrize("text", [
    "vpn.example.com:51820", "1.2.3.4", "1.2.3.4:0", "1.2.3.4:65536", "fd00::1:51820",
    "[1.2.3.4]:1", "[fd00::1]", "[fd00::1]1", "[fe80::1%eth0]:1", ":1", "1.2.3.4:", "[]:1",
    "1.2.3.4:+1", "1.2.3.04:1",
])
def test_ip_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ip_endpoint(text)


def test_ip_endpoint_for_replies_takes_zones_and_port_zero() -> None:
    assert parse_ip_endpoint("[fe80::1%eth0]:0", allow_zone=True,
                             allow_port_zero=True) == ("fe80::1%eth0", 0)


def test_config_still_exports_endpoint_setting() -> None:
    from fz_trio import config, values
    assert config.EndpointSetting is values.EndpointSetting
    assert "EndpointSetting" in config.__all__
    setting = values.parse_endpoint("vpn.example.com:4500")
    assert pickle.loads(pickle.dumps(setting)) == setting


# ---------------------------------------------------------------------------------------------
# Constants and the socket path


def test_constants() -> None:
    assert (EIO, EPROTO, EINVAL, EADDRINUSE, EUNKNOWN) == (5, 71, 22, 98, 55)
    assert SOCKET_DIR == "/var/run/wireguard"
    assert socket_path("wg0") == "/var/run/wireguard/wg0.sock"


@pytest.mark.parametrize("name", ["", "..", "a/b", "x" * 16, "wg 0"])
def test_socket_path_refuses_names_the_kernel_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        socket_path(name)


# ---------------------------------------------------------------------------------------------
# set: what wg(8) sends


def test_wg_setconf_request() -> None:
    """The shape of `wg setconf wg0 file`: replace everything, peer by peer."""
    text = (
        "set=1\n"
        f"private_key={hx(PRIVATE)}\n"
        "listen_port=51820\n"
        "fwmark=0\n"
        "replace_peers=true\n"
        f"public_key={hx(PEER_A)}\n"
        f"preshared_key={hx(PSK)}\n"
        "endpoint=198.18.0.1:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.0.0.2/32\n"
        "allowed_ip=fd00::2/128\n"
        f"public_key={hx(PEER_B)}\n"
        "endpoint=[2001:db8::7]:4500\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=0.0.0.0/0\n"
        "allowed_ip=::/0\n"
        "\n"
    ).encode()
    assert parse_request(text) == SetRequest(
        private_key=PRIVATE, listen_port=51820, fwmark=0, replace_peers=True,
        peers=(
            PeerChange(PEER_A, preshared_key=PSK, endpoint=("198.18.0.1", 51820),
                       persistent_keepalive=25, replace_allowed_ips=True,
                       allowed_ips=(net("10.0.0.2/32"), net("fd00::2/128"))),
            PeerChange(PEER_B, endpoint=("2001:db8::7", 4500), persistent_keepalive=0,
                       replace_allowed_ips=True, allowed_ips=(net("0.0.0.0/0"), net("::/0"))),
        ))
    assert format_set(parse_request(text)) == text


def test_wg_set_remove_peer() -> None:
    assert parse_set(*peer_lines(PEER_A, "remove=true")) == SetRequest(
        peers=(PeerChange(PEER_A, remove=True),))


def test_empty_set() -> None:
    assert parse_request(b"set=1\n\n") == SetRequest()


# ---------------------------------------------------------------------------------------------
# set: each interface key


def test_private_key_is_clamped_and_zero_removes() -> None:
    raw = bytes([0xFF] * 32)
    assert parse_set(f"private_key={hx(raw)}").private_key == clamp(raw)
    assert parse_set(f"private_key={hx(raw).upper()}").private_key == clamp(raw)
    assert parse_set(f"private_key={'0' * 64}").private_key == ZERO
    assert parse_set().private_key is None


@pytest.mark.parametrize("value, expected", [("0", 0), ("1", 1), ("65535", 65535),
                                             ("00051820", 51820)])
def test_listen_port(value: str, expected: int) -> None:
    assert parse_set(f"listen_port={value}").listen_port == expected


@pytest.mark.parametrize("value", ["", "65536", "-1", "+1", " 1", "1 ", "0x10", "1_000", "٣",
                                   "9" * 3000])
def test_listen_port_rejects(value: str) -> None:
    assert set_error(f"listen_port={value}").errno == EINVAL


@pytest.mark.parametrize("value, expected", [("", 0), ("0", 0), ("51820", 51820),
                                             ("4294967295", 2**32 - 1)])
def test_fwmark(value: str, expected: int) -> None:
    assert parse_set(f"fwmark={value}").fwmark == expected


@pytest.mark.parametrize("value", ["4294967296", "-1", "0x1", "off"])
def test_fwmark_rejects(value: str) -> None:
    assert set_error(f"fwmark={value}").errno == EINVAL


def test_replace_peers() -> None:
    assert parse_set("replace_peers=true").replace_peers


@pytest.mark.parametrize("value", ["", "false", "True", "1", "true ", "yes"])
@pytest.mark.parametrize("key", ["replace_peers"])
def test_interface_flag_only_true(key: str, value: str) -> None:
    assert set_error(f"{key}={value}").errno == EINVAL


def test_later_interface_lines_win() -> None:
    request = parse_set("listen_port=1", "fwmark=5", "listen_port=2", "fwmark=")
    assert (request.listen_port, request.fwmark) == (2, 0)


@pytest.mark.parametrize("line", [
    "endpoint=1.2.3.4:1", "allowed_ip=10.0.0.0/8", "remove=true", "Private_Key=00", "mtu=1420",
    "=1", "private_key ", "get=1",
])
def test_unknown_interface_key_is_einval(line: str) -> None:
    if "=" not in line:
        assert set_error(line).errno == EPROTO
    else:
        assert set_error(line).errno == EINVAL


# ---------------------------------------------------------------------------------------------
# set: each peer key


def one_peer(*lines: str) -> PeerChange:
    request = parse_set(*peer_lines(PEER_A, *lines))
    assert len(request.peers) == 1
    return request.peers[0]


def test_bare_public_key_block() -> None:
    assert one_peer() == PeerChange(PEER_A)


def test_public_key_any_case_and_zero() -> None:
    assert parse_set(f"public_key={hx(PEER_A).upper()}").peers == (PeerChange(PEER_A),)
    assert parse_set(f"public_key={'0' * 64}").peers == (PeerChange(ZERO),)


def test_peer_flags() -> None:
    assert one_peer("update_only=true") == PeerChange(PEER_A, update_only=True)
    assert one_peer("remove=true") == PeerChange(PEER_A, remove=True)
    assert one_peer("replace_allowed_ips=true") == PeerChange(PEER_A, replace_allowed_ips=True)


@pytest.mark.parametrize("key", ["remove", "update_only", "replace_allowed_ips"])
@pytest.mark.parametrize("value", ["", "false", "TRUE", "1"])
def test_peer_flag_only_true(key: str, value: str) -> None:
    assert set_error(*peer_lines(PEER_A, f"{key}={value}")).errno == EINVAL


def test_preshared_key() -> None:
    assert one_peer(f"preshared_key={hx(PSK)}").preshared_key == PSK
    assert one_peer(f"preshared_key={'0' * 64}").preshared_key == ZERO


def test_endpoint_and_keepalive() -> None:
    change = one_peer("endpoint=[fd00::1]:51820", "persistent_keepalive_interval=25")
    assert (change.endpoint, change.persistent_keepalive) == (("fd00::1", 51820), 25)
    assert one_peer("persistent_keepalive_interval=0").persistent_keepalive == 0
    assert one_peer("endpoint=1.1.1.1:1", "endpoint=2.2.2.2:2").endpoint == ("2.2.2.2", 2)


@pytest.mark.parametrize("line", [
    "endpoint=vpn.example.com:51820", "endpoint=1.2.3.4", "endpoint=fd00::1:1", "endpoint=",
    "endpoint=1.2.3.4:0", "persistent_keepalive_interval=65536",
    "persistent_keepalive_interval=", "persistent_keepalive_interval=off",
    "allowed_ip=10.0.0.1", "allowed_ip=10.0.0.0/33", "allowed_ip=-10.0.0.0/8", "allowed_ip=",
    "allowed_ip=10.0.0.0/8,10.1.0.0/16", "protocol_version=2", "protocol_version=",
    "protocol_version=01", "preshared_key=00", f"preshared_key={encode_key(PSK)}",
    "listen_port=1", "private_key=" + "0" * 64, "replace_peers=true", "fwmark=1", "bogus=1",
])
def test_bad_peer_line_is_einval(line: str) -> None:
    assert set_error(*peer_lines(PEER_A, line)).errno == EINVAL


def test_allowed_ips_in_order_masked_and_repeated() -> None:
    change = one_peer("allowed_ip=10.0.0.1/24", "allowed_ip=fd00::1/64", "allowed_ip=10.0.0.0/24")
    assert change.allowed_ips == (net("10.0.0.0/24"), net("fd00::/64"), net("10.0.0.0/24"))


def test_protocol_version_1_is_accepted_and_not_stored() -> None:
    assert one_peer("protocol_version=1") == PeerChange(PEER_A)


@pytest.mark.parametrize("key", ["public_key", "preshared_key"])
@pytest.mark.parametrize("value", ["", "0" * 63, "0" * 65, "x" * 64,
                                   base64.b64encode(PSK).decode()])
def test_bad_key_value_is_einval(key: str, value: str) -> None:
    error = set_error(*peer_lines(PEER_A, f"{key}={value}"))
    assert error.errno == EINVAL


def test_bad_private_key_is_einval() -> None:
    assert set_error("private_key=" + "0" * 63).errno == EINVAL


def test_peer_key_before_any_public_key_is_einval() -> None:
    assert set_error("allowed_ip=10.0.0.0/8").errno == EINVAL


def test_duplicate_public_keys_stay_separate_in_order() -> None:
    request = parse_set(*peer_lines(PEER_A, "allowed_ip=10.0.0.0/8"),
                        *peer_lines(PEER_B, "allowed_ip=10.0.0.0/8"),
                        *peer_lines(PEER_A, "remove=true"))
    assert request.peers == (
        PeerChange(PEER_A, allowed_ips=(net("10.0.0.0/8"),)),
        PeerChange(PEER_B, allowed_ips=(net("10.0.0.0/8"),)),
        PeerChange(PEER_A, remove=True),
    )


# ---------------------------------------------------------------------------------------------
# set: line order inside a block, as wireguard-go applies it


def test_replace_after_allowed_ips_starts_a_new_change() -> None:
    request = parse_set(*peer_lines(PEER_A, "allowed_ip=10.0.0.0/8", "endpoint=1.1.1.1:1",
                                    "replace_allowed_ips=true", "allowed_ip=10.1.0.0/16",
                                    "persistent_keepalive_interval=5"))
    assert request.peers == (
        PeerChange(PEER_A, endpoint=("1.1.1.1", 1), allowed_ips=(net("10.0.0.0/8"),)),
        PeerChange(PEER_A, persistent_keepalive=5, replace_allowed_ips=True,
                   allowed_ips=(net("10.1.0.0/16"),)),
    )


def test_replace_before_allowed_ips_is_one_change() -> None:
    change = one_peer("endpoint=1.1.1.1:1", "replace_allowed_ips=true", "allowed_ip=10.0.0.0/8")
    assert change == PeerChange(PEER_A, endpoint=("1.1.1.1", 1), replace_allowed_ips=True,
                                allowed_ips=(net("10.0.0.0/8"),))


def test_remove_after_changes_starts_a_removal() -> None:
    request = parse_set(*peer_lines(PEER_A, "allowed_ip=10.0.0.0/8", "remove=true"))
    assert request.peers == (PeerChange(PEER_A, allowed_ips=(net("10.0.0.0/8"),)),
                             PeerChange(PEER_A, remove=True))


def test_lines_after_remove_are_checked_but_ignored() -> None:
    request = parse_set(*peer_lines(PEER_A, "remove=true", "allowed_ip=10.0.0.0/8",
                                    "endpoint=1.1.1.1:1", "replace_allowed_ips=true",
                                    "update_only=true", "remove=true"),
                        *peer_lines(PEER_B, "allowed_ip=10.1.0.0/16"))
    assert request.peers == (PeerChange(PEER_A, remove=True),
                             PeerChange(PEER_B, allowed_ips=(net("10.1.0.0/16"),)))
    assert set_error(*peer_lines(PEER_A, "remove=true", "allowed_ip=bad")).errno == EINVAL


def test_update_only_covers_the_whole_block() -> None:
    request = parse_set(*peer_lines(PEER_A, "allowed_ip=10.0.0.0/8", "replace_allowed_ips=true",
                                    "update_only=true", "allowed_ip=10.1.0.0/16"))
    assert request.peers == (
        PeerChange(PEER_A, update_only=True, allowed_ips=(net("10.0.0.0/8"),)),
        PeerChange(PEER_A, update_only=True, replace_allowed_ips=True,
                   allowed_ips=(net("10.1.0.0/16"),)),
    )


def test_update_only_then_remove_is_one_change() -> None:
    assert one_peer("update_only=true", "remove=true") == PeerChange(PEER_A, remove=True,
                                                                     update_only=True)


# ---------------------------------------------------------------------------------------------
# set: protocol errors, the first error wins


def test_line_without_equals_is_eproto() -> None:
    assert set_error("listen_port").errno == EPROTO
    assert set_error(*peer_lines(PEER_A, "allowed_ip")).errno == EPROTO


def test_first_error_wins() -> None:
    assert set_error("listen_port=x", "garbage").errno == EINVAL
    assert set_error("garbage", "listen_port=x").errno == EPROTO
    assert set_error("listen_port=1", "fwmark=x", "garbage", "replace_peers=no").errno == EINVAL


@pytest.mark.parametrize("line", [b"listen_port=\xff", b"\xc3(=1", b"listen_port=1\0",
                                  b"\0", b"fwmark=\xed\xa0\x80"])
def test_non_utf8_or_nul_is_eproto(line: bytes) -> None:
    with pytest.raises(UapiError) as info:
        parse_request(b"set=1\n" + line + b"\n\n")
    assert info.value.errno == EPROTO


def test_non_ascii_utf8_value_is_einval() -> None:
    assert set_error("listen_port=５").errno == EINVAL


def test_crlf_lines_in_a_set() -> None:
    assert parse_request(b"set=1\nlisten_port=5\r\n\r\n") == SetRequest(listen_port=5)
    # Not the operation line: wireguard-go closes the connection on "set=1\r".
    assert feed_whole(b"set=1\r\nlisten_port=5\r\n\r\n") == [CLOSE]


# ---------------------------------------------------------------------------------------------
# get and the extensions


def test_get_and_extensions() -> None:
    assert parse_request(b"get=1\n\n") == GetRequest()
    assert parse_request(b"fz_status=1\n\n") == ExtensionRequest("status")
    assert parse_request(b"fz_stop=1\n\n") == ExtensionRequest("stop")


@pytest.mark.parametrize("op", [b"get=1", b"fz_status=1", b"fz_stop=1"])
@pytest.mark.parametrize("body", [b"x\n", b"listen_port=1\n", b"\r\n", b"a\nb\n"])
def test_get_with_a_body_is_einval_and_the_connection_stays_in_step(op: bytes,
                                                                    body: bytes) -> None:
    events = feed_whole(op + b"\n" + body + b"\nget=1\n\n")
    assert [describe(e) for e in events] == [("error", EINVAL), GetRequest()]


@pytest.mark.parametrize("op", [b"GET=1", b"get=1\r", b"set=1\r", b"get=2", b"get", b"",
                                b"set=1 ", b"fz_status=2", b"\xff\xfe", b"get=1\0"])
def test_unknown_operation_closes(op: bytes) -> None:
    reader = RequestReader()
    assert reader.feed(b"get=1\n\n" + op + b"\nget=1\n\n") == [GetRequest(), CLOSE]
    assert reader.closed and reader.close_reason
    assert reader.feed(b"get=1\n\n") == []
    with pytest.raises(UapiError) as info:
        parse_request(op + b"\n\n")
    assert info.value.errno == EPROTO


def test_request_classes() -> None:
    with pytest.raises(ValueError):
        ExtensionRequest("reboot")
    assert format_request(GetRequest()) == b"get=1\n\n"
    assert format_request(ExtensionRequest("status")) == b"fz_status=1\n\n"
    assert format_request(ExtensionRequest("stop")) == b"fz_stop=1\n\n"
    assert format_request(SetRequest(listen_port=1)) == b"set=1\nlisten_port=1\n\n"


# ---------------------------------------------------------------------------------------------
# The reader: streaming, several requests, staying in step, bounds

STREAM = (
    b"get=1\n\n"
    + set_bytes(f"private_key={hx(PRIVATE)}", "listen_port=x", *peer_lines(PEER_A))
    + set_bytes("listen_port=7", *peer_lines(PEER_A, "allowed_ip=10.0.0.0/8"))
    + b"fz_status=1\n\n"
    + set_bytes("garbage", "more garbage")
    + b"get=1\nx\n\n"
    + b"set=1\nfwmark=\r\n\r\n"
    + b"fz_stop=1\n\n"
)
STREAM_EVENTS = [
    GetRequest(),
    ("error", EINVAL),
    SetRequest(listen_port=7, peers=(PeerChange(PEER_A, allowed_ips=(net("10.0.0.0/8"),)),)),
    ExtensionRequest("status"),
    ("error", EPROTO),
    ("error", EINVAL),
    SetRequest(fwmark=0),
    ExtensionRequest("stop"),
]


def test_several_requests_in_one_feed() -> None:
    reader = RequestReader()
    assert [describe(e) for e in reader.feed(STREAM)] == STREAM_EVENTS
    assert not reader.pending


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed_in_pieces(STREAM, [cut]) == STREAM_EVENTS, cut


def test_one_byte_at_a_time() -> None:
    assert feed_in_pieces(STREAM, list(range(len(STREAM)))) == STREAM_EVENTS


def test_after_a_bad_set_the_next_request_is_read() -> None:
    reader = RequestReader()
    bad = set_bytes("listen_port=1", *peer_lines(PEER_A, "allowed_ip=nonsense",
                                                 "allowed_ip=10.0.0.0/8"))
    events = reader.feed(bad)
    assert len(events) == 1 and isinstance(events[0], UapiError)
    assert reader.feed(set_bytes("listen_port=2")) == [SetRequest(listen_port=2)]
    assert reader.feed(b"get=1\n\n") == [GetRequest()]


def test_pending() -> None:
    reader = RequestReader()
    assert not reader.pending
    assert reader.feed(b"set=1\nlisten_port=1\n") == []
    assert reader.pending
    assert reader.feed(b"\n") == [SetRequest(listen_port=1)]
    assert not reader.pending
    reader.feed(b"ge")
    assert reader.pending


def test_long_line_closes_even_before_its_newline() -> None:
    reader = RequestReader()
    assert reader.feed(b"set=1\nlisten_port=" + b"1" * MAX_LINE) == [CLOSE]
    assert reader.closed
    reader = RequestReader()
    assert reader.feed(b"x" * (MAX_LINE + 1)) == [CLOSE]
    reader = RequestReader()
    longest = b"fwmark=" + b"0" * (MAX_LINE - 7)
    assert reader.feed(b"set=1\n" + longest + b"\n\n") == [SetRequest(fwmark=0)]


def test_long_line_in_a_later_request_keeps_earlier_events() -> None:
    events = feed_whole(b"get=1\n\nset=1\n" + b"a" * (MAX_LINE + 1) + b"\n\n")
    assert events == [GetRequest(), CLOSE]


def test_long_request_closes() -> None:
    line = b"allowed_ip=10.0.0.0/8\n"
    head = b"set=1\n" + f"public_key={hx(PEER_A)}\n".encode()
    limit = len(head) + 10 * len(line) + 1  # exactly room for ten lines and the blank one
    fits = head + line * 10 + b"\n"
    assert len(feed_whole(fits, max_request_bytes=limit)) == 1
    assert feed_whole(head + line * 11 + b"\n", max_request_bytes=limit) == [CLOSE]
    # Also when the excess is a line still arriving.
    reader = RequestReader(max_request_bytes=limit)
    assert reader.feed(head + line * 10) == []
    assert reader.feed(b"al") == [CLOSE]
    # The limit is per request: many requests in a row are fine.
    assert len(feed_whole(fits * 5, max_request_bytes=limit)) == 5


def test_large_wg_setconf_fits_the_default_limit() -> None:
    lines = ["replace_peers=true"]
    for i in range(20000):
        key = i.to_bytes(4, "big") * 8
        lines += peer_lines(key, f"preshared_key={hx(PSK)}",
                            f"endpoint=198.18.{i >> 8}.{i & 255}:51820",
                            "persistent_keepalive_interval=25", "replace_allowed_ips=true",
                            f"allowed_ip=10.{i >> 8}.{i & 255}.0/24",
                            f"allowed_ip=fd00::{i + 1:x}/128")
    data = set_bytes(*lines)
    events = feed_whole(data)
    assert len(events) == 1 and isinstance(events[0], SetRequest)
    assert len(events[0].peers) == 20000
    assert format_set(events[0]) == data


def test_parse_request_wants_exactly_one_request() -> None:
    for data in (b"", b"get=1\n", b"set=1\nlisten_port=1\n", b"get=1\n\nget=1\n\n",
                 b"get=1\n\nge"):
        with pytest.raises(UapiError) as info:
            parse_request(data)
        assert info.value.errno == EPROTO


# ---------------------------------------------------------------------------------------------
# No key in any message

KEY_LINES = [
    f"private_key={hx(PRIVATE)}x",
    f"private_key={hx(PRIVATE)[:-1]}",
    f"private_key={encode_key(PRIVATE)}",
    f"public_key={hx(PRIVATE)}z",
    f"{hx(PRIVATE)}",
    f"{encode_key(PRIVATE)}",
    f"{hx(PRIVATE)}=1",
    f"{encode_key(PRIVATE)}=1",
    f"listen_port={hx(PRIVATE)}",
    f"fwmark={encode_key(PRIVATE)}",
    f"replace_peers={hx(PRIVATE)}",
    f"x={hx(PRIVATE)}",
]
PEER_KEY_LINES = [
    f"preshared_key={hx(PSK)}0",
    f"endpoint={hx(PSK)}",
    f"endpoint=[{hx(PSK)}]:1",
    f"endpoint=1.2.3.4:{hx(PSK)}",
    f"allowed_ip={hx(PSK)}/8",
    f"allowed_ip=10.0.0.0/{hx(PSK)}",
    f"persistent_keepalive_interval={encode_key(PSK)}",
    f"protocol_version={hx(PSK)}",
    f"remove={hx(PSK)}",
    f"update_only={encode_key(PSK)}",
    f"replace_allowed_ips={hx(PSK)}",
    f"{hx(PSK)}=true",
    f"listen_port={hx(PSK)}",
]


@pytest.mark.parametrize("line", KEY_LINES)
def test_interface_errors_never_show_a_key(line: str) -> None:
    assert_no_key_text(set_error(line))


@pytest.mark.parametrize("line", PEER_KEY_LINES)
def test_peer_errors_never_show_a_key(line: str) -> None:
    assert_no_key_text(set_error(*peer_lines(PEER_A, line)))


def test_short_values_are_shown() -> None:
    assert "'x'" in set_error("listen_port=x").message
    assert "'mtu'" in set_error("mtu=1").message


def test_requests_never_print_secrets() -> None:
    request = SetRequest(private_key=PRIVATE, peers=(PeerChange(PEER_A, preshared_key=PSK),))
    for secret in (PRIVATE, PSK):
        assert repr(secret) not in repr(request)
        assert secret.hex() not in repr(request)
    state = DeviceState(PRIVATE, 1, 0, (PeerState(PEER_A, PSK, None, (0, 0), 0, 0, 0, ()),))
    for secret in (PRIVATE, PSK):
        assert repr(secret) not in repr(state)


# ---------------------------------------------------------------------------------------------
# Request value checks


@pytest.mark.parametrize("make", [
    lambda: SetRequest(private_key=bytes(31)),
    lambda: SetRequest(listen_port=65536),
    lambda: SetRequest(listen_port=-1),
    lambda: SetRequest(fwmark=2**32),
    lambda: PeerChange(bytes(33)),
    lambda: PeerChange(PEER_A, preshared_key=b"short"),
    lambda: PeerChange(PEER_A, endpoint=("vpn.example.com", 1)),
    lambda: PeerChange(PEER_A, endpoint=("1.2.3.4", 0)),
    lambda: PeerChange(PEER_A, persistent_keepalive=65536),
    lambda: PeerChange(PEER_A, allowed_ips=("10.0.0.0/8",)),
    lambda: PeerChange(PEER_A, remove=True, allowed_ips=(net("10.0.0.0/8"),)),
    lambda: PeerChange(PEER_A, remove=True, endpoint=("1.2.3.4", 1)),
    lambda: PeerState(PEER_A, None, None, (0, 10**9), 0, 0, 0, ()),
    lambda: PeerState(PEER_A, None, None, (0, 0), -1, 0, 0, ()),
    lambda: DeviceState(None, 70000, 0, ()),
])
def test_invalid_values_are_refused(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_set_request_clamps_the_private_key() -> None:
    raw = bytes([0xFF] * 32)
    assert SetRequest(private_key=raw).private_key == clamp(raw)
    assert SetRequest(private_key=ZERO).private_key == ZERO


def test_uapi_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(UapiError(EINVAL, "bad")))
    assert (error.errno, error.message) == (EINVAL, "bad")


# ---------------------------------------------------------------------------------------------
# Replies


def test_format_errno() -> None:
    assert format_errno(0) == b"errno=0\n\n"
    assert format_errno(EINVAL) == b"errno=-22\n\n"
    with pytest.raises(ValueError):
        format_errno(-1)


SAMPLE_STATE = DeviceState(
    private_key=PRIVATE, listen_port=51820, fwmark=7,
    peers=(
        PeerState(PEER_A, PSK, ("198.18.0.1", 51820), (1700000000, 123456789), 1184, 2368, 25,
                  (net("10.0.0.2/32"), net("fd00::/64"))),
        PeerState(PEER_B, None, ("2001:db8::7", 4500), (0, 0), 0, 0, 0, ()),
        PeerState(PEER_A[::-1], None, None, (0, 0), 0, 0, 0, (net("0.0.0.0/0"),)),
    ))
SAMPLE_REPLY = (
    f"private_key={hx(PRIVATE)}\n"
    "listen_port=51820\n"
    "fwmark=7\n"
    f"public_key={hx(PEER_A)}\n"
    f"preshared_key={hx(PSK)}\n"
    "protocol_version=1\n"
    "endpoint=198.18.0.1:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=123456789\n"
    "tx_bytes=1184\n"
    "rx_bytes=2368\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.0.0.2/32\n"
    "allowed_ip=fd00::/64\n"
    f"public_key={hx(PEER_B)}\n"
    f"preshared_key={'0' * 64}\n"
    "protocol_version=1\n"
    "endpoint=[2001:db8::7]:4500\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    f"public_key={hx(PEER_A[::-1])}\n"
    f"preshared_key={'0' * 64}\n"
    "protocol_version=1\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "allowed_ip=0.0.0.0/0\n"
    "errno=0\n"
    "\n"
).encode()


def test_format_get_in_wireguard_go_order() -> None:
    assert format_get(SAMPLE_STATE) == SAMPLE_REPLY
    assert parse_get_reply(SAMPLE_REPLY) == SAMPLE_STATE


def test_format_get_leaves_out_what_is_unset() -> None:
    assert format_get(DeviceState(None, 0, 0, ())) == b"errno=0\n\n"
    assert format_get(DeviceState(ZERO, 0, 0, ())) == b"errno=0\n\n"
    assert parse_get_reply(b"errno=0\n\n") == DeviceState(None, 0, 0, ())


def test_zero_keys_in_state_mean_none() -> None:
    assert PeerState(PEER_A, ZERO, None, (0, 0), 0, 0, 0, ()).preshared_key is None
    assert DeviceState(ZERO, 0, 0, ()).private_key is None


def test_get_reply_from_a_newer_server() -> None:
    reply = (f"private_key={hx(PRIVATE)}\nfuture_key=1\npublic_key={hx(PEER_A)}\n"
             "future_peer_key=x\nendpoint=[fe80::1%eth0]:0\nerrno=0\n\n").encode()
    state = parse_get_reply(reply)
    assert state.peers == (PeerState(PEER_A, None, ("fe80::1%eth0", 0), (0, 0), 0, 0, 0, ()),)


@pytest.mark.parametrize("reply", [b"errno=-22\n\n", b"errno=22\n\n"])
def test_get_reply_errno(reply: bytes) -> None:
    """wireguard-go (and fz-trio) send the errno negated; a positive one is read alike."""
    with pytest.raises(UapiError) as info:
        parse_get_reply(reply)
    assert info.value.errno == EINVAL


@pytest.mark.parametrize("reply", [
    b"", b"errno=0\n", b"errno=0", b"errno=0\n\n\n", b"errno=0\n\nerrno=0\n\n",
    b"listen_port=1\n\n", b"errno=x\n\n", b"garbage\nerrno=0\n\n", b"listen_port=x\nerrno=0\n\n",
    b"\xff=1\nerrno=0\n\n",
    f"public_key={hx(PEER_A)}\nprotocol_version=2\nerrno=0\n\n".encode(),
    f"public_key={hx(PEER_A)}\ntx_bytes=-1\nerrno=0\n\n".encode(),
    f"public_key={hx(PEER_A)}\nallowed_ip=10.0.0.0\nerrno=0\n\n".encode(),
    b"public_key=00\nerrno=0\n\n",
])
def test_malformed_get_reply_is_eproto(reply: bytes) -> None:
    with pytest.raises(UapiError) as info:
        parse_get_reply(reply)
    assert info.value.errno == EPROTO


def test_reply_length() -> None:
    assert reply_length(b"errno=0\n") is None
    assert reply_length(b"errno=0\n\nerrno=1\n\n") == 9
    assert reply_length(SAMPLE_REPLY + b"more") == len(SAMPLE_REPLY)


def test_status_round_trip() -> None:
    status = {"interface": "wg0", "peers": 2, "name": "é\n", "nested": {"a": [1, None]}}
    reply = format_status(status)
    assert reply.count(b"\n") == 3 and reply.startswith(b"fz_status={")
    assert reply.endswith(b"\nerrno=0\n\n")
    assert parse_status_reply(reply) == status


@pytest.mark.parametrize("reply, errno", [
    (b"errno=5\n\n", EIO),
    (b"errno=0\n\n", EPROTO),
    (b"fz_status=[1]\nerrno=0\n\n", EPROTO),
    (b"fz_status={\nerrno=0\n\n", EPROTO),
    (b"fz_status={}\nfz_status={}\nerrno=0\n\n", EPROTO),
])
def test_status_reply_errors(reply: bytes, errno: int) -> None:
    with pytest.raises(UapiError) as info:
        parse_status_reply(reply)
    assert info.value.errno == errno


def test_format_status_refuses_nan() -> None:
    with pytest.raises(ValueError):
        format_status({"x": float("nan")})


# ---------------------------------------------------------------------------------------------
# Properties

keys = st.binary(min_size=32, max_size=32)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
addresses = ipv4 | ipv6
endpoints = st.tuples(addresses.map(str), st.integers(1, 65535))


@st.composite
def network_strategy(draw: st.DrawFn) -> Network:
    address = draw(addresses)
    return ipaddress.ip_network((address, draw(st.integers(0, address.max_prefixlen))),
                                strict=False)


peer_changes = st.one_of(
    st.builds(lambda k, u: PeerChange(k, remove=True, update_only=u), keys, st.booleans()),
    st.builds(PeerChange, public_key=keys, update_only=st.booleans(),
              preshared_key=st.none() | keys, endpoint=st.none() | endpoints,
              persistent_keepalive=st.none() | st.integers(0, 65535),
              replace_allowed_ips=st.booleans(),
              allowed_ips=st.lists(network_strategy(), max_size=4).map(tuple)),
)
set_requests = st.builds(
    SetRequest,
    private_key=st.none() | st.just(ZERO) | keys,
    listen_port=st.none() | st.integers(0, 65535),
    fwmark=st.none() | st.integers(0, 2**32 - 1),
    replace_peers=st.booleans(),
    peers=st.lists(peer_changes, max_size=5).map(tuple),
)
peer_states = st.builds(
    PeerState, public_key=keys, preshared_key=st.none() | keys,
    endpoint=st.none() | endpoints,
    last_handshake=st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 999_999_999)),
    tx_bytes=st.integers(0, 2**64 - 1), rx_bytes=st.integers(0, 2**64 - 1),
    persistent_keepalive=st.integers(0, 65535),
    allowed_ips=st.lists(network_strategy(), max_size=4).map(tuple),
)
device_states = st.builds(DeviceState, private_key=st.none() | keys,
                          listen_port=st.integers(0, 65535), fwmark=st.integers(0, 2**32 - 1),
                          peers=st.lists(peer_states, max_size=4).map(tuple))


@given(set_requests)
def test_set_round_trip(request: SetRequest) -> None:
    assert parse_request(format_set(request)) == request


@given(device_states)
def test_get_round_trip(state: DeviceState) -> None:
    assert parse_get_reply(format_get(state)) == state


def check_valid(request: SetRequest) -> None:
    """What the applier may rely on in every SetRequest the reader produces."""
    assert request.private_key is None or len(request.private_key) == 32
    if request.private_key is not None and request.private_key != ZERO:
        assert clamp(request.private_key) == request.private_key
    assert request.listen_port is None or 0 <= request.listen_port <= 65535
    assert request.fwmark is None or 0 <= request.fwmark < 2**32
    for peer in request.peers:
        assert len(peer.public_key) == 32
        assert peer.preshared_key is None or len(peer.preshared_key) == 32
        if peer.endpoint is not None:
            assert parse_ip_endpoint(format_endpoint(peer.endpoint)) == peer.endpoint
        assert peer.persistent_keepalive is None or 0 <= peer.persistent_keepalive <= 65535
        for network in peer.allowed_ips:
            assert network == ipaddress.ip_network(str(network))  # masked, valid
        if peer.remove:
            assert peer.allowed_ips == () and peer.endpoint is None


def check_events(events: list[Event]) -> None:
    for event in events:
        assert isinstance(event, GetRequest | SetRequest | ExtensionRequest | UapiError) \
            or event is CLOSE
        if isinstance(event, SetRequest):
            check_valid(event)
        if isinstance(event, UapiError):
            assert event.errno in (EINVAL, EPROTO)
    assert CLOSE not in events[:-1]


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_random_bytes_only_make_events(data: bytes, cuts: list[int]) -> None:
    events = RequestReader().feed(data)
    check_events(events)
    assert feed_in_pieces(data, cuts) == [describe(e) for e in events]


INTERESTING_LINES = [
    b"", b"set=1", b"get=1", b"fz_status=1", b"remove=true", b"update_only=true",
    b"replace_allowed_ips=true", b"replace_peers=true", b"allowed_ip=10.0.0.1/8",
    b"allowed_ip=::/0", b"endpoint=[::1]:1", b"endpoint=1.2.3.4:5", b"listen_port=0",
    b"fwmark=", b"protocol_version=1", b"persistent_keepalive_interval=0",
    ("public_key=" + hx(PEER_A)).encode(), ("preshared_key=" + hx(PSK)).encode(),
    ("private_key=" + hx(PRIVATE)).encode(), b"x", b"\r", b"\xff", b"\0",
]


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = b"".join(format_set(r) for r in draw(st.lists(set_requests, min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 4))):
        lines = data.split(b"\n")
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
        elif kind == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif kind == "insert":
            i = draw(st.integers(0, len(lines)))
            line = draw(st.sampled_from(INTERESTING_LINES) | st.binary(max_size=20))
            data = b"\n".join(lines[:i] + [line] + lines[i:])
        elif kind == "delete" and len(lines) > 1:
            i = draw(st.integers(0, len(lines) - 1))
            data = b"\n".join(lines[:i] + lines[i + 1:])
        elif kind == "duplicate":
            i = draw(st.integers(0, len(lines) - 1))
            data = b"\n".join(lines[:i] + [lines[i]] + lines[i:])
    return data


@given(mutated_requests(), st.lists(st.integers(0, 2000), max_size=6))
def test_mutated_requests_only_make_valid_events(data: bytes, cuts: list[int]) -> None:
    events = RequestReader().feed(data)
    check_events(events)
    assert feed_in_pieces(data, cuts) == [describe(e) for e in events]
    for event in events:
        if isinstance(event, SetRequest):
            assert parse_request(format_set(event)) == event
        if isinstance(event, UapiError):
            assert_no_key_text(event)


# ---------------------------------------------------------------------------------------------
# What messages show of a request (fz_trio.redact, the same rule as for config files)

def pieces(text: str, size: int = 16) -> list[str]:
    return [text[i:i + size] for i in range(len(text) - size + 1)]


def assert_shows_nothing_of(error: UapiError, secret: str) -> None:
    assert_no_key_text(error)
    for piece in pieces(secret):
        assert piece not in str(error), str(error)


@pytest.mark.parametrize("line", [
    f"listen_port={hx(PRIVATE)}", f"fwmark={hx(PRIVATE)}", f"fwmark={encode_key(PRIVATE)}",
    f"replace_peers={hx(PRIVATE)}", f"{hx(PRIVATE)}=true", f"{encode_key(PRIVATE)}",
    f"private_key={hx(PRIVATE)}", f"public_key={hx(PRIVATE)}",
])
def test_a_private_key_on_a_wrong_line_of_a_set_is_not_shown(line: str) -> None:
    # The whole request as `wg set` might send it, the private key pasted where it does not go
    # (and the last two: on its own line, where it is fine, while another line is bad).
    lines = [f"private_key={hx(PRIVATE)}", line, f"public_key={hx(PEER_A)}", "endpoint=x"]
    error = set_error(*lines)
    assert error.errno in (EINVAL, EPROTO)
    assert_shows_nothing_of(error, hx(PRIVATE))
    assert_shows_nothing_of(error, encode_key(PRIVATE))


@pytest.mark.parametrize("value", [
    f"{hx(PSK)[:38]}:1",  # 40 characters: the reason (which quotes the host) was shown
    f"[{hx(PSK)[:36]}]:1", f"1.2.3.4:{hx(PSK)[:32]}", f"{hx(PSK)}", f"{encode_key(PSK)}:1",
])
def test_a_hex_key_in_a_bad_value_is_not_shown(value: str) -> None:
    error = set_error(*peer_lines(PEER_A, f"endpoint={value}"))
    assert error.errno == EINVAL
    assert error.message == "invalid endpoint: a key-like value (not shown)"
    assert_shows_nothing_of(error, hx(PSK))
    error = set_error(*peer_lines(PEER_A, f"allowed_ip={hx(PSK)[:34]}/8"))
    assert_shows_nothing_of(error, hx(PSK))


def test_long_values_are_cut_not_only_counted() -> None:
    # Long names and values are quoted, cut to 40 characters, key-like runs replaced first.
    name = "not-a-key-" * 100
    error = set_error(f"{name}=1")
    assert f"unknown interface key '{name[:40]}…'" == error.message
    error = set_error(*peer_lines(PEER_A, f"remove={name}"))
    assert f"remove='{name[:40]}…'" in error.message
    error = set_error(*peer_lines(PEER_A, f"protocol_version=2{hx(PSK)}"))
    assert "protocol_version='<key not shown>'" in error.message  # one run, "2" and all
    # A parser's reason for a long value is shown, and the message bounded.
    error = set_error(*peer_lines(PEER_A, "endpoint=" + "1." * 1000 + ":1"))
    assert error.message.startswith("invalid endpoint: ") and len(error.message) <= 300


def test_uapi_error_bounds_its_message_and_stays_picklable() -> None:
    error = UapiError(EINVAL, "x " * 500 + hx(PSK))
    assert len(error.message) == 300 and error.message.endswith("…")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.errno, copy.message) == (EINVAL, error.message)
    assert hx(PSK) not in UapiError(EINVAL, f"bad {hx(PSK)}").message


def test_a_key_in_a_reply_is_not_shown() -> None:
    with pytest.raises(UapiError) as info:
        parse_get_reply(f"errno={hx(PSK)}\n\n".encode())
    assert_shows_nothing_of(info.value, hx(PSK))
    with pytest.raises(UapiError) as info:
        parse_get_reply(f"public_key={hx(PEER_A)}\nendpoint={hx(PSK)[:38]}:1\nerrno=0\n\n"
                        .encode())
    assert_shows_nothing_of(info.value, hx(PSK))
