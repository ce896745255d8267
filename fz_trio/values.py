"""Value parsers shared by the two ways fz-trio is told a configuration: wg-quick files
(`fz_trio.config`) and the cross-platform userspace API (`fz_trio.uapi`).

Pure: no sockets, no DNS. Each parser takes the value text and returns the parsed value or
raises ValueError. A message may quote the value (config's and uapi's callers decide what to show
of it), but the key parsers in `fz_trio.core.keys` never echo their input.

Where the two formats differ, the stricter UAPI rules (those of Go's `netip` package, which
wireguard-go uses) are asked for with `strict=True` or by a separate function
(`parse_ip_endpoint`).
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from fz_trio.core import Endpoint, Network, as_network, format_endpoint

__all__ = [
    "EndpointSetting",
    "IPAddress",
    "check_domain",
    "looks_like_ip",
    "parse_endpoint",
    "parse_ip",
    "parse_ip_endpoint",
    "parse_network",
    "parse_prefixed",
    "parse_uint",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class EndpointSetting:
    """A peer's `Endpoint =` as written: the host may be a DNS name, which the app resolves at
    start (into a `fz_trio.core.Endpoint`), as wg-quick does."""

    host: str  # IP literal without brackets, or a DNS name
    port: int

    def __str__(self) -> str:
        return format_endpoint((self.host, self.port))


def parse_uint(text: str, low: int, high: int) -> int:
    """A decimal number from `low` to `high`: ASCII digits only, leading zeros allowed (as Go's
    strconv.ParseUint with base 10, and wg(8))."""
    # int() would also take "+5", "1_000", " 5", non-ASCII digits and raise on 5000-digit strings.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected a number from {low} to {high}, got {text!r}")
    if len(text.lstrip("0")) > len(str(high)):
        raise ValueError(f"expected a number from {low} to {high}, got a larger one")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"expected a number from {low} to {high}, got {value}")
    return value


_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_DIGITS_AND_DOTS_RE = re.compile(r"[0-9.]+")


def looks_like_ip(token: str) -> bool:
    """wg-quick's own rule for DNS= entries: digits-and-dots or anything with a colon is an
    address (so a mistyped address is reported as one, not as a bad domain)."""
    return bool(_DIGITS_AND_DOTS_RE.fullmatch(token)) or ":" in token


def check_domain(token: str) -> str:
    """`token` if it is a syntactically valid DNS name (labels of letters, digits, '-', '_')."""
    if len(token.rstrip(".")) > 253 or not _DOMAIN_RE.fullmatch(token):
        raise ValueError(f"{token!r} is not a valid domain name")
    return token


def parse_ip(token: str) -> IPAddress:
    """An IPv4 or IPv6 address literal (a colon means IPv6)."""
    try:
        if ":" in token:
            return ipaddress.IPv6Address(token)
        return ipaddress.IPv4Address(token)
    except ValueError as e:
        raise ValueError(f"{token!r} is not a valid IP address ({e})") from None


def parse_prefixed(token: str, *, strict: bool = False) -> tuple[IPAddress, int]:
    """Parse "addr/len", or a bare "addr" meaning a single host (/32 or /128).

    With `strict` (Go's netip.ParsePrefix, what wireguard-go applies to `allowed_ip`), the
    "/len" is required and written without leading zeros.
    """
    if "%" in token:
        raise ValueError(f"{token!r}: scoped (%zone) addresses are not allowed here")
    address, slash, prefix_text = token.partition("/")
    if not slash and strict:
        raise ValueError(f"{token!r} needs a prefix length, like /32 or /128")
    ip = parse_ip(address)
    if not slash:
        return ip, ip.max_prefixlen
    # Explicit check: ipaddress would also take netmask spellings such as /255.255.255.0,
    # which wg(8) does not.
    if not (prefix_text.isascii() and prefix_text.isdigit()) or len(prefix_text) > 3:
        raise ValueError(f"{token!r}: the prefix length must be a number")
    if strict and len(prefix_text) > 1 and prefix_text[0] == "0":
        raise ValueError(f"{token!r}: the prefix length must not have leading zeros")
    prefix = int(prefix_text)
    if prefix > ip.max_prefixlen:
        raise ValueError(f"{token!r}: the prefix length must be at most {ip.max_prefixlen}")
    return ip, prefix


def parse_network(token: str, *, strict: bool = False) -> Network:
    """A prefix as the core routes it; host bits are masked ("10.0.0.1/24" is 10.0.0.0/24), as
    the kernel and wireguard-go store it. `strict` as for `parse_prefixed`."""
    ip, prefix = parse_prefixed(token, strict=strict)
    return as_network(f"{ip}/{prefix}")


def _split_host_port(text: str) -> tuple[str, str]:
    """(host, port text) of "host:port" or "[v6]:port"; an IPv6 host comes back checked and
    canonical (possibly with a %zone), any other host unchecked."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r} is missing the closing ']'")
        if not rest.startswith(":"):
            raise ValueError(f"{text!r} needs ':port' after ']'")
        if not host or ":" not in host:
            raise ValueError(f"{text!r}: only IPv6 addresses go in brackets")
        try:
            return str(ipaddress.IPv6Address(host)), rest[1:]
        except ValueError as e:
            raise ValueError(f"{host!r} is not a valid IPv6 address ({e})") from None
    host, colon, port_text = text.rpartition(":")
    if not colon:
        raise ValueError(f"{text!r} must be host:port")
    if ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 endpoint in brackets, like [fd00::1]:51820")
    if not host:
        raise ValueError(f"{text!r} has no host")
    return host, port_text


def _parse_port(text: str, port_text: str, low: int = 1) -> int:
    try:
        return parse_uint(port_text, low, 65535)
    except ValueError as e:
        raise ValueError(f"bad port in {text!r}: {e}") from None


def parse_endpoint(text: str) -> EndpointSetting:
    """A wg-quick `Endpoint`: "host:port" where the host is an IPv4 address or a DNS name, or
    "[v6]:port"."""
    host, port_text = _split_host_port(text)
    if not text.startswith("["):
        if looks_like_ip(host):
            host = str(parse_ip(host))
        else:
            check_domain(host)
    return EndpointSetting(host, _parse_port(text, port_text))


def parse_ip_endpoint(text: str, *, allow_zone: bool = False,
                      allow_port_zero: bool = False) -> Endpoint:
    """A UAPI `endpoint`: an IP literal and a port, "1.2.3.4:51820" or "[fd00::1]:51820"; no DNS
    names (wg(8) resolves them before it sends).

    By default also no %zone and no port 0, which nothing can be sent to: wireguard-go accepts
    both and fails later, at the socket. A client reading what a server reports allows them.
    """
    host, port_text = _split_host_port(text)
    if "%" in host and not allow_zone:
        raise ValueError(f"{text!r}: scoped (%zone) addresses are not supported")
    if not text.startswith("["):
        host = str(parse_ip(host))
    return host, _parse_port(text, port_text, 0 if allow_port_zero else 1)
