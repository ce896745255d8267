"""The Tunnel: one local identity, its peers and cryptokey routing — WireGuard without IO.

Drive it with three inputs and drain two outputs:

    tunnel.send_packet(ip_packet, now)             # from TUN (send_packets: many;
                                                   #  send_segments: a TSO/USO super-packet)
    tunnel.receive_datagram(data, source, now)     # from UDP (receive_batch: a GRO read)
    tunnel.handle_timeout(now)                     # when now >= tunnel.poll_timeout()
    tunnel.take_transmits()  -> [(datagram, (host, port)), ...]   # to UDP
    tunnel.take_tun_packets() -> [ip_packet, ...]                  # to TUN

`now` is a monotonic time in seconds chosen by the caller; the wall clock (needed only for the
handshake's TAI64N timestamp) is `now + wall_offset`, which the caller keeps current.
Bad input never raises: it is dropped and counted in `counters`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable

from fz_trio.core import messages, noise
from fz_trio.core.allowed_ips import AllowedIPs, Network
from fz_trio.core.cookie import CookieChecker
from fz_trio.core.crypto import CryptoError, public_key_of
from fz_trio.core.gso import Batch, GsoBatcher
from fz_trio.core.messages import MessageError
from fz_trio.core.offload import Segments
from fz_trio.core.peer import Endpoint, LocalIdentity, Peer, Transmit
from fz_trio.core.session import IndexTable, Session
from fz_trio.core.stats import Counters
from fz_trio.core.timers import TimerConfig

# Handshake messages per second above which a responder demands cookies (mac2) first.
DEFAULT_UNDER_LOAD_THRESHOLD = 64
_UNDER_LOAD_HOLD = 1.0


class TunnelError(ValueError):
    """A local misuse of the Tunnel API (a bad key, a duplicate peer)."""


class Tunnel:
    def __init__(
        self,
        private_key: bytes,
        *,
        mtu: int = 1420,
        timers: TimerConfig | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
        under_load_threshold: int = DEFAULT_UNDER_LOAD_THRESHOLD,
    ) -> None:
        if len(private_key) != 32:
            raise TunnelError("private key must be 32 bytes")
        self.identity = LocalIdentity(private_key, public_key_of(private_key))
        self.mtu = mtu
        self.timers = timers or TimerConfig()
        self.random_bytes = random_bytes
        self.wall_offset = wall_offset
        self.counters = Counters()
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        # address bytes -> peer (or None), in front of the prefix table; cleared on any change.
        self._route_cache: dict[bytes, Peer | None] = {}
        self.indices = IndexTable(random_bytes)
        self.cookie_checker = CookieChecker(self.identity.public_key, random_bytes)
        self.under_load_threshold = under_load_threshold
        self.force_under_load = False
        self._handshake_window_start = float("-inf")
        self._handshakes_in_window = 0
        self._under_load_until = float("-inf")
        self._transmits = GsoBatcher()
        self._tun_packets: list[bytearray] = []

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

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
        if len(public_key) != 32:
            raise TunnelError("peer public key must be 32 bytes")
        if public_key in self.peers:
            raise TunnelError("peer already exists")
        if public_key == self.public_key:
            raise TunnelError("a peer cannot have our own public key")
        try:
            peer = Peer(
                identity=self.identity, public_key=public_key,
                preshared_key=preshared_key or bytes(32), endpoint=_normalise(endpoint),
                persistent_keepalive=persistent_keepalive or None, timers=self.timers,
                indices=self.indices, counters=self.counters, random_bytes=self.random_bytes,
                mtu=self.mtu,
            )
        except CryptoError as e:
            raise TunnelError(f"peer public key is unusable: {e}") from e
        self.peers[public_key] = peer
        self.set_allowed_ips(public_key, allowed_ips)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is not None:
            peer.clear_sessions()
            self.allowed_ips.remove_value(peer)
            self._route_cache.clear()

    def set_allowed_ips(self, public_key: bytes, allowed_ips: Iterable[Network | str]) -> None:
        peer = self.peers[public_key]
        self._route_cache.clear()
        self.allowed_ips.remove_value(peer)
        for network in allowed_ips:
            self.allowed_ips.insert(ipaddress.ip_network(network, strict=False), peer)

    def set_preshared_key(self, public_key: bytes, preshared_key: bytes | None) -> None:
        self.peers[public_key].preshared_key = preshared_key or bytes(32)

    def start(self, now: float) -> None:
        """Bring the tunnel up: peers with a persistent keepalive handshake at once, like wg."""
        wall = now + self.wall_offset
        for peer in self.peers.values():
            if peer.persistent_keepalive and peer.endpoint is not None:
                peer.send_keepalive(now, wall, self._transmits)

    # --- the three inputs -------------------------------------------------------------------

    def send_packet(self, packet: bytes | bytearray | memoryview, now: float) -> None:
        """An IP packet read from TUN: route it to its peer by destination address."""
        peer = self.route(_destination(packet))
        if peer is None:
            self.counters.drop("no_route" if len(packet) >= 20 else "tun_not_ip")
            return
        peer.send_packet(packet, now, now + self.wall_offset, self._transmits)

    def send_packets(self, packets: Iterable[bytes | bytearray | memoryview], now: float) -> None:
        """Many IP packets from TUN (a batch, the segments of a super-packet): like `send_packet`
        each, but a run of packets to one destination is routed once."""
        wall = now + self.wall_offset
        out = self._transmits
        last_destination: bytes | None = None
        peer: Peer | None = None
        for packet in packets:
            destination = _destination(packet)
            if destination != last_destination or destination is None:
                peer = self.route(destination)
                last_destination = destination
            if peer is None:
                self.counters.drop("no_route" if len(packet) >= 20 else "tun_not_ip")
                continue
            peer.send_packet(packet, now, wall, out)

    def send_segments(self, segments: Segments, now: float) -> None:
        """The segments of a TUN super-packet: routed once, each built and sealed in place."""
        peer = self.route(segments.destination)
        if peer is None:
            self.counters.drop("no_route", segments.count)
            return
        peer.send_segments(segments, now, now + self.wall_offset, self._transmits)

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

    def receive_datagram(self, data: bytes | bytearray | memoryview, source: Endpoint,
                         now: float) -> None:
        """A UDP datagram from `source`: decrypt, authenticate, route, or drop and count."""
        if data[:4] == _TRANSPORT_TYPE and len(data) >= messages.TRANSPORT_MIN_LEN:
            self._receive_transport(data, source, now)
            return
        kind = messages.message_type(data)
        if kind == messages.TYPE_TRANSPORT:
            self.counters.drop("malformed")
        elif kind == 0:
            self.counters.drop("malformed")
        else:
            self._receive_handshake(bytes(data), _normalise(source), now)  # type: ignore[arg-type]

    def handle_timeout(self, now: float) -> None:
        wall = now + self.wall_offset
        for peer in list(self.peers.values()):
            deadline = peer.next_deadline()
            if deadline is not None and now >= deadline:
                peer.handle_timeout(now, wall, self._transmits)

    def poll_timeout(self) -> float | None:
        """The earliest time at which `handle_timeout` has something to do."""
        deadlines = [d for d in (p.next_deadline() for p in self.peers.values()) if d is not None]
        return min(deadlines) if deadlines else None

    # --- the two outputs --------------------------------------------------------------------

    def take_transmits(self) -> list[Transmit]:
        """Each datagram separately, as bytes (tests, the simulator)."""
        batches = self.take_batches()
        out: list[Transmit] = [(bytes(d), b.endpoint) for b in batches for d in b.datagrams()]
        self._transmits.recycle(batches)
        return out

    def take_batches(self) -> list[Batch]:
        """Datagrams grouped for UDP GSO (one `sendmsg` each); hand them back with `recycle`."""
        batches = self._transmits.take()
        self.counters.packets_to_network += sum(b.count for b in batches)
        return batches

    def recycle(self, batches: list[Batch]) -> None:
        self._transmits.recycle(batches)

    def take_tun_packets(self) -> list[bytearray]:
        out, self._tun_packets = self._tun_packets, []
        return out

    # --- inbound ----------------------------------------------------------------------------

    def receive_batch(self, buffer: bytes | bytearray | memoryview, nbytes: int, size: int,
                      source: Endpoint, now: float) -> None:
        """The datagrams of one UDP GRO read, all from `source`: back to back in
        `buffer[:nbytes]`, each `size` bytes but the last. Like `receive_datagram` for each, with
        the session found and the peer's timer bookkeeping done once per run of datagrams for
        one session."""
        if nbytes <= 0 or size <= 0:
            self.counters.drop("malformed")  # an empty datagram
            return
        view = memoryview(buffer)
        unpack = messages.TRANSPORT_HEADER.unpack_from
        counters = self.counters
        timers = self.timers
        tun = self._tun_packets
        endpoint = _normalise(source)
        run_receiver = -1
        peer: Peer | None = None
        session: Session | None = None
        run_bytes = run_plain = 0
        allowed_v4: bytes | None = None
        for start in range(0, nbytes, size):
            end = min(start + size, nbytes)
            kind = receiver = counter = 0
            if end - start >= _TRANSPORT_MIN_LEN:
                kind, receiver, counter = unpack(buffer, start)
            if kind != messages.TYPE_TRANSPORT:  # (with the reserved bytes zero)
                if session is not None:
                    self._run_received(peer, session, run_bytes, run_plain, endpoint, now)
                    session, run_receiver = None, -1
                self.receive_datagram(view[start:end], source, now)
                continue
            if receiver != run_receiver:
                if session is not None:
                    self._run_received(peer, session, run_bytes, run_plain, endpoint, now)
                entry = self.indices.get(receiver)
                if entry is None or entry[1] is None:
                    counters.drop("unknown_index")
                    session, run_receiver = None, -1
                    continue
                peer, session = entry
                run_receiver = receiver
                run_bytes = run_plain = 0
                allowed_v4 = None  # an inner IPv4 source this peer's AllowedIPs hold
            if not session.usable_for_receiving(counter, now, timers):
                counters.drop("session_expired")
                continue
            plain = session.open(buffer, start, end, counter)
            if plain is None:
                counters.drop("replay_or_forged")
                continue
            # Any authenticated non-empty plaintext is data for the timers (whitepaper 6.5;
            # wireguard-go and the kernel arm the passive keepalive before checking the inner
            # packet), even when the packet itself is then dropped.
            run_bytes += end - start
            if plain:
                run_plain += len(plain)
                if plain[0] >> 4 == 4 and plain[12:16] == allowed_v4 and len(plain) >= 20:
                    # The source was routed to this peer earlier in the run: only the length
                    # is left to check.
                    packet_len = (plain[2] << 8) | plain[3]
                    if not 20 <= packet_len <= len(plain):
                        counters.drop("inner_not_ip")
                        continue
                else:
                    packet_len = self._inner_length(plain, peer)
                    if packet_len > 0 and plain[0] >> 4 == 4:
                        allowed_v4 = bytes(plain[12:16])
                if packet_len > 0:
                    if packet_len != len(plain):
                        del plain[packet_len:]  # the padding
                    tun.append(plain)
                    counters.packets_to_tun += 1
        if session is not None:
            self._run_received(peer, session, run_bytes, run_plain, endpoint, now)

    def _run_received(self, peer: Peer | None, session: Session, datagram_bytes: int,
                      plain_bytes: int, source: Endpoint | None, now: float) -> None:
        if datagram_bytes and peer is not None and source is not None:
            peer.session_received(session, datagram_bytes, plain_bytes, source, now,
                                  now + self.wall_offset, self._transmits)

    def _receive_transport(self, data: bytes | bytearray | memoryview, source: Endpoint,
                           now: float) -> None:
        self.receive_batch(data, len(data), len(data), source, now)

    def _inner_length(self, plain: bytearray, peer: Peer) -> int:
        """Length of the IP packet inside `plain` without padding, or -1 (counted) to drop it."""
        version = plain[0] >> 4
        if version == 4 and len(plain) >= 20:
            length = (plain[2] << 8) | plain[3]
            source = bytes(plain[12:16])
        elif version == 6 and len(plain) >= 40:
            length = 40 + ((plain[4] << 8) | plain[5])
            source = bytes(plain[8:24])
        else:
            length = 0
        if not 20 <= length <= len(plain):
            self.counters.drop("inner_not_ip")
            return -1
        if self.route(source) is not peer:
            self.counters.drop("source_not_allowed")
            return -1
        return length

    def _under_load(self, now: float) -> bool:
        if now - self._handshake_window_start >= 1.0:
            self._handshake_window_start = now
            self._handshakes_in_window = 0
        self._handshakes_in_window += 1
        if self._handshakes_in_window > self.under_load_threshold:
            self._under_load_until = now + _UNDER_LOAD_HOLD
        return self.force_under_load or now < self._under_load_until

    def _receive_handshake(self, data: bytes, source: Endpoint, now: float) -> None:
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
        if not self.cookie_checker.mac1_valid(data):
            self.counters.drop("handshake_bad_mac1")
            return
        if self._under_load(now) and not self.cookie_checker.mac2_valid(data, source, now):
            reply = self.cookie_checker.make_reply(data, msg.sender, source, now)
            self._transmits.append((reply.pack(), source))
            self.counters.cookie_replies_sent += 1
            return
        wall = now + self.wall_offset
        if isinstance(msg, messages.Initiation):
            try:
                consumed = noise.consume_initiation(
                    msg, local_static_private=self.identity.private_key,
                    local_static_public=self.identity.public_key,
                )
            except noise.HandshakeError:
                self.counters.drop("handshake_auth")
                return
            peer = self.peers.get(consumed.remote_static)
            if peer is None:
                self.counters.drop("unknown_peer")
                return
            peer.answer_initiation(consumed, data, source, now, self._transmits)
        else:
            entry = self.indices.get(msg.receiver)
            if entry is None or entry[1] is not None:
                self.counters.drop("unknown_index")
                return
            entry[0].consume_response(msg, data, source, now, wall, self._transmits)


_TRANSPORT_TYPE = bytes([messages.TYPE_TRANSPORT, 0, 0, 0])
_TRANSPORT_MIN_LEN = messages.TRANSPORT_MIN_LEN


def _destination(packet: bytes | bytearray | memoryview) -> bytes | None:
    """The destination address bytes of an IPv4/IPv6 packet, None if it is not one."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return bytes(packet[16:20])
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return bytes(packet[24:40])
    return None


def _normalise(endpoint: Endpoint | tuple | None) -> Endpoint | None:
    """(host, port) with IPv4-mapped IPv6 folded to IPv4, so one peer has one address form."""
    if endpoint is None:
        return None
    host, port = endpoint[0], endpoint[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return (host, port)
