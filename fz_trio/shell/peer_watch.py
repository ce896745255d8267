"""What a person running fz-trio should be told about each peer, found by looking at the core.

The core counts and times handshakes but never logs (it is sans-IO). Once a second the interface
shows `PeerWatch.observe` its peers; it compares them with what it saw last and returns the
events worth a log line: a peer's first handshake ("up"), a handshake that keeps going
unanswered (with what usually causes that), a roamed endpoint, sessions expired. `status_line`
is the one-line summary systemd shows (`STATUS=`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import attrs

from fz_trio.core import Endpoint, encode_key, format_endpoint

__all__ = ["PeerEvent", "PeerWatch", "peer_name", "status_line"]

# The third retry is 15 s after the first initiation: long past any real round trip, well
# before the core gives up (90 s). Warned again after a quiet while, not every retry.
STALL_ATTEMPTS = 3
STALL_REPEAT_SECONDS = 300.0


class WatchedPeer(Protocol):
    """What the watch reads of a core Peer."""

    endpoint: Endpoint | None
    handshake_attempts: int
    last_handshake_wall: float | None

    @property
    def has_session(self) -> bool: ...


def peer_name(public_key: bytes) -> str:
    """A peer as people tell them apart: the first characters of its base64 public key."""
    return encode_key(public_key)[:8] + "…"


@attrs.frozen
class PeerEvent:
    level: str  # "info" | "warning" | "debug"
    message: str


@attrs.define
class _Seen:
    endpoint: Endpoint | None
    handshake: float | None
    had_session: bool
    ever_up: bool
    stall_warned_at: float | None = None


class PeerWatch:
    def __init__(self, interface: str, own_public_key: bytes | None = None) -> None:
        self.interface = interface
        self.own_public_key = own_public_key
        self._seen: dict[bytes, _Seen] = {}

    def observe(self, peers: Mapping[bytes, WatchedPeer], now: float) -> list[PeerEvent]:
        events: list[PeerEvent] = []
        for key in list(self._seen):
            if key not in peers:
                del self._seen[key]
        for key, peer in peers.items():
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = _Seen(peer.endpoint, peer.last_handshake_wall,
                                        peer.has_session, peer.last_handshake_wall is not None)
                continue
            events.extend(self._compare(key, peer, seen, now))
        return events

    def _compare(self, key: bytes, peer: WatchedPeer, seen: _Seen,
                 now: float) -> Iterable[PeerEvent]:
        name = f"{self.interface}: peer {peer_name(key)}"
        at = format_endpoint(peer.endpoint) if peer.endpoint is not None else "no endpoint"
        if peer.endpoint != seen.endpoint and seen.endpoint is not None \
                and peer.endpoint is not None:
            yield PeerEvent("info", f"{name}: endpoint changed from "
                                    f"{format_endpoint(seen.endpoint)} to {at}")
        seen.endpoint = peer.endpoint
        if peer.last_handshake_wall != seen.handshake and peer.last_handshake_wall is not None:
            seen.handshake = peer.last_handshake_wall
            seen.stall_warned_at = None
            if not seen.ever_up or not seen.had_session:
                seen.ever_up = True
                yield PeerEvent("info", f"{name}: handshake completed, peer up ({at})")
            else:
                yield PeerEvent("debug", f"{name}: new session (rekey)")
        if peer.handshake_attempts >= STALL_ATTEMPTS and (
                seen.stall_warned_at is None or now - seen.stall_warned_at
                >= STALL_REPEAT_SECONDS):
            seen.stall_warned_at = now
            mine = (f" has this interface's public key {encode_key(self.own_public_key)}"
                    if self.own_public_key is not None else " has this interface's public key")
            yield PeerEvent(
                "warning",
                f"{name}: handshake not completing: {peer.handshake_attempts + 1} "
                f"initiations to {at} got no answer. Likely causes: a wrong Endpoint address "
                f"or port; mismatched keys (check that the peer{mine} and that this PublicKey "
                f"is the peer's); UDP to {at} blocked on the way")
        if seen.had_session and not peer.has_session:
            yield PeerEvent("info", f"{name}: session expired (no handshake for 9 minutes); "
                                    f"peer down until the next handshake")
        seen.had_session = peer.has_session


def status_line(peers: Mapping[bytes, WatchedPeer], wall: float) -> str:
    """`2/3 peers up, latest handshake 14 s ago` (systemd's STATUS=)."""
    up = sum(1 for peer in peers.values() if peer.has_session)
    handshakes = [p.last_handshake_wall for p in peers.values()
                  if p.last_handshake_wall is not None]
    text = f"{up}/{len(peers)} peer{'s' if len(peers) != 1 else ''} up"
    if handshakes:
        text += f", latest handshake {max(0, int(wall - max(handshakes)))} s ago"
    elif peers:
        text += ", no handshake yet"
    return text
