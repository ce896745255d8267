"""Tests for fz_trio.config, the wg-quick configuration parser."""

from __future__ import annotations

import base64
import ipaddress
import pickle
from pathlib import Path

import attrs
import nacl.public
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fz_trio.config import (
    Config,
    ConfigError,
    EndpointSetting,
    InterfaceConfig,
    PeerConfig,
    load_config,
    parse_config,
)
from fz_trio.core import decode_key

# ---------------------------------------------------------------------------------------------
# Helpers


@attrs.frozen
class KeyPair:
    private: bytes
    public: bytes

    @property
    def private_b64(self) -> str:
        return base64.b64encode(self.private).decode()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public).decode()


def new_keypair() -> KeyPair:
    key = nacl.public.PrivateKey.generate()
    return KeyPair(bytes(key), bytes(key.public_key))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def me() -> KeyPair:
    return new_keypair()


@pytest.fixture
def peer() -> KeyPair:
    return new_keypair()


def minimal(me: KeyPair, *interface_lines: str) -> str:
    return "\n".join(["[Interface]", f"PrivateKey = {me.private_b64}", *interface_lines]) + "\n"


def with_peer(me: KeyPair, peer: KeyPair, *peer_lines: str) -> str:
    return minimal(me) + "\n".join(["[Peer]", f"PublicKey = {peer.public_b64}", *peer_lines])


def error_of(text: str, filename: str = "wg0.conf") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename)
    return info.value


def assert_error(text: str, line: int | None, *fragments: str) -> ConfigError:
    error = error_of(text)
    assert error.filename == "wg0.conf"
    assert error.line == line, str(error)
    prefix = "wg0.conf: " if line is None else f"wg0.conf:{line}: "
    assert str(error).startswith(prefix)
    for fragment in fragments:
        assert fragment in error.message, str(error)
    return error


# ---------------------------------------------------------------------------------------------
# A realistic file


def test_full_config_with_two_peers(me: KeyPair) -> None:
    peer_a, peer_b = new_keypair(), new_keypair()
    psk = bytes(range(32))
    text = f"""\
# Office tunnel
[Interface]
PrivateKey = {me.private_b64}
Address = 100.64.0.2/10, fd00:64::2/64
ListenPort = 51820
MTU = 1420
DNS = 100.64.0.53, fd00:64::53, corp.example

[Peer]
# gateway, IPv4 underlay
PublicKey = {peer_a.public_b64}
PresharedKey = {b64(psk)}
AllowedIPs = 100.64.0.0/10, fd00:64::/64
AllowedIPs = 100.72.0.1/16
Endpoint = 198.18.0.1:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {peer_b.public_b64}
AllowedIPs = fd00:65::7
Endpoint = vpn.example.com:4500
"""
    config = parse_config(text, "office.conf")
    assert config == Config(
        interface_name="office",
        interface=InterfaceConfig(
            private_key=me.private,
            addresses=(
                ipaddress.IPv4Interface("100.64.0.2/10"),
                ipaddress.IPv6Interface("fd00:64::2/64"),
            ),
            listen_port=51820,
            mtu=1420,
            dns_servers=(
                ipaddress.IPv4Address("100.64.0.53"),
                ipaddress.IPv6Address("fd00:64::53"),
            ),
            dns_search=("corp.example",),
        ),
        peers=(
            PeerConfig(
                public_key=peer_a.public,
                preshared_key=psk,
                allowed_ips=(
                    ipaddress.IPv4Network("100.64.0.0/10"),
                    ipaddress.IPv6Network("fd00:64::/64"),
                    ipaddress.IPv4Network("100.72.0.0/16"),
                ),
                endpoint=EndpointSetting("198.18.0.1", 51820),
                persistent_keepalive=25,
                line=9,
            ),
            PeerConfig(
                public_key=peer_b.public,
                preshared_key=None,
                allowed_ips=(ipaddress.IPv6Network("fd00:65::7/128"),),
                endpoint=EndpointSetting("vpn.example.com", 4500),
                persistent_keepalive=None,
                line=18,
            ),
        ),
    )


def test_minimal_config_defaults(me: KeyPair) -> None:
    config = parse_config(minimal(me))
    assert config.interface_name == "wg0"
    assert config.peers == ()
    interface = config.interface
    assert interface.private_key == me.private
    assert interface.addresses == ()
    assert interface.listen_port is None
    assert interface.mtu is None
    assert interface.dns_servers == ()
    assert interface.dns_search == ()
    assert interface.table == "auto"
    assert interface.fwmark is None


def test_secrets_are_not_in_repr(me: KeyPair, peer: KeyPair) -> None:
    psk = bytes([7]) * 32
    config = parse_config(with_peer(me, peer, f"PresharedKey = {b64(psk)}"))
    text = repr(config)
    assert repr(me.private) not in text
    assert repr(psk) not in text
    assert repr(peer.public) in text  # public keys are useful in logs


# ---------------------------------------------------------------------------------------------
# Lexical rules


def test_comments_blank_lines_case_and_whitespace(me: KeyPair, peer: KeyPair) -> None:
    text = (
        "\ufeff# leading comment\n"
        "\n"
        "   [interface]   # trailing comment\n"
        f"privatekey={me.private_b64}#no space before comment\n"
        "\t ADDRESS   =   100.64.0.9 \r\n"
        "   \n"
        "[ PEER ]\n"
        f"PUBLICKEY = {peer.public_b64}   \n"
        "allowedips = 100.64.0.0/10 # comment\n"
        "# PersistentKeepalive = 25\n"
    )
    config = parse_config(text)
    assert config.interface.private_key == me.private
    assert config.interface.addresses == (ipaddress.IPv4Interface("100.64.0.9/32"),)
    assert config.peers[0].public_key == peer.public
    assert config.peers[0].allowed_ips == (ipaddress.IPv4Network("100.64.0.0/10"),)
    assert config.peers[0].persistent_keepalive is None
    assert config.peers[0].line == 7


def test_peer_before_interface_is_fine(me: KeyPair, peer: KeyPair) -> None:
    text = f"[Peer]\nPublicKey = {peer.public_b64}\n" + minimal(me)
    config = parse_config(text)
    assert config.peers[0].line == 1
    assert config.interface.private_key == me.private


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("just some words", "expected 'Key = Value'"),
        ("= 5", "missing key name"),
        ("[Interface", "malformed section header"),
        ("[Interface] extra", "malformed section header"),
        ("[Wireguard]", "unknown section [Wireguard]"),
    ],
)
def test_syntax_errors(me: KeyPair, line: str, fragment: str) -> None:
    assert_error(minimal(me, "ListenPort = 1", line), 4, fragment)


def test_key_outside_section() -> None:
    assert_error("# comment\nPrivateKey = x\n[Interface]\n", 2, "before any [Interface]")


def test_line_without_equals_is_not_echoed(me: KeyPair) -> None:
    # Someone pasting a bare key must not see it reflected into logs.
    error = assert_error(minimal(me, me.public_b64), 3)
    assert me.public_b64 not in str(error)


# ---------------------------------------------------------------------------------------------
# Sections


def test_missing_interface(peer: KeyPair) -> None:
    assert_error(f"[Peer]\nPublicKey = {peer.public_b64}\n", None, "missing [Interface]")


def test_empty_file() -> None:
    assert_error("", None, "missing [Interface]")


def test_second_interface_section(me: KeyPair) -> None:
    assert_error(minimal(me) + minimal(me), 3, "second [Interface]", "line 1")


def test_missing_private_key() -> None:
    assert_error("\n[Interface]\nAddress = 100.64.0.1\n", 2, "no PrivateKey")


def test_missing_public_key(me: KeyPair) -> None:
    assert_error(minimal(me) + "[Peer]\nAllowedIPs = 100.64.0.0/10\n", 3, "no PublicKey")


# ---------------------------------------------------------------------------------------------
# Keys in the wrong place, unknown and unsupported keys


def test_wg_quick_keys_default_to_wg_quicks_behaviour(me: KeyPair) -> None:
    interface = parse_config(minimal(me)).interface
    assert (interface.table, interface.fwmark) == ("auto", None)
    assert interface.pre_up == interface.post_up == interface.pre_down == interface.post_down == ()


@pytest.mark.parametrize(("value", "table"), [
    ("auto", "auto"), ("AUTO", "auto"), ("off", "off"), ("Off", "off"),
    ("main", 254), ("local", 255), ("Default", 253),
    ("0", 0), ("1234", 1234), ("4294967295", 2**32 - 1), ("0x10", 16),
])
def test_table(me: KeyPair, value: str, table: int | str) -> None:
    assert parse_config(minimal(me, f"Table = {value}")).interface.table == table


@pytest.mark.parametrize(("value", "fragment"), [
    ("4294967296", "from 0 to 4294967295"),
    ("-1", "expected auto, off"),
    ("vpn", "by its number"),
    ("0xfffffffff", "0x"),
])
def test_bad_table(me: KeyPair, value: str, fragment: str) -> None:
    assert_error(minimal(me, f"Table = {value}"), 3, "invalid Table", fragment)


def test_table_once(me: KeyPair) -> None:
    assert_error(minimal(me, "Table = 1", "Table = 2"), 4, "duplicate Table")


@pytest.mark.parametrize(("value", "fwmark"), [
    ("51820", 51820), ("0xca6c", 51820), ("0XCA6C", 51820), ("0x00000001", 1),
    ("4294967295", 2**32 - 1), ("0xffffffff", 2**32 - 1), ("off", None), ("OFF", None),
    ("0", None), ("0x0", None),
])
def test_fwmark(me: KeyPair, value: str, fwmark: int | None) -> None:
    assert parse_config(minimal(me, f"FwMark = {value}")).interface.fwmark == fwmark


@pytest.mark.parametrize("value", ["4294967296", "0x100000000", "0x", "0xg", "-5", "mark",
                                   "1.5", "+3"])
def test_bad_fwmark(me: KeyPair, value: str) -> None:
    assert_error(minimal(me, f"FwMark = {value}"), 3, "invalid FwMark", "off or a number")


def test_hooks_keep_order_and_text(me: KeyPair) -> None:
    text = minimal(
        me,
        "PreUp = echo one %i > /tmp/x",
        "postup = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 "
        "-j MASQUERADE",
        "PreUp = a=b; echo \"$a\"",
        "PostUp =",  # nothing to run, like wg-quick's empty eval
        "PreDown = echo down",
        "POSTDOWN = printf '%s\\n' x   # a comment, cut as wg-quick cuts it",
        "PostDown = second",
    )
    interface = parse_config(text).interface
    assert interface.pre_up == ("echo one %i > /tmp/x", 'a=b; echo "$a"')
    assert interface.post_up == ("iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A "
                                 "POSTROUTING -o eth0 -j MASQUERADE",)
    assert interface.pre_down == ("echo down",)
    assert interface.post_down == ("printf '%s\\n' x", "second")


def test_hooks_belong_in_interface(me: KeyPair, peer: KeyPair) -> None:
    assert_error(with_peer(me, peer, "PostUp = true"), 5, "PostUp belongs in [Interface]")


@pytest.mark.parametrize("value", ["false", "False", "FALSE"])
def test_save_config_false_is_accepted(me: KeyPair, value: str) -> None:
    assert parse_config(minimal(me, f"SaveConfig = {value}")).interface.private_key == me.private


@pytest.mark.parametrize("value", ["true", "True"])
def test_save_config_true_is_refused_with_what_to_do(me: KeyPair, value: str) -> None:
    error = assert_error(minimal(me, f"SaveConfig = {value}"), 3,
                         "SaveConfig = true is not supported", "never rewrites",
                         "wg showconf", "SaveConfig = false")
    assert "invalid" not in error.message


def test_save_config_other_values(me: KeyPair) -> None:
    assert_error(minimal(me, "SaveConfig = yes"), 3, "invalid SaveConfig", "true or false")


@pytest.mark.parametrize("key", ["ListenPort", "MTU", "Table", "FwMark", "SaveConfig"])
def test_a_key_under_the_wrong_name_is_not_echoed(me: KeyPair, key: str) -> None:
    # A private key pasted after the wrong name: the value parsers quote bad values, but never
    # one that looks like a key (base64 or hex of 32 bytes).
    for secret in (me.private_b64, me.private_b64.rstrip("="), me.private.hex()):
        error = assert_error(minimal(me, f"{key} = {secret}"), 3, f"invalid {key}")
        assert secret.rstrip("=") not in str(error)
        assert me.private_b64[:20] not in str(error)


def test_unknown_key(me: KeyPair, peer: KeyPair) -> None:
    assert_error(minimal(me, "Foo = bar"), 3, "unknown key in [Interface] (not a wg-quick key")
    assert_error(with_peer(me, peer, "Foo = bar"), 5, "unknown key in [Peer]")
    # A typo is shown, with the name it is close to.
    assert_error(minimal(me, "Adress = 100.64.0.9/32"), 3,
                 "unknown key 'Adress' in [Interface]; did you mean Address?")
    assert_error(with_peer(me, peer, "PersistentKeepAlive2 = 5"), 5,
                 "did you mean PersistentKeepalive?")


def test_a_key_wrapped_onto_a_line_of_its_own_is_not_shown(me: KeyPair) -> None:
    """The long fuzz run's finding: the tail of a key on a line of its own (a wrapped paste) was
    quoted as an unknown key name, 16 of its characters in the message."""
    tail = me.private_b64[27:]  # 17 characters, the last one "="
    for line in (tail, f"{tail[:5]}\x17{tail[5:]}", f"{tail} = 1"):
        error = assert_error(minimal(me, line), 3, "unknown key in [Interface]")
        assert tail[:8] not in str(error) and tail[8:16] not in str(error)


def test_key_in_wrong_section(me: KeyPair, peer: KeyPair) -> None:
    assert_error(minimal(me, "Endpoint = 198.18.0.1:1"), 3, "Endpoint belongs in [Peer]")
    assert_error(with_peer(me, peer, "MTU = 1420"), 5, "MTU belongs in [Interface]")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PrivateKey", None),
        ("ListenPort", "1"),
        ("MTU", "1400"),
    ],
)
def test_duplicate_interface_keys(me: KeyPair, key: str, value: str | None) -> None:
    value = value or new_keypair().private_b64
    text = minimal(me, f"{key} = {value}", "Address = 100.64.0.1", f"{key} = {value}")
    line = 5 if key != "PrivateKey" else 3
    assert_error(text, line, f"duplicate {key}", "first on line")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PublicKey", None),
        ("PresharedKey", b64(bytes(32))),
        ("Endpoint", "198.18.0.1:51820"),
        ("PersistentKeepalive", "25"),
    ],
)
def test_duplicate_peer_keys(me: KeyPair, peer: KeyPair, key: str, value: str | None) -> None:
    value = value or new_keypair().public_b64
    text = with_peer(me, peer, f"{key} = {value}", f"{key} = {value}")
    line = 5 if key == "PublicKey" else 6
    assert_error(text, line, f"duplicate {key} in [Peer]")


def test_empty_value_for_single_key(me: KeyPair) -> None:
    assert_error(minimal(me, "ListenPort ="), 3, "ListenPort has no value")


def test_empty_list_values_are_allowed(me: KeyPair, peer: KeyPair) -> None:
    config = parse_config(with_peer(me, peer, "AllowedIPs =", "AllowedIPs = ,100.64.0.1,"))
    assert config.peers[0].allowed_ips == (ipaddress.IPv4Network("100.64.0.1/32"),)


# ---------------------------------------------------------------------------------------------
# Peers and keys across sections


def test_duplicate_peer_public_key(me: KeyPair, peer: KeyPair) -> None:
    text = with_peer(me, peer) + f"\n[Peer]\nPublicKey = {peer.public_b64}\n"
    error = assert_error(text, 6, "same PublicKey", "line 3")
    assert peer.public_b64 not in str(error)


def test_peer_with_own_public_key(me: KeyPair) -> None:
    error = assert_error(with_peer(me, me), 4, "own public key")
    assert me.public_b64 not in str(error)
    assert me.private_b64 not in str(error)


def test_any_32_byte_private_key_is_accepted() -> None:
    # Unclamped keys are fine: X25519 clamps. All-zero is odd but valid for wg(8) too.
    for raw in (bytes(32), b"\xff" * 32):
        config = parse_config(f"[Interface]\nPrivateKey = {b64(raw)}\n")
        assert config.interface.private_key == raw


def test_allowed_ip_on_two_peers_goes_to_the_later_one(me: KeyPair, peer: KeyPair) -> None:
    other = new_keypair()
    text = (
        with_peer(me, peer, "AllowedIPs = 100.64.1.0/24, 100.64.2.0/24")
        + f"\n[Peer]\nPublicKey = {other.public_b64}\nAllowedIPs = 100.64.1.9/24\n"
    )
    first, second = parse_config(text).peers
    assert first.allowed_ips == (ipaddress.IPv4Network("100.64.2.0/24"),)
    assert second.allowed_ips == (ipaddress.IPv4Network("100.64.1.0/24"),)


# ---------------------------------------------------------------------------------------------
# Keys


def test_decode_key_roundtrip() -> None:
    pair = new_keypair()
    assert decode_key(pair.public_b64) == pair.public


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "got 0 characters"),
        (b64(bytes(24)), "got 32 characters"),
        (b64(bytes(33)), "ending in one '='"),
        (b64(bytes(34)), "got 48 characters"),
        (b64(bytes(31)), "ending in one '='"),
        ("A" * 44, "ending in one '='"),
        ("A" * 42 + "==", "ending in one '='"),
        ("!" * 43 + "=", "valid base64"),
        ("é" * 43 + "=", "valid base64"),
        ("A" * 42 + "B=", "canonical"),
    ],
)
def test_decode_key_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_key(text)
    assert fragment in str(info.value)


def test_bad_keys_in_config(me: KeyPair, peer: KeyPair) -> None:
    short = b64(me.private[:31])
    error = assert_error(f"[Interface]\nPrivateKey = {short}\n", 2, "invalid PrivateKey")
    assert short not in str(error)
    bad = me.private_b64[:-2] + "*="
    error = assert_error(with_peer(me, peer, f"PresharedKey = {bad}"), 5, "invalid PresharedKey",
                         "base64")
    assert bad not in str(error)
    assert_error(minimal(me) + "[Peer]\nPublicKey = nope\n", 4, "invalid PublicKey")


@given(st.binary(min_size=32, max_size=32))
def test_decode_key_accepts_every_32_bytes(raw: bytes) -> None:
    assert decode_key(b64(raw)) == raw


@given(st.binary(max_size=64).filter(lambda b: len(b) != 32))
def test_decode_key_rejects_other_lengths(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_key(b64(raw))


# ---------------------------------------------------------------------------------------------
# Interface values


def test_addresses_repeatable_comma_and_space_separated(me: KeyPair) -> None:
    config = parse_config(
        minimal(me, "Address = 100.64.0.1, fd00::1/64", "Address = 100.64.0.2/10 fd00::2")
    )
    assert config.interface.addresses == (
        ipaddress.IPv4Interface("100.64.0.1/32"),
        ipaddress.IPv6Interface("fd00::1/64"),
        ipaddress.IPv4Interface("100.64.0.2/10"),
        ipaddress.IPv6Interface("fd00::2/128"),
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("100.64.0.300", "not a valid IP address"),
        ("100.64.0.1/33", "at most 32"),
        ("fd00::1/129", "at most 128"),
        ("100.64.0.1/255.192.0.0", "prefix length must be a number"),
        ("100.64.0.1/", "prefix length must be a number"),
        ("fe80::1%eth0/64", "scoped"),
        ("vpn.example", "not a valid IP address"),
    ],
)
def test_bad_address(me: KeyPair, value: str, fragment: str) -> None:
    assert_error(minimal(me, f"Address = {value}"), 3, "invalid Address", fragment)


def test_duplicate_address(me: KeyPair) -> None:
    text = minimal(me, "Address = 100.64.0.1/10", "Address = 100.64.0.1/32")
    assert_error(text, 4, "duplicate Address 100.64.0.1", "line 3")


def test_listen_port(me: KeyPair) -> None:
    assert parse_config(minimal(me, "ListenPort = 65535")).interface.listen_port == 65535
    assert parse_config(minimal(me, "ListenPort = 0")).interface.listen_port is None


@pytest.mark.parametrize("value", ["65536", "-1", "+5", "1_000", "0x10", "5" * 31, "٣"])
def test_bad_listen_port(me: KeyPair, value: str) -> None:
    assert_error(minimal(me, f"ListenPort = {value}"), 3, "invalid ListenPort", "0 to 65535")


def test_a_huge_listen_port_is_refused_as_key_like(me: KeyPair) -> None:
    # 64 digits are a hex key too (fz_trio.redact): the parser's reason is not shown.
    assert_error(minimal(me, f"ListenPort = {'5' * 5000}"), 3,
                 "invalid ListenPort: a key-like value (not shown)")


def test_mtu_limits(me: KeyPair) -> None:
    assert parse_config(minimal(me, "MTU = 576", "Address = 100.64.0.1")).interface.mtu == 576
    assert parse_config(minimal(me, "MTU = 1280", "Address = fd00::1")).interface.mtu == 1280
    assert_error(minimal(me, "MTU = 575"), 3, "invalid MTU", "576")
    assert_error(minimal(me, "MTU = 65536"), 3, "invalid MTU")
    # The MTU line is named even though the IPv6 address that makes it too small comes later.
    assert_error(minimal(me, "MTU = 1279", "Address = 100.64.0.1, fd00::1"), 3, "IPv6", "1280")


def test_dns_servers_and_search_domains(me: KeyPair) -> None:
    config = parse_config(
        minimal(me, "DNS = 100.64.0.53, fd00::53", "DNS = corp.example home.arpa. svc_x.example")
    )
    assert config.interface.dns_servers == (
        ipaddress.IPv4Address("100.64.0.53"),
        ipaddress.IPv6Address("fd00::53"),
    )
    assert config.interface.dns_search == ("corp.example", "home.arpa.", "svc_x.example")


@pytest.mark.parametrize(
    "value", ["100.64.0", "100.64.0.256", "fd00:::1", "-bad.example", "a..b", "x" * 64, "a/b"]
)
def test_bad_dns(me: KeyPair, value: str) -> None:
    assert_error(minimal(me, f"DNS = {value}"), 3, "invalid DNS")


# ---------------------------------------------------------------------------------------------
# Peer values


def test_allowed_ips_normalised(me: KeyPair, peer: KeyPair) -> None:
    config = parse_config(
        with_peer(
            me,
            peer,
            "AllowedIPs = 100.64.0.1/24, fd00::1:2/64",
            "AllowedIPs = 100.64.7.7, fd00::7, 0.0.0.0/0, 100.64.0.0/24",
        )
    )
    assert config.peers[0].allowed_ips == (
        ipaddress.IPv4Network("100.64.0.0/24"),
        ipaddress.IPv6Network("fd00::/64"),
        ipaddress.IPv4Network("100.64.7.7/32"),
        ipaddress.IPv6Network("fd00::7/128"),
        ipaddress.IPv4Network("0.0.0.0/0"),
    )


@pytest.mark.parametrize("value", ["100.64.0.0/33", "100.64.0.0/8 100.65.0.0/16", "fd00::/x"])
def test_bad_allowed_ips(me: KeyPair, peer: KeyPair, value: str) -> None:
    assert_error(with_peer(me, peer, f"AllowedIPs = {value}"), 5, "invalid AllowedIPs")


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        ("198.18.0.1:51820", EndpointSetting("198.18.0.1", 51820), "198.18.0.1:51820"),
        ("[fd00::1]:51820", EndpointSetting("fd00::1", 51820), "[fd00::1]:51820"),
        ("[FD00:0::0001]:1", EndpointSetting("fd00::1", 1), "[fd00::1]:1"),
        ("vpn.example.com:65535", EndpointSetting("vpn.example.com", 65535),
         "vpn.example.com:65535"),
        ("gw:4500", EndpointSetting("gw", 4500), "gw:4500"),
    ],
)
def test_endpoints(
    me: KeyPair, peer: KeyPair, value: str, expected: EndpointSetting, text: str
) -> None:
    endpoint = parse_config(with_peer(me, peer, f"Endpoint = {value}")).peers[0].endpoint
    assert endpoint == expected
    assert str(endpoint) == text


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("fd00::1:51820", "brackets"),
        ("fd00::1", "brackets"),
        ("198.18.0.1", "host:port"),
        ("198.18.0.1:", "bad port"),
        ("198.18.0.1:0", "bad port"),
        ("198.18.0.1:65536", "bad port"),
        ("198.18.0.1:http", "bad port"),
        (":51820", "no host"),
        ("[fd00::1]51820", "':port'"),
        ("[fd00::1:51820", "closing ']'"),
        ("[198.18.0.1]:51820", "only IPv6"),
        ("[fd00::g]:51820", "not a valid IPv6"),
        ("198.18.0.256:51820", "not a valid IP"),
        ("198.18:51820", "not a valid IP"),
        ("bad_host-.example:1", "not a valid domain"),
    ],
)
def test_bad_endpoints(me: KeyPair, peer: KeyPair, value: str, fragment: str) -> None:
    assert_error(with_peer(me, peer, f"Endpoint = {value}"), 5, "invalid Endpoint", fragment)


@pytest.mark.parametrize(("value", "expected"), [("off", None), ("OFF", None), ("0", None),
                                                 ("25", 25), ("65535", 65535)])
def test_persistent_keepalive(
    me: KeyPair, peer: KeyPair, value: str, expected: int | None
) -> None:
    config = parse_config(with_peer(me, peer, f"PersistentKeepalive = {value}"))
    assert config.peers[0].persistent_keepalive == expected


@pytest.mark.parametrize("value", ["on", "65536", "-1", "25s"])
def test_bad_persistent_keepalive(me: KeyPair, peer: KeyPair, value: str) -> None:
    assert_error(with_peer(me, peer, f"PersistentKeepalive = {value}"), 5,
                 "invalid PersistentKeepalive")


@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(min_value=1, max_value=65535),
)
def test_endpoint_str_parses_back(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                  port: int) -> None:
    me, peer = new_keypair(), new_keypair()
    endpoint = EndpointSetting(str(address), port)
    parsed = parse_config(with_peer(me, peer, f"Endpoint = {endpoint}")).peers[0].endpoint
    assert parsed == endpoint


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.data())
def test_allowed_ips_mask_host_bits(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    prefix = data.draw(st.integers(min_value=0, max_value=address.max_prefixlen))
    me, peer = new_keypair(), new_keypair()
    config = parse_config(with_peer(me, peer, f"AllowedIPs = {address}/{prefix}"))
    (network,) = config.peers[0].allowed_ips
    assert network.prefixlen == prefix
    assert address in network
    assert network.network_address == ipaddress.ip_network(f"{address}/{prefix}",
                                                           strict=False).network_address


_FUZZ_LINES = st.sampled_from(
    ["[Interface]", "[Peer]", "[peer", "PrivateKey = ", "PublicKey = ", "Address = ",
     "AllowedIPs = ", "Endpoint = ", "MTU = ", "DNS = ", "ListenPort = ", "FwMark = 1",
     "PersistentKeepalive = ", "PresharedKey = ", "#", "", "Foo = bar"]
)


@given(st.lists(st.tuples(_FUZZ_LINES, st.text(max_size=50)), max_size=12))
def test_parser_only_raises_config_error(lines: list[tuple[str, str]]) -> None:
    # Whatever the input, callers need only catch ConfigError.
    text = "\n".join(prefix + suffix for prefix, suffix in lines)
    try:
        parse_config(text)
    except ConfigError as error:
        assert error.line is None or error.line >= 1


# ---------------------------------------------------------------------------------------------
# Interface names and files


def test_interface_name_from_file_stem(me: KeyPair) -> None:
    text = minimal(me)
    assert parse_config(text, "/etc/wireguard/wg7.conf").interface_name == "wg7"
    assert parse_config(text, "tunnels/office.vpn.conf").interface_name == "office.vpn"
    assert parse_config(text, "office.txt").interface_name == "office.txt"
    assert parse_config(text, "<stdin>").interface_name == "wg0"


def test_interface_name_override(me: KeyPair) -> None:
    config = parse_config(minimal(me), "/etc/wireguard/wg7.conf", interface_name="tun-x")
    assert config.interface_name == "tun-x"


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a" * 16, "wg 0", "wg:0", "wg\t0", "ü" * 8, "wg\x000"]
)
def test_invalid_interface_name_override(me: KeyPair, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(me), "wg0.conf", interface_name=name)
    assert info.value.line is None
    assert str(info.value).startswith("wg0.conf: ")


def test_invalid_interface_name_from_file(me: KeyPair) -> None:
    with pytest.raises(ConfigError, match="at most 15"):
        parse_config(minimal(me), "/etc/wireguard/a-very-long-name0.conf")
    with pytest.raises(ConfigError, match="valid interface name"):
        parse_config(minimal(me), "..conf")


def test_longest_interface_name(me: KeyPair) -> None:
    assert parse_config(minimal(me), interface_name="a" * 15).interface_name == "a" * 15


def test_load_config(tmp_path: Path, me: KeyPair, peer: KeyPair) -> None:
    path = tmp_path / "wg3.conf"
    path.write_text(with_peer(me, peer, "Endpoint = 198.18.0.1:51820"))
    config = load_config(path)
    assert config.interface_name == "wg3"
    assert config.peers[0].endpoint == EndpointSetting("198.18.0.1", 51820)
    assert load_config(str(path), interface_name="wg9").interface_name == "wg9"


def test_load_config_errors_name_the_file(tmp_path: Path, me: KeyPair) -> None:
    path = tmp_path / "wg3.conf"
    path.write_text(minimal(me, "MTU = 12"))
    with pytest.raises(ConfigError, match=r"wg3\.conf:3: invalid MTU"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.conf")
    path.write_bytes(b"[Interface]\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# ConfigError itself


def test_config_error_formatting_and_pickling() -> None:
    with_line = ConfigError("wg0.conf", 7, "something is wrong")
    assert str(with_line) == "wg0.conf:7: something is wrong"
    without = ConfigError("wg0.conf", None, "missing [Interface] section")
    assert str(without) == "wg0.conf: missing [Interface] section"
    copy = pickle.loads(pickle.dumps(with_line))
    assert (copy.filename, copy.line, copy.message) == ("wg0.conf", 7, "something is wrong")
    assert str(copy) == str(with_line)


def test_example_in_docs_parses() -> None:
    # Keeps docs/config.md honest: its example must be a valid file.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    example = doc.split("```ini\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, "/etc/wireguard/wg0.conf")
    assert config.interface_name == "wg0"
    assert len(config.peers) == 2
    assert config.peers[1].endpoint == EndpointSetting("198.19.0.7", 51820)


# Issue 14's findings: a parser of outside input takes linear time and its errors are short and
# never carry a key.

def test_a_run_of_blanks_in_a_header_takes_linear_time() -> None:
    import time

    started = time.process_time()
    for text in ("[" + " " * 20000 + "x", "[" + " " * 20000 + "]", "[Peer" + " " * 20000):
        with pytest.raises(ConfigError, match="section"):
            parse_config(text)
    assert time.process_time() - started < 1.0  # cubic backtracking took 20 s for 4000 blanks


@pytest.mark.parametrize("line", [
    "PrivateKey: {key}", "{key}", "{key} = 1", "Private{key}Key = x",
])
def test_a_key_on_the_wrong_line_is_never_echoed(line: str) -> None:
    from fz_trio.core import encode_key, generate_private_key

    key = encode_key(generate_private_key())
    with pytest.raises(ConfigError) as info:
        parse_config("[Interface]\n" + line.format(key=key) + "\n")
    assert key not in str(info.value) and key[:20] not in str(info.value), str(info.value)


def test_errors_stay_short_whatever_the_input() -> None:
    for text in ("[Interface]\n" + "K" * 1_000_000 + " = 1\n",
                 "[" + "é" * 100_000 + "]\n",
                 "[Interface]\nMTU = " + "9" * 100_000 + "\n",
                 "x" * 100_000 + " = 1\n"):
        with pytest.raises(ConfigError) as info:
            parse_config(text)
        assert len(str(info.value)) < 400, str(info.value)[:500]


# ---------------------------------------------------------------------------------------------
# What messages show of the file (fz_trio.redact), and the findings of fuzz/fuzz_config.py

def key_text_with_slash_at(low: int, high: int) -> str:
    """A base64 key whose first '/' is at an index from `low` to `high` (deterministic)."""
    import hashlib

    for i in range(10_000):
        text = b64(hashlib.sha256(str(i).encode()).digest())
        if low <= text.find("/") <= high:
            return text
    raise AssertionError("no such key")


def pieces(text: str, size: int = 16) -> list[str]:
    return [text[i:i + size] for i in range(len(text) - size + 1)]


def assert_shows_nothing_of(error: ConfigError, secret: str) -> None:
    for piece in pieces(secret):
        assert piece not in str(error), str(error)


def test_fuzz_finding_messages_are_at_most_300_characters(me: KeyPair) -> None:
    # fuzz_config, the first finding: a cut message was 300 characters and then its "…".
    error = error_of(minimal(me, "Address = 100." + "\ufffd" * 90 + "64.0.2/24"))
    assert len(error.message) == 300 and error.message.endswith("…"), error.message
    assert "invalid Address" in error.message


@pytest.mark.parametrize("key", ["Address", "AllowedIPs", "DNS", "Endpoint"])
def test_fuzz_finding_a_key_cut_at_its_slash_is_not_shown(me: KeyPair, peer: KeyPair,
                                                          key: str) -> None:
    # fuzz_config, the second finding: `Address = <a key>` where the key holds a '/': the
    # address parser quoted what came before the slash (up to 42 characters of the key), too
    # short for the key-like pattern of the time (43 characters).
    secret = key_text_with_slash_at(20, 40)
    for value in (secret, "100" + secret[2:], f"10.0.0.1, {secret}"):
        text = with_peer(me, peer, f"{key} = {value}") if key in ("AllowedIPs", "Endpoint") \
            else minimal(me, f"{key} = {value}")
        error = error_of(text)
        assert f"invalid {key}: a key-like value (not shown)" in error.message, str(error)
        assert_shows_nothing_of(error, secret)


def test_a_mistyped_key_on_a_wrong_line_is_not_shown(me: KeyPair) -> None:
    # A key with a few characters lost is still key-like (32 base64 characters or more).
    for secret in (me.private_b64[:-5], me.private.hex()[:40], me.private_b64[3:] + "x!"):
        error = assert_error(minimal(me, f"MTU = {secret}"), 3, "invalid MTU", "not shown")
        assert_shows_nothing_of(error, secret)


def test_long_values_are_cut_to_40_characters(me: KeyPair, peer: KeyPair) -> None:
    name = "Unknown-" * 100
    error = assert_error(minimal(me, f"{name} = 1"), 3, "unknown key in [Interface]")
    assert name[:20] not in error.message
    error = assert_error(minimal(me, "[" + "Section-" * 100 + "]"), 3, "unknown section [Sect")
    assert len(error.message) < 120
    # A parser's reason quotes a long value whole: the message is bounded instead.
    error = assert_error(with_peer(me, peer, "Endpoint = " + "vpn-" * 500 + ":x"), 5,
                         "invalid Endpoint")
    assert len(error.message) <= 300


def test_control_characters_in_a_name_are_escaped(me: KeyPair) -> None:
    error = assert_error(minimal(me, "Addr\x1bess = 1"), 3, "unknown key 'Addr\\x1bess'")
    assert "\x1b" not in str(error)


def test_config_error_bounds_its_message_and_stays_picklable() -> None:
    error = ConfigError("wg0.conf", 2, "x " * 500 + b64(bytes(range(32))))
    assert len(error.message) == 300 and error.message.endswith("…")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.message == error.message and str(copy) == str(error)
    assert b64(bytes(range(32))) not in ConfigError("f", None, "k " + b64(bytes(32))).message


def test_what_counts_as_key_like() -> None:
    from fz_trio.redact import has_key_like, reason, shown

    key = b64(bytes(range(32)))
    for text in (key, key[:-1], key[:32], bytes(32).hex(), "x" + bytes(range(32)).hex() + "y",
                 "5" * 64):
        assert has_key_like(text), text
        assert "not shown" in shown(text) and key[:20] not in shown(text)
    for text in ("", "fd00:64::1/128", "vpn.example.com", "a" * 31, "100.64.0.1/24"):
        assert not has_key_like(text), text
        assert shown(text) == text
    assert reason("1.2.3.4:x", ValueError("bad port 'x'")) == "bad port 'x'"
    assert reason(key, ValueError(f"'{key}' is bad")) == "a key-like value (not shown)"
