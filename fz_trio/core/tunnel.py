"""The Tunnel: one local identity, its peers and cryptokey routing — WireGuard without IO.

The protocol core's face towards the data path. It decides *who, with which key and counters, to
where*; it never touches payload bytes in bulk:

    tunnel.route(destination)                       # which peer an inner packet goes to
    tunnel.grant_or_stage(peer, count, rest, now, wall)  # key, receiver index, counters, endpoint;
                                                    #  what gets none is staged (handshake)
    tunnel.receiving_session(receiver_index)        # which peer and session a datagram is for
    tunnel.session_received(peer, session, ...)     # timers and counters after a run was opened
    tunnel.receive_handshake(datagram, source, now, wall)  # handshake and cookie messages
    tunnel.handle_timeout(now, wall)                # when now >= tunnel.poll_timeout()
    tunnel.take_outbox()                            # what the core itself wants sent

`now` is a monotonic time in seconds chosen by the caller; `wall`, passed beside it, is the wall
clock at that moment (Unix seconds), needed only for the handshake's TAI64N timestamp and the
time of the latest handshake. The core reads no clock of its own.
`fz_trio.datapath.Device` joins this core to the data path. Bad input never raises: it is dropped
and counted in `counters`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable

from fz_trio.core import crypto, messages, noise
from fz_trio.core.allowed_ips import AllowedIPs, Network, as_network
from fz_trio.core.cookie import CookieChecker
from fz_trio.core.crypto import CryptoError
from fz_trio.core.endpoint import Endpoint
from fz_trio.core.keys import public_key_of
from fz_trio.core.messages import MessageError
from fz_trio.core.peer import Buffer, LocalIdentity, Outbox, Peer, SendGrant
from fz_trio.core.rate_limit import HandshakeRateLimiter
from fz_trio.core.session import IndexTable, Session
from fz_trio.core.stats import Counters
from fz_trio.core.timers import TimerConfig

# Handshake messages per second above which a responder demands cookies (mac2) first.
DEFAULT_UNDER_LOAD_THRESHOLD = 64
_UNDER_LOAD_HOLD = 1.0
# Handshake messages waiting for `process_handshakes` at most (wireguard-go's queue size); a
# queue an eighth full means under load too, as there.
HANDSHAKE_QUEUE = 1024
_UNDER_LOAD_QUEUE = HANDSHAKE_QUEUE // 8


class TunnelError(ValueError):
    """A local misuse of the Tunnel API (a bad key, a duplicate peer)."""


class Tunnel:
    def __init__(
        self,
        private_key: bytes | None,
        *,
        mtu: int = 1420,
        timers: TimerConfig | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        under_load_threshold: int = DEFAULT_UNDER_LOAD_THRESHOLD,
    ) -> None:
        if private_key is not None and len(private_key) != 32:
            raise TunnelError("private key must be 32 bytes")
        self.identity = LocalIdentity(
            private_key, None if private_key is None else public_key_of(private_key))
        self.mtu = mtu
        self.timers = timers or TimerConfig()
        self.random_bytes = random_bytes
        self.counters = Counters()
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        # address bytes -> peer (or None), in front of the prefix table; cleared on any change.
        self._route_cache: dict[bytes, Peer | None] = {}
        self.indices = IndexTable(random_bytes)
        self.cookie_checker = (None if self.identity.public_key is None
                               else CookieChecker(self.identity.public_key, random_bytes))
        self.under_load_threshold = under_load_threshold
        self.force_under_load = False
        # True: each handshake message is handled as it arrives (tests, the simulator). False:
        # admitted ones wait in a bounded queue for `process_handshakes`, so that the IO shell
        # handles transport data first and handshakes in what time is left.
        self.handshakes_inline = True
        self._handshake_queue: deque[tuple[bytes, Endpoint]] = deque()
        self._refuse_host = ""
        self._refuse_until = float("-inf")
        self._handshake_window_start = float("-inf")
        self._handshakes_in_window = 0
        self._under_load_until = float("-inf")
        self.rate_limiter = HandshakeRateLimiter()
        self.outbox = Outbox()
        # Bumped on every routing change, so the data path knows when its caches are stale.
        self.routes_version = 0

    @property
    def public_key(self) -> bytes | None:
        """The interface's public key; None while it has no private key."""
        return self.identity.public_key

    @property
    def private_key(self) -> bytes | None:
        return self.identity.private_key

    # --- configuration ----------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        *,
        preshared_key: bytes | None = None,
        allowed_ips: Iterable[Network | str] = (),
        endpoint: Endpoint | None = None,
        persistent_keepalive: float | None = None,
    ) -> Peer:
        if public_key in self.peers:
            raise TunnelError("peer already exists")
        if public_key == self.public_key:
            raise TunnelError("a peer cannot have our own public key")
        check_peer_key(public_key)
        peer = Peer(
            identity=self.identity, public_key=public_key,
            preshared_key=preshared_key or bytes(32),
            endpoint=None if endpoint is None else normalise(endpoint),
            persistent_keepalive=persistent_keepalive or None, timers=self.timers,
            indices=self.indices, counters=self.counters, random_bytes=self.random_bytes,
        )
        self.peers[public_key] = peer
        self.set_allowed_ips(public_key, allowed_ips)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is not None:
            peer.clear_sessions()
            self.allowed_ips.remove_value(peer)
            self._route_cache.clear()
            self.routes_version += 1

    def set_allowed_ips(self, public_key: bytes, allowed_ips: Iterable[Network | str]) -> None:
        peer = self.peers[public_key]
        self._route_cache.clear()
        self.routes_version += 1
        self.allowed_ips.remove_value(peer)
        for network in allowed_ips:
            self.allowed_ips.insert(as_network(network), peer)

    def add_allowed_ips(self, public_key: bytes, allowed_ips: Iterable[Network | str]) -> None:
        """More prefixes for a peer; one another peer holds moves to this one (as in wg)."""
        peer = self.peers[public_key]
        self._route_cache.clear()
        self.routes_version += 1
        for network in allowed_ips:
            self.allowed_ips.insert(as_network(network), peer)

    def allowed_ips_of(self, public_key: bytes) -> list[Network]:
        return self.allowed_ips.networks_of(self.peers[public_key])

    def set_preshared_key(self, public_key: bytes, preshared_key: bytes | None) -> None:
        self.peers[public_key].preshared_key = preshared_key or bytes(32)

    def set_endpoint(self, public_key: bytes, endpoint: Endpoint) -> None:
        self.peers[public_key].endpoint = normalise(endpoint)

    def set_persistent_keepalive(self, public_key: bytes, seconds: float | None, now: float,
                                 wall: float) -> None:
        """Live: turning it on sends a keepalive now (see `Peer.set_persistent_keepalive`)."""
        self.peers[public_key].set_persistent_keepalive(seconds, now, wall, self.outbox)

    def set_private_key(self, private_key: bytes | None) -> None:
        """A new local identity, live (None removes it). The same key again changes nothing;
        a new one drops a peer that has its public key (wireguard-go does the same), voids the
        handshakes in flight and stops every session from sending, so traffic resumes under
        the new key after one handshake."""
        if private_key == self.identity.private_key:
            return
        if private_key is not None and len(private_key) != 32:
            raise TunnelError("private key must be 32 bytes")
        public_key = None if private_key is None else public_key_of(private_key)
        if public_key is not None and public_key in self.peers:
            self.remove_peer(public_key)
        self.identity.private_key, self.identity.public_key = private_key, public_key
        self.cookie_checker = (None if public_key is None
                               else CookieChecker(public_key, self.random_bytes))
        for peer in self.peers.values():
            peer.identity_changed()
            peer.expire_for_new_identity()

    def start(self, now: float, wall: float) -> None:
        """Bring the tunnel up: peers with a persistent keepalive handshake at once, like wg."""
        for peer in self.peers.values():
            if peer.persistent_keepalive and peer.endpoint is not None:
                peer.send_keepalive(now, wall, self.outbox)

    # --- sending ----------------------------------------------------------------------------

    def grant_or_stage(self, peer: Peer, count: int, rest: Callable[[int], Iterable[Buffer]],
                       now: float, wall: float, *, data: bool = True) -> SendGrant | None:
        """Counters for up to `count` packets to `peer` (key, receiver index, endpoint too);
        those beyond the grant, or all without a usable session, are staged until a session
        exists: `rest(i)` gives the packets from the i-th on (see `Peer.grant_or_stage`)."""
        return peer.grant_or_stage(count, rest, now, wall, self.outbox, data=data)

    def route(self, address: bytes | None) -> Peer | None:
        """The peer whose AllowedIPs hold `address` (4 or 16 bytes), by longest prefix."""
        if address is None:
            return None
        cache = self._route_cache
        try:
            return cache[address]
        except KeyError:
            peer = cache[address] = self.allowed_ips.lookup(address)
            if len(cache) > 65536:  # scanning traffic must not grow it without bound
                cache.clear()
            return peer

    def handle_timeout(self, now: float, wall: float) -> None:
        for peer in list(self.peers.values()):
            deadline = peer.next_deadline()
            if deadline is not None and now >= deadline:
                peer.handle_timeout(now, wall, self.outbox)

    def poll_timeout(self) -> float | None:
        """The earliest time at which `handle_timeout` has something to do."""
        deadlines = [d for d in (p.next_deadline() for p in self.peers.values()) if d is not None]
        return min(deadlines) if deadlines else None

    def take_outbox(self) -> Outbox:
        """What the core wants sent since the last call: handshake datagrams, and packets to
        seal per peer (staged ones, keepalives)."""
        outbox, self.outbox = self.outbox, Outbox()
        return outbox

    # --- receiving ----------------------------------------------------------------------------

    def receiving_session(self, receiver: int) -> tuple[Peer, Session] | None:
        """The peer and session a transport message for `receiver` belongs to, if any."""
        entry = self.indices.get(receiver)
        if entry is None or entry[1] is None:
            return None
        # entry[1] was just checked; mypy narrows that item, not the tuple's type, and
        # rebuilding the tuple would cost an allocation per received run.
        return entry  # type: ignore[return-value]

    def session_received(self, peer: Peer, session: Session, datagram_bytes: int,
                         plain_bytes: int, source: Endpoint, now: float,
                         wall: float) -> None:
        """Bookkeeping after the data path authenticated `datagram_bytes` of transport messages
        (`plain_bytes` of plaintext) from `source` on `session`."""
        if datagram_bytes:
            peer.session_received(session, datagram_bytes, plain_bytes, normalise(source), now,
                                  wall, self.outbox)

    def source_allowed(self, peer: Peer, address: bytes | None) -> bool:
        """Cryptokey routing on receipt: may `peer` send packets from inner source `address`?"""
        return address is not None and self.route(address) is peer

    def receive_handshake(self, data: bytes | bytearray | memoryview, source: Endpoint,
                          now: float, wall: float) -> None:
        """A UDP datagram that is not transport data: handshake messages and cookie replies."""
        kind = messages.message_type(data)
        if kind in (0, messages.TYPE_TRANSPORT):
            self.counters.drop("malformed")
            return
        self.receive_handshakes(data, 0, len(data), len(data), source, now, wall)

    def receive_handshakes(self, data: bytes | bytearray | memoryview, start: int, end: int,
                           size: int, source: Endpoint, now: float, wall: float) -> None:
        """Non-transport datagrams from `source`, back to back in `data[start:end]`, each
        `size` bytes but the last (the handshake messages of one UDP GRO read).

        Admission costs no cryptography: under load, each source gets a few messages a second
        through its token bucket, and the bounded queue takes what fits; the rest are counted
        drops. What is admitted is handled now (`handshakes_inline`) or by `process_handshakes`.
        """
        count = -(-(end - start) // size)
        host = source[0]
        if now < self._refuse_until and host == self._refuse_host:
            # The one source whose bucket was found empty, before its next token: what a flood
            # from one address costs per datagram, so no more than a comparison.
            self._handshakes_in_window += count
            self.counters.drops["handshake_rate_limited"] += count
            return
        under_load = self._count_handshakes(count, now)
        if under_load:
            limiter = self.rate_limiter
            allowed = limiter.allow_many(host, count, now)
            if allowed < count:
                self.counters.drop("handshake_rate_limited", count - allowed)
                self._refuse_host, self._refuse_until = host, now + 1.0 / limiter.rate
            end = min(end, start + allowed * size)
        if start >= end:
            return
        source = normalise(source)
        view = memoryview(data)
        if self.handshakes_inline:
            for offset in range(start, end, size):
                self._receive_handshake(bytes(view[offset:min(offset + size, end)]), source,
                                        now, wall)
            return
        queue = self._handshake_queue
        for offset in range(start, end, size):
            if len(queue) >= HANDSHAKE_QUEUE:
                self.counters.drop("handshake_queue_full", -(-(end - offset) // size))
                return
            queue.append((bytes(view[offset:min(offset + size, end)]), source))

    @property
    def handshakes_pending(self) -> int:
        """Handshake messages waiting for `process_handshakes`."""
        return len(self._handshake_queue)

    def process_handshakes(self, now: float, wall: float, limit: int) -> int:
        """Handle up to `limit` queued handshake messages, oldest first; returns how many are
        still waiting."""
        queue = self._handshake_queue
        for _ in range(min(limit, len(queue))):
            data, source = queue.popleft()
            self._receive_handshake(data, source, now, wall)
        return len(queue)

    def under_load(self, now: float) -> bool:
        """Whether handshake messages now need a valid mac2 (a cookie) and pass through the
        per-source rate limit: a forced test setting, too many lately, or a queue backing up."""
        return (self.force_under_load or now < self._under_load_until
                or len(self._handshake_queue) >= _UNDER_LOAD_QUEUE)

    def _count_handshakes(self, count: int, now: float) -> bool:
        was = self.under_load(now)
        if now - self._handshake_window_start >= 1.0:
            self._handshake_window_start = now
            self._handshakes_in_window = 0
        self._handshakes_in_window += count
        if self._handshakes_in_window > self.under_load_threshold:
            self._under_load_until = now + _UNDER_LOAD_HOLD
        is_now = self.under_load(now)
        if is_now and not was:
            self.counters.under_load_periods += 1
        return is_now

    def _receive_handshake(self, data: bytes, source: Endpoint, now: float,
                           wall: float) -> None:
        try:
            msg = messages.parse_handshake(data)
        except MessageError:
            self.counters.drop("malformed")
            return
        if isinstance(msg, messages.CookieReply):
            entry = self.indices.get(msg.receiver)
            if entry is None or not entry[0].consume_cookie_reply(msg, now):
                self.counters.drop("cookie_reply_rejected")
            return
        checker = self.cookie_checker
        private_key, public_key = self.identity.private_key, self.identity.public_key
        if checker is None or private_key is None or public_key is None:
            self.counters.drop("no_private_key")
            return
        if not checker.mac1_valid(data):
            self.counters.drop("handshake_bad_mac1")
            return
        if self.under_load(now) and not checker.mac2_valid(data, source, now):
            reply = checker.make_reply(data, msg.sender, source, now)
            self.outbox.transmit(reply.pack(), source)
            self.counters.cookie_replies_sent += 1
            return
        if isinstance(msg, messages.Initiation):
            try:
                consumed = noise.consume_initiation(
                    msg, local_static_private=private_key, local_static_public=public_key,
                )
            except noise.HandshakeError:
                self.counters.drop("handshake_auth")
                return
            peer = self.peers.get(consumed.remote_static)
            if peer is None:
                self.counters.drop("unknown_peer")
                return
            peer.answer_initiation(consumed, data, source, now, self.outbox)
        else:
            entry = self.indices.get(msg.receiver)
            if entry is None or entry[1] is not None:
                self.counters.drop("unknown_index")
                return
            entry[0].consume_response(msg, data, source, now, wall, self.outbox)


# Any valid private key shows whether a peer's public key is usable: X25519 gives all zeros
# exactly for the low-order points, whatever the scalar.
_PROBE_KEY = bytes([64] * 32)


def check_peer_key(public_key: bytes) -> None:
    """Raise TunnelError when `public_key` cannot be a peer's (wrong size, a low-order point)."""
    if len(public_key) != 32:
        raise TunnelError("peer public key must be 32 bytes")
    try:
        crypto.dh(_PROBE_KEY, public_key)
    except CryptoError as e:
        raise TunnelError(f"peer public key is unusable: {e}") from e


def normalise(endpoint: Endpoint) -> Endpoint:
    """(host, port) with IPv4-mapped IPv6 folded to IPv4, so one peer has one address form."""
    host, port = endpoint[0], endpoint[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return (host, port)
