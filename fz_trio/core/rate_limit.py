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
        if now - self._last_gc >= _FORGET_AFTER:
            self._forget(now)
        key = _source_key(host)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                return False
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

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
