"""One remote WireGuard peer: its handshakes, its sessions and its timers.

The timer rules follow the whitepaper as wireguard-go implements them; each rule is a named
method (`_on_data_sent`, `_on_authenticated_received`, ...) called at the same points, and each
timer is a deadline (float or None) that `handle_timeout` fires.

The peer never touches payload bytes in bulk. To send data, the caller asks for a `SendGrant`
(`grant_send`): the session's key, the receiver index, a reserved range of counters and the
endpoint; the data path seals with it. What the peer itself wants sent goes into the caller's
`Outbox`: handshake messages as finished datagrams, and data packets (staged ones, keepalives) to
be sealed like any other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

import attrs

from fz_trio.core import crypto, noise
from fz_trio.core.cookie import CookieJar
from fz_trio.core.endpoint import Endpoint
from fz_trio.core.keys import clamp
from fz_trio.core.messages import CookieReply, Response
from fz_trio.core.session import IndexTable, Session
from fz_trio.core.stats import Counters
from fz_trio.core.timers import TimerConfig

Transmit = tuple[bytes, Endpoint]

Buffer = bytes | bytearray | memoryview

# Packets waiting for a session; wireguard-go keeps the same number.
MAX_STAGED_PACKETS = 128


@attrs.define
class LocalIdentity:
    """The interface's own key pair, shared by the Tunnel and its peers; None before a private
    key is set (a userspace interface starts without one and gets it over UAPI)."""

    private_key: bytes | None = attrs.field(repr=False)
    public_key: bytes | None


@attrs.frozen
class SendGrant:
    """Permission to seal `count` transport messages: with `key`, to `receiver_index` at
    `endpoint`, under counters `counter` .. `counter + count - 1` (already reserved)."""

    key: bytes
    receiver_index: int
    counter: int
    count: int
    endpoint: Endpoint


@attrs.define(eq=False)
class Outbox:
    """What the core wants sent, in order: finished datagrams, and packets to seal per peer."""

    transmits: list[Transmit] = attrs.Factory(list)
    sealable: list[tuple[Peer, SendGrant, Sequence[bytes]]] = attrs.Factory(list)

    def transmit(self, datagram: bytes, endpoint: Endpoint) -> None:
        self.transmits.append((datagram, endpoint))

    def seal(self, peer: Peer, grant: SendGrant, packets: Sequence[bytes]) -> None:
        self.sealable.append((peer, grant, packets))

    def __bool__(self) -> bool:
        return bool(self.transmits or self.sealable)


@attrs.define(eq=False)
class Peer:
    identity: LocalIdentity
    public_key: bytes
    preshared_key: bytes
    endpoint: Endpoint | None
    persistent_keepalive: float | None
    timers: TimerConfig
    indices: IndexTable
    counters: Counters
    random_bytes: Callable[[int], bytes]

    static_static: bytes | None = attrs.field(init=False, repr=False)
    cookies: CookieJar = attrs.field(init=False)

    # Sessions: `next` is the responder's not-yet-confirmed one.
    current: Session | None = None
    previous: Session | None = None
    next: Session | None = None

    # Handshake as initiator.
    pending: noise.InitiatorState | None = None
    last_initiation_sent: float = float("-inf")
    handshake_attempts: int = 0
    # Handshake as responder: replay and flood protection.
    last_timestamp: bytes = bytes(12)
    last_initiation_consumed: float = float("-inf")

    staged: deque[bytes] = attrs.field(factory=lambda: deque(maxlen=MAX_STAGED_PACKETS))

    # Timer deadlines (None = not armed).
    retransmit_handshake_at: float | None = None
    send_keepalive_at: float | None = None
    new_handshake_at: float | None = None
    zero_key_material_at: float | None = None
    persistent_keepalive_at: float | None = None
    need_another_keepalive: bool = False

    # What `wg show` reports.
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake_wall: float | None = None
    # Random bytes for the timers' jitter, drawn 64 at a time: a bulk flow that alternates
    # sending and receiving re-arms the "no answer" timer on every send batch.
    _jitter_pool: bytes = attrs.field(default=b"", init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.cookies = CookieJar(self.public_key)
        self.identity_changed()

    @property
    def has_session(self) -> bool:
        """A session to send with (kept until its keys are zeroed, 9 minutes after the last
        handshake)."""
        return self.current is not None

    def identity_changed(self) -> None:
        """Recompute what depends on the local private key (the static-static DH)."""
        private_key = self.identity.private_key
        self.static_static = (None if private_key is None
                              else crypto.dh(private_key, self.public_key))

    # --- outbound data ----------------------------------------------------------------------

    def grant_send(self, count: int, now: float, wall: float, out: Outbox, *,
                   data: bool = True) -> SendGrant | None:
        """Reserve up to `count` send counters on the current session (fewer only when the
        session reaches REJECT_AFTER_MESSAGES), or None when there is no usable session: the
        packets without counters are to be `stage`d. `data` is False for a lone keepalive.

        The timer rules of sending apply at once: any authenticated packet sent cancels the
        passive keepalive and pushes the persistent one back; data starts the "no answer"
        timer; a session that is due for rekeying starts a handshake."""
        session = self.current
        endpoint = self.endpoint
        if (session is None or endpoint is None
                or not session.usable_for_sending(now, self.timers)):
            return None
        count = session.sendable(count, self.timers)
        counter = session.reserve(count)
        self.send_keepalive_at = None
        if self.persistent_keepalive:
            self.persistent_keepalive_at = now + self.persistent_keepalive
        if data and self.new_handshake_at is None:
            self._on_data_sent(now)
        if session.needs_rekey_on_send(now, self.timers):
            self.initiate_handshake(now, wall, out, retry=False)
        return SendGrant(session.sending_key, session.remote_index, counter, count, endpoint)

    def grant_or_stage(self, count: int, rest: Callable[[int], Iterable[Buffer]], now: float,
                       wall: float, out: Outbox, *, data: bool = True) -> SendGrant | None:
        """A grant for as many of `count` packets as the session allows; the others (all of them
        without a usable session) are staged, `rest(i)` giving the packets from the i-th on, so
        a caller whose packets are not objects yet (a super-packet's segments) builds only those
        that wait."""
        grant = self.grant_send(count, now, wall, out, data=data)
        if grant is None:
            self.stage(rest(0), now, wall, out)
        elif grant.count < count:  # the session ran out of counters: the rest waits
            self.stage(rest(grant.count), now, wall, out)
        return grant

    def count_sent(self, nbytes: int) -> None:
        """Transport bytes sent under a grant (what `wg show` calls transfer sent)."""
        self.tx_bytes += nbytes

    def stage(self, packets: Iterable[Buffer], now: float, wall: float, out: Outbox) -> None:
        """Keep copies of packets until a session exists (the oldest go first when full) and
        start a handshake."""
        for packet in packets:
            if len(self.staged) == self.staged.maxlen:
                self.counters.drop("staged_queue_full")
            self.staged.append(bytes(packet))
        self.initiate_handshake(now, wall, out, retry=False)

    def send_keepalive(self, now: float, wall: float, out: Outbox) -> None:
        if not self.staged:
            self._send(self._KEEPALIVE, now, wall, out)
        else:
            self._flush_staged(now, wall, out)

    _KEEPALIVE = (b"",)

    def _send(self, packets: Sequence[bytes], now: float, wall: float, out: Outbox) -> None:
        # Granted now, so the timer rules of sending apply in order; the data path seals later.
        grant = self.grant_or_stage(len(packets), lambda i: packets[i:], now, wall, out,
                                    data=any(map(len, packets)))
        if grant is not None:
            out.seal(self, grant, packets[:grant.count])

    def _flush_staged(self, now: float, wall: float, out: Outbox) -> None:
        session = self.current
        if (session is None or self.endpoint is None
                or not session.usable_for_sending(now, self.timers)):
            self.initiate_handshake(now, wall, out, retry=False)
            return
        staged, self.staged = self.staged, deque(maxlen=MAX_STAGED_PACKETS)
        self._send(list(staged), now, wall, out)

    # --- handshake as initiator -------------------------------------------------------------

    def initiate_handshake(self, now: float, wall: float, out: Outbox, *, retry: bool) -> None:
        if not retry:
            if now - self.last_initiation_sent < self.timers.rekey_timeout:
                return  # one is in flight; its retransmit timer takes over
            self.handshake_attempts = 0
        if self.endpoint is None:
            self.counters.drop("no_endpoint")
            return
        private_key, public_key = self.identity.private_key, self.identity.public_key
        if private_key is None or public_key is None or self.static_static is None:
            self.counters.drop("no_private_key")
            return
        if self.pending is not None:
            self.indices.free(self.pending.local_index)
        local_index = self.indices.allocate(self)
        ephemeral = clamp(self.random_bytes(32))
        msg, self.pending = noise.create_initiation(
            local_static_private=private_key,
            local_static_public=public_key,
            remote_static=self.public_key,
            static_static=self.static_static,
            local_index=local_index,
            ephemeral_private=ephemeral,
            timestamp=noise.tai64n(wall),
        )
        datagram = self.cookies.stamp(msg.pack(), now)
        self.last_initiation_sent = now
        self.tx_bytes += len(datagram)  # wireguard-go and the kernel count handshakes too
        out.transmit(datagram, self.endpoint)
        self.counters.handshake_initiations_sent += 1
        self._on_authenticated_sent(now)
        self.retransmit_handshake_at = now + self.timers.rekey_timeout + self._jitter()

    def consume_response(self, msg: Response, raw: bytes, source: Endpoint, now: float, wall: float,
                         out: Outbox) -> bool:
        state = self.pending
        private_key = self.identity.private_key
        if state is None or state.local_index != msg.receiver or private_key is None:
            return False
        try:
            keys = noise.consume_response(
                msg, state, local_static_private=private_key,
                preshared_key=self.preshared_key,
            )
        except noise.HandshakeError:
            self.counters.drop("handshake_auth")
            return False
        self.pending = None
        self.endpoint = source
        session = Session(keys.sending, keys.receiving, keys.local_index, keys.remote_index,
                          True, now)
        self.indices.bind(keys.local_index, self, session)
        # The initiator uses a new session at once; a responder-side `next` becomes `previous`.
        if self.next is not None:
            self._drop(self.current)
            self.current, self.previous, self.next = session, self.next, None
        else:
            self._drop(self.previous)
            self.current, self.previous = session, self.current
        self.rx_bytes += len(raw)
        self._on_authenticated_received(now)
        self._on_session_derived(now)
        self._on_handshake_complete(wall)
        # The responder cannot send until it sees traffic on the new session: give it some.
        self.send_keepalive(now, wall, out)
        return True

    def consume_cookie_reply(self, reply: CookieReply, now: float) -> bool:
        # A reply answers our pending initiation or, from an initiator under load, the response
        # we sent (addressed to its index, our unconfirmed `next` session), as in wireguard-go.
        pending = self.pending is not None and self.pending.local_index == reply.receiver
        responded = self.next is not None and self.next.local_index == reply.receiver
        if not (pending or responded):
            return False
        return self.cookies.consume_reply(reply, now)

    # --- handshake as responder -------------------------------------------------------------

    def answer_initiation(self, consumed: noise.ConsumedInitiation, raw: bytes, source: Endpoint,
                          now: float, out: Outbox) -> bool:
        if consumed.timestamp <= self.last_timestamp:
            self.counters.drop("handshake_replayed_timestamp")
            return False
        if now - self.last_initiation_consumed < self.timers.initiations_min_interval:
            self.counters.drop("handshake_flood")
            return False
        self.last_timestamp = consumed.timestamp
        self.last_initiation_consumed = now
        self.endpoint = source
        local_index = self.indices.allocate(self)
        try:
            msg, keys = noise.create_response(
                consumed, preshared_key=self.preshared_key, local_index=local_index,
                ephemeral_private=clamp(self.random_bytes(32)),
            )
        except noise.HandshakeError:
            self.indices.free(local_index)
            self.counters.drop("handshake_auth")
            return False
        session = Session(keys.sending, keys.receiving, keys.local_index, keys.remote_index,
                          False, now)
        self.indices.bind(local_index, self, session)
        self._drop(self.next)
        self._drop(self.previous)
        self.next, self.previous = session, None
        self.rx_bytes += len(raw)
        datagram = self.cookies.stamp(msg.pack(), now)
        self.tx_bytes += len(datagram)
        out.transmit(datagram, source)
        self.counters.handshake_responses_sent += 1
        # A response counts as a handshake sent (wireguard-go's lastSentHandshake, the kernel's
        # last_sent_handshake): wait REKEY_TIMEOUT for the initiator's confirmation before
        # initiating ourselves, or data staged meanwhile starts a crossing handshake.
        self.last_initiation_sent = now
        self._on_authenticated_received(now)
        self._on_authenticated_sent(now)
        self._on_session_derived(now)
        return True

    # --- inbound data -----------------------------------------------------------------------

    def session_received(self, session: Session, datagram_len: int, plain_len: int,
                         source: Endpoint, now: float, wall: float, out: Outbox) -> None:
        """Bookkeeping after `session` authenticated a datagram (plaintext of `plain_len` bytes)."""
        self.endpoint = source
        self.rx_bytes += datagram_len
        confirmed = session is self.next
        if confirmed:
            # First packet on the responder's new session confirms the handshake.
            self._drop(self.previous)
            self.previous, self.current, self.next = self.current, session, None
            self._on_handshake_complete(wall)
        self._on_authenticated_received(now)
        if plain_len:
            self._on_data_received(now)
        # Staged packets go out after the receive bookkeeping, as in wireguard-go and the
        # kernel: sending them answers the data just received (no passive keepalive owed) and
        # arms the "data sent, nothing received" timer that the receive would otherwise clear.
        if confirmed and self.staged:
            self._flush_staged(now, wall, out)
        if (session is self.current and session.is_initiator and self.pending is None
                and now - session.created >= self.timers.receive_side_rekey_age):
            self.initiate_handshake(now, wall, out, retry=False)

    # --- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.retransmit_handshake_at, self.send_keepalive_at,
                                 self.new_handshake_at, self.zero_key_material_at,
                                 self.persistent_keepalive_at) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float, wall: float, out: Outbox) -> None:
        if self.retransmit_handshake_at is not None and now >= self.retransmit_handshake_at:
            self.retransmit_handshake_at = None
            if self.handshake_attempts > self.timers.max_handshake_attempts:
                # Give up: REKEY_ATTEMPT_TIME has passed without an answer.
                self.counters.handshake_timeouts += 1
                self.send_keepalive_at = None
                if self.staged:
                    self.counters.drop("handshake_timeout", len(self.staged))
                    self.staged.clear()
                if self.pending is not None:
                    self.indices.free(self.pending.local_index)
                    self.pending = None
                if self.zero_key_material_at is None:
                    self.zero_key_material_at = now + 3 * self.timers.reject_after_time
            else:
                self.handshake_attempts += 1
                self.initiate_handshake(now, wall, out, retry=True)
        if self.send_keepalive_at is not None and now >= self.send_keepalive_at:
            self.send_keepalive_at = None
            self.send_keepalive(now, wall, out)
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self.send_keepalive_at = now + self.timers.keepalive_timeout
        if self.new_handshake_at is not None and now >= self.new_handshake_at:
            # Data went out but nothing came back: the session is presumed dead.
            self.new_handshake_at = None
            self.initiate_handshake(now, wall, out, retry=False)
        if self.zero_key_material_at is not None and now >= self.zero_key_material_at:
            self.zero_key_material_at = None
            self.clear_sessions()
        if self.persistent_keepalive_at is not None and now >= self.persistent_keepalive_at:
            self.persistent_keepalive_at = None
            if self.persistent_keepalive:
                self.send_keepalive(now, wall, out)

    def _on_data_sent(self, now: float) -> None:
        if self.new_handshake_at is None:
            self.new_handshake_at = now + self.timers.new_handshake_after_silence + self._jitter()

    def _on_data_received(self, now: float) -> None:
        if self.send_keepalive_at is None:
            self.send_keepalive_at = now + self.timers.keepalive_timeout
        else:
            self.need_another_keepalive = True

    def _on_authenticated_sent(self, now: float) -> None:
        self.send_keepalive_at = None
        self._on_authenticated_traversal(now)

    def _on_authenticated_received(self, now: float) -> None:
        self.new_handshake_at = None
        self._on_authenticated_traversal(now)

    def _on_authenticated_traversal(self, now: float) -> None:
        if self.persistent_keepalive:
            self.persistent_keepalive_at = now + self.persistent_keepalive

    def _on_handshake_complete(self, wall: float) -> None:
        self.retransmit_handshake_at = None
        self.handshake_attempts = 0
        self.last_handshake_wall = wall
        self.counters.handshakes_completed += 1

    def _on_session_derived(self, now: float) -> None:
        self.zero_key_material_at = now + 3 * self.timers.reject_after_time

    def _jitter(self) -> float:
        pool = self._jitter_pool
        if not pool:
            pool = self.random_bytes(64)
        self._jitter_pool = pool[2:]
        fraction = int.from_bytes(pool[:2], "little") / 65535
        return fraction * self.timers.rekey_timeout_jitter_max

    # --- session lifetime -------------------------------------------------------------------

    def _drop(self, session: Session | None) -> None:
        if session is not None:
            self.indices.free(session.local_index)

    def clear_sessions(self) -> None:
        for session in (self.current, self.previous, self.next):
            self._drop(session)
        self.current = self.previous = self.next = None
        if self.pending is not None:
            self.indices.free(self.pending.local_index)
            self.pending = None

    def expire_for_new_identity(self) -> None:
        """The local private key changed: the handshake in flight is void and the sessions may
        no longer send (they still receive what is already on its way), so the next packet
        starts a handshake under the new key at once — as wireguard-go expires keypairs."""
        if self.pending is not None:
            self.indices.free(self.pending.local_index)
            self.pending = None
        for session in (self.current, self.next):
            if session is not None:
                session.send_counter = self.timers.reject_after_messages
        self.last_initiation_sent = float("-inf")
        self.retransmit_handshake_at = None
        self.handshake_attempts = 0

    def set_persistent_keepalive(self, seconds: float | None, now: float, wall: float,
                                 out: Outbox) -> None:
        """A new persistent-keepalive interval, live: turning it on sends a keepalive at once
        (which starts a handshake without a session), as wireguard-go does."""
        was_on = bool(self.persistent_keepalive)
        self.persistent_keepalive = seconds or None
        if not self.persistent_keepalive:
            self.persistent_keepalive_at = None
        elif not was_on and self.endpoint is not None:
            self.send_keepalive(now, wall, out)
        elif self.persistent_keepalive_at is not None:
            self.persistent_keepalive_at = now + self.persistent_keepalive

    def sessions(self) -> list[Session]:
        return [s for s in (self.current, self.previous, self.next) if s is not None]
