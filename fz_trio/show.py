"""`fz-trio show`: a running interface as `wg show` prints it, plus what only fz-trio knows.

Pure formatting: a `DeviceState` (what UAPI `get` reports), optionally fz-trio's status object
(the `fz_status` extension; None for another implementation), and the wall clock `now` in, text
out. No sockets, no clock.

The text is `wg show`'s plain layout (stdout not a terminal, so no colour), line for line:
wireguard-tools' show.c `pretty_print` with its `pretty_time`, `ago`, `every` and `bytes`, the
peers in its order (latest handshake first, peers that never had one last, otherwise as the
server listed them), addresses spelled as glibc's inet_ntop spells them, keys always
"(hidden)" (as wg without WG_HIDE_KEYS=never). fz-trio's extras come after wg's lines of each
section, every one starting with "  fz-trio: ", so dropping those lines gives exactly what
`wg show` prints for the same state.

`--json` (`show_json`, one object per interface, one line each) — the format:

    {
      "interface": "wg0",                      # the interface name
      "public_key": "base64..." | null,        # null: the interface has no private key
      "listen_port": 51820,                    # the bound UDP port; 0: none
      "fwmark": 0,                             # 0: off
      "peers": [                               # in `wg show`'s order (see above)
        {
          "public_key": "base64...",
          "has_preshared_key": true,           # whether one is set; the key itself never
          "endpoint": "198.18.0.2:51820" | "[fd00::2]:51820" | null,
          "allowed_ips": ["100.64.0.2/32", "fd00::/64"],   # in the server's order
          "latest_handshake": 1767225600 | null,  # unix seconds; null: never
          "rx_bytes": 1234,
          "tx_bytes": 5678,
          "persistent_keepalive": 25           # seconds; 0: off
        }
      ],
      "fz_trio": {...} | null                  # the fz_status object as the daemon sent it
    }                                          # (peers keyed by hex public key); null when
                                               # the interface is not served by fz-trio

The private key and the preshared keys are never in the output, text or JSON (the status
object holds no key material by the daemon's contract; only public keys, in hex).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fz_trio.core import Network, encode_hex_key, encode_key, public_key_of
from fz_trio.core import format_endpoint as core_format_endpoint
from fz_trio.uapi import DeviceState, PeerState

__all__ = [
    "EXTRA_PREFIX",
    "ago",
    "every",
    "format_address",
    "format_bytes",
    "format_endpoint",
    "format_network",
    "pretty_time",
    "show_interfaces",
    "show_json",
    "show_text",
    "show_object",
    "sort_peers",
]

EXTRA_PREFIX: Final = "  fz-trio: "

_YEAR: Final = 365 * 24 * 60 * 60
_DAY: Final = 24 * 60 * 60
_HOUR: Final = 60 * 60
_MINUTE: Final = 60
_UNITS: Final = (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30))


# --------------------------------------------------------------------------------------------
# wg's wording.


def pretty_time(seconds: int) -> str:
    """show.c's pretty_time: "1 year, 2 days, 1 hour, 5 minutes, 1 second"; zero parts are
    left out ("" for 0)."""
    years, left = divmod(seconds, _YEAR)
    days, left = divmod(left, _DAY)
    hours, left = divmod(left, _HOUR)
    minutes, secs = divmod(left, _MINUTE)
    parts = [f"{count} {unit}{'' if count == 1 else 's'}"
             for count, unit in ((years, "year"), (days, "day"), (hours, "hour"),
                                 (minutes, "minute"), (secs, "second")) if count]
    return ", ".join(parts)


def ago(handshake_seconds: int, now: float) -> str:
    """show.c's ago(): "Now", "5 seconds ago", or its warning for a clock that went back;
    `now` is cut to whole seconds as time(NULL) is."""
    now_seconds = math.floor(now)
    if now_seconds == handshake_seconds:
        return "Now"
    if now_seconds < handshake_seconds:
        return "(System clock wound backward; connection problems may ensue.)"
    return pretty_time(now_seconds - handshake_seconds) + " ago"


def every(seconds: int) -> str:
    """show.c's every(): "every 25 seconds"."""
    return "every " + pretty_time(seconds)


def format_bytes(count: int) -> str:
    """show.c's bytes(): "512 B", "1.50 KiB", ... "3.00 TiB" (two decimals from KiB on)."""
    if count < 1024:
        return f"{count} B"
    for unit, size in _UNITS:
        if count < size * 1024:
            return f"{float(count) / size:.2f} {unit}"
    # (double)b / (1024 * 1024 * 1024) / 1024, as show.c: powers of two, so float() then
    # exact divisions give C's value to the last bit.
    return f"{float(count) / (1 << 30) / 1024:.2f} TiB"


def format_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as glibc's inet_ntop writes it: RFC 5952 like Python, except that an
    IPv4-mapped (::ffff:a.b.c.d) or IPv4-compatible (::a.b.c.d) address ends in dotted quad."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    packed = address.packed
    if packed[:10] == bytes(10):
        v4 = ipaddress.IPv4Address(packed[12:])
        if packed[10:12] == b"\xff\xff":
            return f"::ffff:{v4}"
        # Six zero words then a non-zero seventh: the zero run is words 0-5 exactly.
        if packed[10:12] == b"\0\0" and packed[12:14] != b"\0\0":
            return f"::{v4}"
    return str(address)


def format_network(network: Network) -> str:
    """An allowed IP as wg prints it: address/length."""
    return f"{format_address(network.network_address)}/{network.prefixlen}"


def format_endpoint(endpoint: tuple[str, int]) -> str:
    """An endpoint as wg prints it (getnameinfo, numeric): 1.2.3.4:51820, [fd00::1]:51820; a
    %zone is kept as the server gave it."""
    host, port = endpoint
    address, percent, zone = host.partition("%")
    try:
        text = format_address(ipaddress.ip_address(address)) + percent + zone
    except ValueError:
        text = host
    return core_format_endpoint((text, port))


def sort_peers(peers: Sequence[PeerState]) -> list[PeerState]:
    """show.c's sort_peers: most recent handshake first, never-handshaken peers last, ties in
    the server's order."""
    def key(peer: PeerState) -> tuple[bool, int, int]:
        seconds, nanoseconds = peer.last_handshake
        return (peer.last_handshake == (0, 0), -seconds, -nanoseconds)

    return sorted(peers, key=key)


# --------------------------------------------------------------------------------------------
# The text.


def show_text(name: str, state: DeviceState, *, now: float,
              status: Mapping[str, Any] | None = None) -> str:
    """One interface as `wg show NAME` prints it (ending with a newline), with fz-trio's lines
    when `status` is given; `now` is the wall clock in seconds."""
    lines = [f"interface: {name}"]
    if state.private_key is not None:
        lines.append(f"  public key: {encode_key(public_key_of(state.private_key))}")
        lines.append("  private key: (hidden)")
    if state.listen_port:
        lines.append(f"  listening port: {state.listen_port}")
    if state.fwmark:
        lines.append(f"  fwmark: 0x{state.fwmark:x}")
    if status is not None:
        lines.extend(EXTRA_PREFIX + line for line in _interface_extras(status))
    peer_status = _mapping(status.get("peers")) if status is not None else {}
    for peer in sort_peers(state.peers):
        lines.append("")
        lines.append(f"peer: {encode_key(peer.public_key)}")
        if peer.preshared_key is not None:
            lines.append("  preshared key: (hidden)")
        if peer.endpoint is not None:
            lines.append(f"  endpoint: {format_endpoint(peer.endpoint)}")
        allowed = ", ".join(format_network(n) for n in peer.allowed_ips) or "(none)"
        lines.append(f"  allowed ips: {allowed}")
        if peer.last_handshake[0]:
            lines.append(f"  latest handshake: {ago(peer.last_handshake[0], now)}")
        if peer.rx_bytes or peer.tx_bytes:
            lines.append(f"  transfer: {format_bytes(peer.rx_bytes)} received, "
                         f"{format_bytes(peer.tx_bytes)} sent")
        if peer.persistent_keepalive:
            lines.append(f"  persistent keepalive: {every(peer.persistent_keepalive)}")
        extras = peer_status.get(encode_hex_key(peer.public_key))
        if isinstance(extras, Mapping):
            lines.extend(EXTRA_PREFIX + line for line in _peer_extras(extras))
    return "\n".join(lines) + "\n"


def show_interfaces(sections: Sequence[str]) -> str:
    """Several interfaces' `show_text`, as `wg show` with no interface joins them."""
    return "\n".join(sections)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _counts(counts: Mapping[str, Any]) -> str:
    items = [f"{key} {value}" for key, value in sorted(counts.items())
             if _number(value) is not None and value]
    return ", ".join(items) or "none"


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _interface_extras(status: Mapping[str, Any]) -> list[str]:
    """The interface's fz-trio lines; what the status lacks is left out, never guessed."""
    lines = []
    head = [f"{label} {status[key]}" for label, key in
            (("pid", "pid"), ("version", "version"), ("mtu", "mtu")) if key in status]
    if head:
        lines.append(", ".join(head))
    if "kernels" in status:
        reason = status.get("kernels_reason")
        lines.append(f"data path kernels: {status['kernels']}"
                     + (f" ({reason})" if reason else ""))
    stats = _mapping(status.get("stats"))
    tun = _mapping(stats.get("tun"))
    if tun:
        parts = []
        if "queues" in tun:
            parts.append(f"{tun['queues']} queue{'' if tun['queues'] == 1 else 's'}")
        if "io" in tun:
            parts.append(f"io {tun['io']}")
        if "offload" in tun:
            parts.append(f"offload {tun['offload']}")
        if "coalescing" in tun:
            parts.append(f"coalescing {'on' if tun['coalescing'] else 'off'}")
        lines.append("tun: " + ", ".join(parts))
    if "udp_gso" in stats:
        lines.append(f"udp gso: {'on' if stats['udp_gso'] else 'off'}")
    protocol = _mapping(stats.get("protocol"))
    handshakes = [f"{label} {protocol[key]}" for label, key in (
        ("initiations sent", "handshake_initiations_sent"),
        ("responses sent", "handshake_responses_sent"),
        ("completed", "handshakes_completed"),
        ("timed out", "handshake_timeouts"),
        ("cookie replies sent", "cookie_replies_sent"),
        ("under load", "under_load_periods")) if key in protocol]
    if handshakes:
        lines.append("handshakes: " + ", ".join(handshakes))
    if "drops" in protocol:
        lines.append("drops: " + _counts(_mapping(protocol["drops"])))
    io = _mapping(stats.get("io"))
    if "errors" in io:
        lines.append("io errors: " + _counts(_mapping(io["errors"])))
    return lines


_ROLES: Final = ("current", "previous", "next")
_TIMERS: Final = (("retransmit_handshake", "retransmit handshake"),
                  ("send_keepalive", "keepalive"), ("new_handshake", "new handshake"),
                  ("zero_key_material", "zero key material"),
                  ("persistent_keepalive", "persistent keepalive"))


def _peer_extras(peer: Mapping[str, Any]) -> list[str]:
    lines = []
    sessions = _mapping(peer.get("sessions"))
    parts = []
    for role in _ROLES:
        session = _mapping(sessions.get(role))
        if not session:
            continue
        details = []
        if "initiator" in session:
            details.append("initiator" if session["initiator"] else "responder")
        if _number(session.get("sent")) is not None:
            details.append(f"{session['sent']} sent")
        age = _number(session.get("age"))
        text = role + (f" {_seconds(age)} old" if age is not None else "")
        parts.append(text + (f" ({', '.join(details)})" if details else ""))
    if "sessions" in peer:
        lines.append("sessions: " + (", ".join(parts) or "none"))
    handshake = []
    if peer.get("handshake_in_flight"):
        retries = peer.get("handshake_attempts")  # retransmissions of the initiation
        handshake.append("in flight" + (f", {retries} retr{'y' if retries == 1 else 'ies'}"
                                        if _number(retries) else ""))
    elif "handshake_in_flight" in peer:
        handshake.append("none in flight")
    if _number(peer.get("staged")) is not None:
        staged = peer["staged"]
        handshake.append(f"{staged} packet{'' if staged == 1 else 's'} staged")
    if handshake:
        lines.append("handshake: " + ", ".join(handshake))
    timers = _mapping(peer.get("timers"))
    if "timers" in peer:
        due = []
        for key, label in _TIMERS:
            left = _number(timers.get(key))
            if left is not None:
                due.append(f"{label} {'in ' + _seconds(left) if left > 0 else 'due now'}")
        lines.append("timers: " + (", ".join(due) or "none"))
    return lines


# --------------------------------------------------------------------------------------------
# The JSON.


def show_object(name: str, state: DeviceState,
                status: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One interface as `--json` gives it (the module docstring describes the format)."""
    public_key = (encode_key(public_key_of(state.private_key))
                  if state.private_key is not None else None)
    peers = [{
        "public_key": encode_key(peer.public_key),
        "has_preshared_key": peer.preshared_key is not None,
        "endpoint": format_endpoint(peer.endpoint) if peer.endpoint is not None else None,
        "allowed_ips": [format_network(n) for n in peer.allowed_ips],
        "latest_handshake": (peer.last_handshake[0]
                             if peer.last_handshake != (0, 0) else None),
        "rx_bytes": peer.rx_bytes,
        "tx_bytes": peer.tx_bytes,
        "persistent_keepalive": peer.persistent_keepalive,
    } for peer in sort_peers(state.peers)]
    return {"interface": name, "public_key": public_key, "listen_port": state.listen_port,
            "fwmark": state.fwmark, "peers": peers,
            "fz_trio": dict(status) if status is not None else None}


def show_json(name: str, state: DeviceState, status: Mapping[str, Any] | None = None) -> str:
    """`show_object` as one line of JSON (no trailing newline)."""
    return json.dumps(show_object(name, state, status), separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
