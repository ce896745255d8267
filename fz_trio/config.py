"""Parser for wg-quick configuration files (``wg0.conf``).

Pure: no sockets, no DNS, no system calls. ``load_config`` is the only function that touches the
filesystem, and only to read the one file it is given.

The accepted format is the union of what wg(8) ``setconf`` and wg-quick(8) accept, with one
refusal: ``SaveConfig = true`` (fz-trio never rewrites the file). Every problem is reported as a
``ConfigError`` naming file and line, and key material never appears in a message: a config file
pasted into a bug report must not leak a key through our error output. What a message may show
of the file, and how long it may be, is `fz_trio.redact`'s rule.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any

import attrs

from fz_trio.core import Network, decode_key, public_key_of
from fz_trio.ifname import check_interface_name
from fz_trio.redact import bounded, reason, shown
from fz_trio.values import (
    EndpointSetting,
    IPAddress,
    check_domain,
    looks_like_ip,
    parse_endpoint,
    parse_ip,
    parse_network,
    parse_prefixed,
    parse_uint,
)

__all__ = [
    "TABLE_AUTO",
    "TABLE_OFF",
    "Config",
    "ConfigError",
    "EndpointSetting",
    "InterfaceConfig",
    "PeerConfig",
    "load_config",
    "parse_config",
]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# The kernel refuses to enable IPv6 on a link below 1280 (RFC 8200); 576 is the IPv4 minimum
# every host must accept (RFC 791).
MIN_MTU_IPV4 = 576
MIN_MTU_IPV6 = 1280
MAX_MTU = 65535

TABLE_AUTO = "auto"
TABLE_OFF = "off"
MAX_UINT32 = 2**32 - 1
# The tables iproute2 names without reading /etc/iproute2/rt_tables (its built-in ones).
_TABLE_NAMES = {"main": 254, "local": 255, "default": 253}

# Used when parse_config gets a pseudo file name such as "<config>" and no explicit name.
DEFAULT_INTERFACE_NAME = "wg0"


class ConfigError(Exception):
    """A configuration file is malformed or asks for something we cannot do. The message holds
    no key-like text and is at most `fz_trio.redact.MAX_MESSAGE` characters long."""

    def __init__(self, filename: str, line: int | None, message: str) -> None:
        message = bounded(message)
        # Passing all three to Exception keeps the error picklable (trio/threads may carry it).
        super().__init__(filename, line, message)
        self.filename = filename
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.filename}: {self.message}"
        return f"{self.filename}:{self.line}: {self.message}"


@attrs.frozen
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = attrs.field(repr=False)  # a secret, like the private key
    allowed_ips: tuple[Network, ...]
    endpoint: EndpointSetting | None
    persistent_keepalive: int | None  # seconds; None means off
    line: int  # line of the [Peer] header


@attrs.frozen
class InterfaceConfig:
    # Kept out of repr so logs never show it; None only for `fz-trio IFNAME` (set over UAPI).
    private_key: bytes | None = attrs.field(repr=False)
    addresses: tuple[IPInterface, ...]
    listen_port: int | None  # None: the kernel picks a port (ListenPort = 0 means the same)
    mtu: int | None  # None: choose automatically
    dns_servers: tuple[IPAddress, ...]
    dns_search: tuple[str, ...]
    # wg-quick's Table: "auto" (its routing, full tunnel included), "off" (no routes) or a
    # table number (the names ip(8) always knows become their numbers).
    table: int | str = TABLE_AUTO
    fwmark: int | None = None  # None: no mark (FwMark = off or 0)
    # Shell commands in file order, `%i` not yet expanded (fz_trio.shell.hooks does that).
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()


@attrs.frozen
class Config:
    interface_name: str
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]


# --------------------------------------------------------------------------------------------
# Value parsers. Each takes the stripped value text and raises ValueError with a message that may
# quote the value (the caller shows it only through fz_trio.redact.reason). Those the UAPI needs
# too live in fz_trio.values.


def _parse_interface_address(token: str) -> IPInterface:
    ip, prefix = parse_prefixed(token)
    return ipaddress.ip_interface((ip, prefix))


def _parse_keepalive(text: str) -> int | None:
    if text.lower() == "off":
        return None
    return parse_uint(text, 0, 65535) or None


def _parse_listen_port(text: str) -> int | None:
    # 0 asks the kernel for a random port, exactly like leaving the key out.
    return parse_uint(text, 0, 65535) or None


def _parse_mtu(text: str) -> int:
    # The IPv6 minimum depends on the addresses, so it is checked once the section is complete.
    return parse_uint(text, MIN_MTU_IPV4, MAX_MTU)


def _parse_u32(text: str) -> int:
    # wg(8)'s FwMark rule: decimal, or hexadecimal after "0x".
    if text[:2].lower() == "0x" and len(text) > 2:
        digits = text[2:]
        if not (digits.isascii() and all(c in "0123456789abcdefABCDEF" for c in digits)) \
                or len(digits.lstrip("0")) > 8:
            raise ValueError(f"expected a number from 0 to {MAX_UINT32} (or 0x...), "
                             f"got {text!r}")
        return int(digits, 16)
    return parse_uint(text, 0, MAX_UINT32)


def _parse_fwmark(text: str) -> int | None:
    if text.lower() == "off":
        return None
    try:
        return _parse_u32(text) or None
    except ValueError:
        raise ValueError(f"expected off or a number from 0 to {MAX_UINT32} (0x... for "
                         f"hexadecimal), got {text!r}") from None


def _parse_table(text: str) -> int | str:
    lowered = text.lower()
    if lowered in (TABLE_AUTO, TABLE_OFF):
        return lowered
    if lowered in _TABLE_NAMES:
        return _TABLE_NAMES[lowered]
    if text[:1].isdigit():
        return _parse_u32(text)
    # Other names live in /etc/iproute2/rt_tables, and this parser reads no other file.
    raise ValueError(f"expected auto, off, main, local, default or a table number from 0 to "
                     f"{MAX_UINT32}, got {text!r} (give a table named in "
                     f"/etc/iproute2/rt_tables by its number)")


def _parse_hook(text: str) -> list[str]:
    # One line, one command, kept as written (an empty one would run nothing).
    return [text] if text else []


class _Refused(ValueError):
    """A valid value fz-trio will not act on; its message stands alone (no "invalid")."""


def _parse_save_config(text: str) -> bool:
    lowered = text.lower()  # wg-quick reads it case-insensitively too
    if lowered == "true":
        raise _Refused("SaveConfig = true is not supported: fz-trio never rewrites its config "
                       "file (`wg showconf IFACE` prints the running config, to save it by "
                       "hand); remove the line or set SaveConfig = false")
    if lowered != "false":
        raise ValueError(f"expected true or false, got {text!r}")
    return False


def _split_list(text: str, *, on_whitespace: bool) -> list[str]:
    # wg-quick word-splits Address and DNS after replacing commas, so blanks separate items
    # there too; AllowedIPs goes to wg(8), which only knows commas.
    pattern = r"[,\s]+" if on_whitespace else r","
    return [item.strip() for item in re.split(pattern, text) if item.strip()]


def _list_parser(
    parse_item: Callable[[str], Any], *, on_whitespace: bool
) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [parse_item(item) for item in _split_list(text, on_whitespace=on_whitespace)]

    return parse


def _parse_dns_token(token: str) -> IPAddress | str:
    if looks_like_ip(token):
        return parse_ip(token)
    return check_domain(token)


# --------------------------------------------------------------------------------------------
# Key tables.


@attrs.frozen
class _KeySpec:
    name: str  # canonical spelling, used in messages
    parse: Callable[[str], Any]
    repeatable: bool = False  # list keys: each line adds items
    # The key parsers never echo their input (it is a key), so their reasons are always shown.
    echoes: bool = True


def _specs(*specs: _KeySpec) -> dict[str, _KeySpec]:
    return {spec.name.lower(): spec for spec in specs}


_INTERFACE_KEYS = _specs(
    _KeySpec("PrivateKey", decode_key, echoes=False),
    _KeySpec("Address", _list_parser(_parse_interface_address, on_whitespace=True), True),
    _KeySpec("ListenPort", _parse_listen_port),
    _KeySpec("MTU", _parse_mtu),
    _KeySpec("DNS", _list_parser(_parse_dns_token, on_whitespace=True), True),
    _KeySpec("Table", _parse_table),
    _KeySpec("FwMark", _parse_fwmark),
    _KeySpec("PreUp", _parse_hook, True),
    _KeySpec("PostUp", _parse_hook, True),
    _KeySpec("PreDown", _parse_hook, True),
    _KeySpec("PostDown", _parse_hook, True),
    _KeySpec("SaveConfig", _parse_save_config),
)

_PEER_KEYS = _specs(
    _KeySpec("PublicKey", decode_key, echoes=False),
    _KeySpec("PresharedKey", decode_key, echoes=False),
    _KeySpec("AllowedIPs", _list_parser(parse_network, on_whitespace=False), True),
    _KeySpec("Endpoint", parse_endpoint),
    _KeySpec("PersistentKeepalive", _parse_keepalive),
)

_SECTION_KEYS = {"Interface": _INTERFACE_KEYS, "Peer": _PEER_KEYS}
_SECTION_NAMES = {name.lower(): name for name in _SECTION_KEYS}
_LONGEST_NAME = max(len(spec.name) for keys in _SECTION_KEYS.values() for spec in keys.values())


# --------------------------------------------------------------------------------------------
# Reading lines into sections.


class _Invalid(Exception):
    """Internal: a problem at a line; parse_config adds the file name."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(line, message)
        self.line = line
        self.message = message


@attrs.define
class _Section:
    kind: str  # "Interface" or "Peer"
    line: int
    # canonical key name -> parsed values with their line numbers; list keys are flattened
    values: dict[str, list[tuple[Any, int]]] = attrs.Factory(dict)

    def add(self, spec: _KeySpec, value: Any, line: int) -> None:
        entries = self.values.setdefault(spec.name, [])
        if spec.repeatable:
            entries.extend((item, line) for item in value)
            return
        if entries:
            first = entries[0][1]
            raise _Invalid(line, f"duplicate {spec.name} in [{self.kind}] (first on line {first})")
        entries.append((value, line))

    def single(self, name: str) -> tuple[Any, int] | None:
        entries = self.values.get(name)
        return entries[0] if entries else None

    def items(self, name: str) -> list[tuple[Any, int]]:
        return self.values.get(name, [])


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Yield (line number, content without comment and surrounding blanks), skipping blanks."""
    text = text.removeprefix("\ufeff")  # editors on other systems may prepend a BOM
    for number, raw in enumerate(text.split("\n"), start=1):
        content = raw.split("#", 1)[0].strip()
        if content:
            yield number, content


def _unknown_key(key: str, kind: str) -> str:
    """Why `key` is refused. The name is quoted only when it is close to a name wg-quick knows
    (a typo worth showing): anything else may be a piece of a key pasted or wrapped onto a line
    of its own, which no message shows even in part."""
    lowered = key.lower()
    for other, specs in _SECTION_KEYS.items():
        if other != kind and lowered in specs:
            return f"{specs[lowered].name} belongs in [{other}], not [{kind}]"
    names = {spec.name.lower(): spec.name for spec in _SECTION_KEYS[kind].values()}
    close = (difflib.get_close_matches(lowered, names, n=1, cutoff=0.75)
             if len(key) <= 2 * _LONGEST_NAME else [])
    if not close:
        return f"unknown key in [{kind}] (not a wg-quick key name; the line is not shown)"
    return f"unknown key '{shown(key)}' in [{kind}]; did you mean {names[close[0]]}?"


def _read_sections(text: str) -> list[_Section]:
    sections: list[_Section] = []
    current: _Section | None = None
    for number, content in _logical_lines(text):
        if content.startswith("["):
            current = _read_header(content, number)
            sections.append(current)
            continue
        key, equals, value = content.partition("=")
        key, value = key.strip(), value.strip()
        # Deliberately not echoing the line: it could be a key pasted on its own.
        if not equals:
            raise _Invalid(number, "expected 'Key = Value' or a [Section] header")
        if not key:
            raise _Invalid(number, "missing key name before '='")
        if current is None:
            raise _Invalid(number, "a key appears before any [Interface] or [Peer] section")
        spec = _SECTION_KEYS[current.kind].get(key.lower())
        if spec is None:
            raise _Invalid(number, _unknown_key(key, current.kind))
        if not value and not spec.repeatable:
            raise _Invalid(number, f"{spec.name} has no value")
        try:
            parsed = spec.parse(value)
        except _Refused as e:
            raise _Invalid(number, str(e)) from None
        except ValueError as e:
            # The parsers quote what they got, which helps with a typo but must not show a key
            # pasted next to the wrong name (`ListenPort = <a private key>`), or a piece of one.
            why = reason(value, e) if spec.echoes else str(e)
            raise _Invalid(number, f"invalid {spec.name}: {why}") from None
        current.add(spec, parsed, number)
    return sections


def _read_header(content: str, number: int) -> _Section:
    # By hand, not by a regex: a run of blanks between a bracket and the end made the pattern
    # backtrack in cubic time (4000 blanks: 20 s).
    inner = content[1:-1] if content.endswith("]") else None
    if inner is None or "[" in inner or "]" in inner:
        raise _Invalid(number, "malformed section header; expected [Interface] or [Peer]")
    name = inner.strip()
    kind = _SECTION_NAMES.get(name.lower())
    if kind is None:
        raise _Invalid(number, f"unknown section [{shown(name)}]; expected [Interface] or "
                               f"[Peer]")
    return _Section(kind, number)


# --------------------------------------------------------------------------------------------
# Building the value objects and checking what spans several lines.


def _build_interface(section: _Section) -> InterfaceConfig:
    private_key = section.single("PrivateKey")
    if private_key is None:
        raise _Invalid(section.line, "[Interface] has no PrivateKey")
    addresses = _unique_addresses(section.items("Address"))
    mtu = section.single("MTU")
    if mtu is not None:
        _check_mtu(mtu[0], mtu[1], addresses)
    dns = [value for value, _ in section.items("DNS")]
    listen_port = section.single("ListenPort")
    table = section.single("Table")
    fwmark = section.single("FwMark")

    def hooks(name: str) -> tuple[str, ...]:
        return tuple(command for command, _ in section.items(name))

    return InterfaceConfig(
        private_key=private_key[0],
        addresses=tuple(addresses),
        listen_port=listen_port[0] if listen_port else None,
        mtu=mtu[0] if mtu else None,
        dns_servers=tuple(v for v in dns if not isinstance(v, str)),
        dns_search=tuple(v for v in dns if isinstance(v, str)),
        table=table[0] if table else TABLE_AUTO,
        fwmark=fwmark[0] if fwmark else None,
        pre_up=hooks("PreUp"),
        post_up=hooks("PostUp"),
        pre_down=hooks("PreDown"),
        post_down=hooks("PostDown"),
    )


def _unique_addresses(entries: list[tuple[IPInterface, int]]) -> list[IPInterface]:
    # `ip address add` fails on the second copy of an address, which would abort `up` midway.
    first_line: dict[IPAddress, int] = {}
    for address, line in entries:
        if address.ip in first_line:
            raise _Invalid(
                line, f"duplicate Address {address.ip} (first on line {first_line[address.ip]})"
            )
        first_line[address.ip] = line
    return [address for address, _ in entries]


def _check_mtu(mtu: int, line: int, addresses: list[IPInterface]) -> None:
    if mtu < MIN_MTU_IPV6 and any(address.version == 6 for address in addresses):
        raise _Invalid(
            line, f"invalid MTU: an IPv6 Address needs at least {MIN_MTU_IPV6}, got {mtu}"
        )


def _build_peer(section: _Section) -> PeerConfig:
    public_key = section.single("PublicKey")
    if public_key is None:
        raise _Invalid(section.line, "[Peer] has no PublicKey")
    preshared = section.single("PresharedKey")
    endpoint = section.single("Endpoint")
    keepalive = section.single("PersistentKeepalive")
    allowed = dict.fromkeys(network for network, _ in section.items("AllowedIPs"))
    return PeerConfig(
        public_key=public_key[0],
        preshared_key=preshared[0] if preshared else None,
        allowed_ips=tuple(allowed),
        endpoint=endpoint[0] if endpoint else None,
        persistent_keepalive=keepalive[0] if keepalive else None,
        line=section.line,
    )


def _check_peer_keys(peer_sections: list[_Section], own_public_key: bytes) -> None:
    first_line: dict[bytes, int] = {}
    for section in peer_sections:
        key, line = section.values["PublicKey"][0]
        if key == own_public_key:
            raise _Invalid(line, "PublicKey is this interface's own public key (from PrivateKey)")
        if key in first_line:
            raise _Invalid(
                line, f"two peers have the same PublicKey ([Peer] on line {first_line[key]})"
            )
        first_line[key] = section.line


def _give_allowed_ips_to_last_peer(peers: list[PeerConfig]) -> list[PeerConfig]:
    # The kernel keeps one owner per prefix: adding it to a later peer moves it there. Doing the
    # same here means the Config describes exactly the routing wg(8) would set up.
    owner: dict[Network, int] = {}
    for index, peer in enumerate(peers):
        for network in peer.allowed_ips:
            owner[network] = index
    return [
        attrs.evolve(
            peer, allowed_ips=tuple(n for n in peer.allowed_ips if owner[n] == index)
        )
        for index, peer in enumerate(peers)
    ]


def _build_config(sections: list[_Section], interface_name: str) -> Config:
    interfaces = [s for s in sections if s.kind == "Interface"]
    if not interfaces:
        raise _Invalid(None, "missing [Interface] section")
    if len(interfaces) > 1:
        raise _Invalid(
            interfaces[1].line, f"second [Interface] section (first on line {interfaces[0].line})"
        )
    interface = _build_interface(interfaces[0])
    peer_sections = [s for s in sections if s.kind == "Peer"]
    peers = [_build_peer(s) for s in peer_sections]
    assert interface.private_key is not None  # _build_interface requires one
    _check_peer_keys(peer_sections, public_key_of(interface.private_key))
    return Config(interface_name, interface, tuple(_give_allowed_ips_to_last_peer(peers)))


# --------------------------------------------------------------------------------------------
# Interface names and the public entry points.


def _default_interface_name(filename: str) -> str:
    if filename.startswith("<") and filename.endswith(">"):
        return DEFAULT_INTERFACE_NAME  # text not from a file, e.g. "<config>" or "<stdin>"
    return PurePath(filename).name.removesuffix(".conf")


def parse_config(
    text: str, filename: str = "<config>", interface_name: str | None = None
) -> Config:
    """Parse wg-quick config text. The interface name defaults to the file name minus ".conf"."""
    try:
        name = interface_name if interface_name is not None else _default_interface_name(filename)
        check_interface_name(name)
    except ValueError as e:
        raise ConfigError(filename, None, str(e)) from None
    try:
        return _build_config(_read_sections(text), name)
    except _Invalid as e:
        raise ConfigError(filename, e.line, e.message) from None


def load_config(path: str | os.PathLike[str], interface_name: str | None = None) -> Config:
    """Read and parse a config file; read failures are ConfigErrors too, for one error path."""
    filename = os.fspath(path)
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ConfigError(filename, None, "the file is not valid UTF-8 text") from None
    except OSError as e:
        raise ConfigError(filename, None, f"cannot read: {e.strerror or e}") from None
    return parse_config(text, filename, interface_name)
