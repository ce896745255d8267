"""Per-source token buckets for handshake messages while the responder is under load.

What wireguard-go and the kernel do: 20 handshake messages a second from one source, with a
burst of 5; a source is an IPv4 address, or an IPv6 /64 (one host usually has a whole /64). The
Tunnel asks before any per-packet cryptography (mac1 is a BLAKE2s), so a flood costs a dict
lookup per datagram. Entries unused for a second are forgotten once a second; at most
`max_sources` are kept, and a new source beyond that is refused until space frees up (so a flood
from spoofed addresses cannot grow memory). Sans-IO: `now` comes from the caller.
"""

from __future__ import annotations

import ipaddress

__all__ = ["HandshakeRateLimiter"]

RATE = 20.0  # messages per second
BURST = 5
MAX_SOURCES = 65536
_FORGET_AFTER = 1.0


class HandshakeRateLimiter:
    def __init__(self, rate: float = RATE, burst: int = BURST,
                 max_sources: int = MAX_SOURCES) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: dict[str, list[float]] = {}  # source -> [tokens, last refill]
        self._last_gc = float("-inf")

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, host: str, now: float) -> bool:
        """May one more handshake message from `host` be looked at now?"""
        return self.allow_many(host, 1, now) == 1

    def allow_many(self, host: str, count: int, now: float) -> int:
        """How many of `count` handshake messages from `host` (one UDP GRO read) may be looked
        at now: the first that many, the rest are over the limit."""
        if now - self._last_gc >= _FORGET_AFTER:
            self._forget(now)
        key = _source_key(host)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                return 0
            bucket = self._buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        allowed = min(count, int(tokens))
        bucket[0] = tokens - allowed
        return allowed

    def _forget(self, now: float) -> None:
        self._last_gc = now
        stale = [key for key, (_, last) in self._buckets.items() if now - last >= _FORGET_AFTER]
        for key in stale:
            del self._buckets[key]


def _source_key(host: str) -> str:
    if ":" not in host:
        return host  # IPv4: the address itself
    try:
        network = ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False)
    except ValueError:
        return host
    return str(network.network_address)
