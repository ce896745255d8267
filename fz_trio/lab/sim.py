"""A simulated network for sans-IO Tunnels: in memory, deterministic, on a simulated clock.

Any number of nodes, each one `Device` (core + data path) at an underlay address, exchange
datagrams over directed links with their own latency, jitter (which reorders), loss, duplication
and partitions. Nodes can
roam to a new address (as behind a NAT that rebinds), restart (same key or a new one) and be
reconfigured. Time is simulated: `run_for(seconds)` jumps from event to event, an event being the
earliest of the datagrams in flight and every tunnel's `poll_timeout()`, so minutes of protocol
time pass in milliseconds.

Deterministic: one seed drives the network's own `random.Random` and, derived from it, every
tunnel's `random_bytes` and every generated key, so the same seed and the same calls give the same
bytes on the wire. Addresses follow the test network's plan (docs/testing.md): the underlay is
198.18.0.0/15, tunnel addresses are 100.64.0.0/10 and fd00::/8 — in memory, but kept to anyway.

Used by the core and data path tests (tests/core, tests/datapath) and by the developer REPL
(`fz-trio repl --sim`):

    net = SimNetwork(seed=1)
    alice, bob = net.add_node("alice"), net.add_node("bob")
    net.connect(alice, bob)
    bob.answer_pings = True
    net.ping(alice, bob)        # -> round-trip time in simulated seconds, or None
    net.run_for(130)            # past REKEY_AFTER_TIME: watch the rekey with net.trace = True

Observers (`SimObserver`) see every datagram sent, every delivery before and after the tunnel
handled it, every packet written to a node's TUN and every timer firing; the tests check their
invariants there. A `fate` function may decide, as each datagram is sent, to drop, duplicate,
delay or rewrite it; `history` keeps the datagrams sent and each node's `received` its TUN
writes. `det_key` and `det_random` give the same keys and random bytes for the same name, for
Devices made outside a network too.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable

import attrs

from fz_trio.core import (
    Endpoint,
    Peer,
    TimerConfig,
    as_network,
    encode_key,
    format_endpoint,
    generate_private_key,
    ip,
    messages,
    public_key_of,
)
from fz_trio.datapath import Device, echo_reply_to, icmp_echo, parse_echo

UNDERLAY = ipaddress.IPv4Network("198.18.0.0/15")
TUNNEL_V4 = ipaddress.IPv4Network("100.64.0.0/10")
TUNNEL_V6 = ipaddress.IPv6Network("fd00::/8")
LISTEN_PORT = 51820
# The wall clock at simulated time 0: the handshake's TAI64N timestamps need one.
WALL_EPOCH = 1_700_000_000.0
# Events at one instant beyond this many mean a timer that never moves its deadline: a bug.
_MAX_EVENTS_PER_INSTANT = 10_000


class SimError(RuntimeError):
    """The simulation cannot go on (a tunnel keeps firing a timer at the same instant)."""


def det_random(seed: int | str) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom: the same seed, the same bytes."""
    return random.Random(seed).randbytes


def det_key(seed: int | str) -> bytes:
    """A private key that is the same for the same seed (a name, say)."""
    return generate_private_key(det_random(seed))


@attrs.define
class Link:
    """Conditions on the path from one node to another (one direction)."""

    latency: float = 0.02
    jitter: float = 0.0  # extra delay drawn uniformly from [0, jitter): datagrams overtake
    loss: float = 0.0  # probability that a datagram is lost
    duplicate: float = 0.0  # probability that a datagram arrives twice
    up: bool = True  # False: a partition, every datagram is lost

    @property
    def healthy(self) -> bool:
        return self.up and not self.loss and not self.duplicate


@attrs.frozen
class Datagram:
    """One UDP datagram on the wire. `sender` is the node name, None for an injected one."""

    seq: int
    sent_at: float
    src: Endpoint
    dst: Endpoint
    data: bytes = attrs.field(repr=False)
    sender: str | None

    def __repr__(self) -> str:
        who = self.sender or "injected"
        return (f"<Datagram #{self.seq} t={self.sent_at:.3f} {who} {format_endpoint(self.src)} -> "
                f"{format_endpoint(self.dst)} {describe(self.data)}>")


@attrs.define(eq=False)
class PeerSettings:
    """What a node's configuration says about one peer (a restart rebuilds the tunnel from it)."""

    public_key: bytes
    allowed_ips: list[str]
    endpoint: Endpoint | None
    preshared_key: bytes | None = attrs.field(default=None, repr=False)
    persistent_keepalive: float | None = None


class SimObserver:
    """Sees what happens on a SimNetwork; override what you need."""

    def transmitted(self, node: SimNode, datagram: Datagram) -> None:
        """`node`'s tunnel produced `datagram` (before the link decides its fate)."""

    def lost(self, datagram: Datagram, reason: str) -> None:
        """`datagram` will never arrive (partition, loss, nobody at the address)."""

    def delivering(self, node: SimNode, datagram: Datagram) -> None:
        """`datagram` is about to be handed to `node`'s tunnel."""

    def delivered(self, node: SimNode, datagram: Datagram) -> None:
        """`node`'s tunnel has handled `datagram`; its output is not flushed yet."""

    def tun_packet(self, node: SimNode, packet: bytes) -> None:
        """`node`'s tunnel wrote `packet` to its TUN."""

    def timers_fired(self, node: SimNode) -> None:
        """`node`'s tunnel ran `handle_timeout`; its output is not flushed yet."""

    def packet_sent(self, node: SimNode, packet: bytes) -> None:
        """`node`'s TUN handed `packet` to its tunnel (its output is not flushed yet)."""

    def tick(self, now: float) -> None:
        """Called once at each instant the network stops at, after all its events."""

    def next_deadline(self) -> float | None:
        """A time at which this observer wants the network to stop (and `tick`)."""
        return None


@attrs.define(eq=False)
class SimNode:
    """A host on the simulated network: one Device, its configuration and its TUN."""

    net: SimNetwork = attrs.field(repr=False)
    name: str
    index: int
    private_key: bytes = attrs.field(repr=False)
    address: Endpoint
    tunnel: Device = attrs.field(repr=False)
    peers: dict[bytes, PeerSettings] = attrs.field(factory=dict, repr=False)
    mtu: int = 1420
    generation: int = 0  # restarts so far
    answer_pings: bool = False  # reply to ICMP echo requests for our tunnel addresses
    clock_skew: float = 0.0  # seconds this host's wall clock is ahead of the network's
    received: deque[bytes] = attrs.field(factory=lambda: deque(maxlen=1000), repr=False)

    @property
    def public_key(self) -> bytes:
        return public_key_of(self.private_key)

    @property
    def tunnel_v4(self) -> str:
        """This node's IPv4 tunnel address (the first host of its /24)."""
        return f"100.64.{self.index}.1"

    @property
    def tunnel_v6(self) -> str:
        return f"fd00:64:0:{self.index}::1"

    @property
    def networks(self) -> list[str]:
        """The tunnel prefixes this node owns: what its peers put in their AllowedIPs for it."""
        return [f"100.64.{self.index}.0/24", f"fd00:64:0:{self.index}::/64"]

    def __repr__(self) -> str:
        key = encode_key(self.public_key)[:8]
        return (f"<SimNode {self.name} {format_endpoint(self.address)} key {key}… "
                f"tunnel {self.tunnel_v4} {self.tunnel_v6}>")

    # --- configuration (kept in `peers` too, so that a restart can rebuild the tunnel) ------

    def add_peer(self, other: SimNode | bytes, *, allowed_ips: Iterable[str] | None = None,
                 endpoint: Endpoint | None | bool = True, preshared_key: bytes | None = None,
                 persistent_keepalive: float | None = None) -> Peer:
        """Configure a peer; with a node, its networks and current address are the defaults
        (`endpoint=False`: no endpoint, the peer must contact us first)."""
        key = other.public_key if isinstance(other, SimNode) else other
        if allowed_ips is None:
            allowed_ips = other.networks if isinstance(other, SimNode) else []
        if endpoint is True:
            endpoint = other.address if isinstance(other, SimNode) else None
        elif endpoint is False:
            endpoint = None
        settings = PeerSettings(key, list(allowed_ips), endpoint, preshared_key,
                                persistent_keepalive)
        self.peers[key] = settings
        return self._add_to_tunnel(settings)

    def _add_to_tunnel(self, settings: PeerSettings) -> Peer:
        return self.tunnel.add_peer(
            settings.public_key, allowed_ips=settings.allowed_ips, endpoint=settings.endpoint,
            preshared_key=settings.preshared_key,
            persistent_keepalive=settings.persistent_keepalive)

    def remove_peer(self, other: SimNode | bytes) -> None:
        key = _key_of(other)
        self.peers.pop(key, None)
        self.tunnel.remove_peer(key)

    def set_allowed_ips(self, other: SimNode | bytes, allowed_ips: Iterable[str]) -> None:
        key = _key_of(other)
        self.peers[key].allowed_ips = list(allowed_ips)
        self.tunnel.set_allowed_ips(key, self.peers[key].allowed_ips)
        # An identical prefix moves from its old peer to this one (as in wg): keep that in the
        # other peers' saved settings too, or a restart would give it back.
        taken = {str(as_network(n)) for n in allowed_ips}
        for other_key, settings in self.peers.items():
            if other_key != key:
                settings.allowed_ips = [n for n in settings.allowed_ips
                                        if str(as_network(n)) not in taken]

    def set_preshared_key(self, other: SimNode | bytes, preshared_key: bytes | None) -> None:
        key = _key_of(other)
        self.peers[key].preshared_key = preshared_key
        self.tunnel.set_preshared_key(key, preshared_key)

    def set_endpoint(self, other: SimNode | bytes, endpoint: Endpoint | None) -> None:
        """Like `wg set IFACE peer KEY endpoint ADDR`: the configured endpoint, now."""
        key = _key_of(other)
        self.peers[key].endpoint = endpoint
        self.tunnel.peers[key].endpoint = endpoint

    def peer(self, other: SimNode | bytes) -> Peer:
        """Our tunnel's Peer for `other` (by its current public key)."""
        return self.tunnel.peers[_key_of(other)]

    # --- traffic -------------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        """Our TUN hands `packet` to the tunnel now."""
        self.net.send(self, packet)


def _key_of(other: SimNode | bytes) -> bytes:
    return other.public_key if isinstance(other, SimNode) else other


# Decides what becomes of a datagram a tunnel sent: None lets its link carry it as usual;
# otherwise one (data, extra delay) per copy that arrives, `extra` seconds after the link's own
# delay. [] drops it, two entries duplicate it, other data rewrites it.
Fate = Callable[["Datagram"], "list[tuple[bytes, float]] | None"]


class SimNetwork:
    """Nodes, links, the datagrams in flight and the simulated clock."""

    def __init__(self, seed: int | str = 0, *, timers: TimerConfig | None = None,
                 link: Link | None = None, now: float = 0.0, history_len: int | None = 10_000,
                 received_len: int | None = 1000) -> None:
        """`history_len` datagrams and `received_len` TUN packets per node are remembered (None:
        all, for a test that audits a whole run)."""
        self.seed = seed
        self.rng = random.Random(f"{seed}/network")
        self.now = now
        self.timers = timers or TimerConfig()
        self.default_link = link or Link()
        self.links: dict[tuple[str, str], Link] = {}
        self.nodes: dict[str, SimNode] = {}
        self.observers: list[SimObserver] = []
        self.history: deque[Datagram] = deque(maxlen=history_len)  # datagrams the tunnels sent
        self.received_len = received_len
        self.fate: Fate | None = None  # sees each datagram a tunnel sends that its link let through
        self._by_address: dict[Endpoint, SimNode] = {}
        self._in_flight: list[tuple[float, int, Datagram]] = []
        self._seq = itertools.count()
        self._events_this_instant = 0
        self._tracer: SimObserver | None = None

    # --- topology ------------------------------------------------------------------------------

    def add_node(self, name: str, *, private_key: bytes | None = None, mtu: int = 1420,
                 address: Endpoint | None = None) -> SimNode:
        if name in self.nodes:
            raise ValueError(f"a node called {name!r} exists already")
        index = len(self.nodes) + 1
        if index > 255:
            raise ValueError("at most 255 nodes")
        key = private_key or self._new_private_key(name, 0)
        address = address or (f"198.18.0.{index}", LISTEN_PORT)
        self._check_free(address)
        node = SimNode(self, name, index, key, address, self._new_tunnel(name, key, 0, mtu),
                       mtu=mtu, received=deque(maxlen=self.received_len))
        self.nodes[name] = node
        self._by_address[address] = node
        return node

    def connect(self, a: SimNode, b: SimNode, *, preshared_key: bytes | None = None,
                a_knows_b: bool = True, b_knows_a: bool = True) -> None:
        """Make `a` and `b` peers: each allows the other's networks and (by default) knows its
        address."""
        a.add_peer(b, endpoint=a_knows_b, preshared_key=preshared_key)
        b.add_peer(a, endpoint=b_knows_a, preshared_key=preshared_key)

    def node_at(self, address: Endpoint) -> SimNode | None:
        return self._by_address.get(address)

    def link(self, src: SimNode | str, dst: SimNode | str) -> Link:
        """The link from `src` to `dst` (made from the default on first use); change it in place."""
        key = (_name(src), _name(dst))
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = attrs.evolve(self.default_link)
        return link

    def set_link(self, a: SimNode | str, b: SimNode | str, *, both_ways: bool = True,
                 **conditions: float | bool) -> None:
        """E.g. `net.set_link(alice, bob, loss=0.2, jitter=0.05)`."""
        pairs = [(a, b), (b, a)] if both_ways else [(a, b)]
        for src, dst in pairs:
            link = self.link(src, dst)
            for name, value in conditions.items():
                if not hasattr(link, name):
                    raise AttributeError(f"a Link has no {name!r}")
                setattr(link, name, value)

    def partition(self, a: SimNode | str, b: SimNode | str) -> None:
        """Nothing passes between `a` and `b` (either way) until `heal`."""
        self.set_link(a, b, up=False)

    def heal(self) -> None:
        """Every link back to the default conditions: no partition, loss or duplication.
        Datagrams already in flight keep their delivery times."""
        self.links.clear()

    def roam(self, node: SimNode, address: Endpoint | None = None) -> Endpoint:
        """`node` now sends from, and is reachable only at, a new address — as when a NAT in
        front of it rebinds. Datagrams in flight to the old address are lost."""
        if address is None:
            while True:
                address = (str(UNDERLAY[self.rng.randrange(256, UNDERLAY.num_addresses - 1)]),
                           self.rng.randrange(1024, 65536))
                if address not in self._by_address:
                    break
        self._check_free(address)
        del self._by_address[node.address]
        node.address = address
        self._by_address[address] = node
        return address

    def restart(self, node: SimNode, *, new_key: bool = False) -> SimNode:
        """`node` restarts: a fresh Tunnel from its configuration (sessions, timers and learnt
        endpoints are gone). With `new_key` it comes back with a new identity, which its peers
        do not know until they are reconfigured."""
        node.generation += 1
        if new_key:
            node.private_key = self._new_private_key(node.name, node.generation)
        node.tunnel = self._new_tunnel(node.name, node.private_key, node.generation, node.mtu)
        for settings in node.peers.values():
            node._add_to_tunnel(settings)
        return node

    def _new_private_key(self, name: str, generation: int) -> bytes:
        return det_key(f"{self.seed}/{name}/key/{generation}")

    def _new_tunnel(self, name: str, key: bytes, generation: int, mtu: int) -> Device:
        return Device(key, mtu=mtu, timers=self.timers,
                      random_bytes=det_random(f"{self.seed}/{name}/tunnel/{generation}"))

    def _check_free(self, address: Endpoint) -> None:
        host = ipaddress.ip_address(address[0])
        if host not in UNDERLAY:
            raise ValueError(f"underlay addresses are in {UNDERLAY}, not {address[0]}")
        if address in self._by_address:
            taken_by = self._by_address[address].name
            raise ValueError(f"{format_endpoint(address)} is taken by {taken_by}")

    def wall(self, node: SimNode) -> float:
        """`node`'s wall clock now: the simulated epoch plus the simulated time (and its skew)."""
        return WALL_EPOCH + self.now + node.clock_skew

    # --- inputs --------------------------------------------------------------------------------

    def send(self, node: SimNode, packet: bytes) -> None:
        """`node`'s TUN hands `packet` to its tunnel now; what it transmits goes on the wire."""
        node.tunnel.send_packet(packet, self.now, self.wall(node))
        for observer in self.observers:
            observer.packet_sent(node, packet)
        self._flush(node)

    def inject(self, data: bytes, *, src: Endpoint, dst: Endpoint, delay: float = 0.0,
               at_once: bool = False) -> Datagram:
        """Put a datagram of our own making on the wire (an attacker, a replay). `at_once` hands
        it to the node at `dst` now, as an attacker next to it would, instead of after `delay`."""
        datagram = Datagram(next(self._seq), self.now, src, dst, bytes(data), None)
        if at_once:
            self._deliver(datagram)
        else:
            self._schedule(datagram, self.now + delay)
        return datagram

    def start(self, node: SimNode) -> None:
        """`node`'s tunnel starts, as `fz-trio up` starts it (a peer with a persistent keepalive
        handshakes at once)."""
        node.tunnel.start(self.now, self.wall(node))
        self._flush(node)

    def flush(self, node: SimNode | None = None) -> None:
        """Put on the wire what a test made `node`'s tunnel (or every node's) produce by calling
        it directly (a batch send, say); the network only flushes after its own calls."""
        for each in [node] if node is not None else list(self.nodes.values()):
            self._flush(each)

    def deliver_now(self, datagram: Datagram) -> None:
        """Hand `datagram` to whoever is at its destination at once, outside the schedule."""
        self._deliver(datagram)

    # --- datagrams in flight -----------------------------------------------------------------

    def in_flight(self) -> list[tuple[float, Datagram]]:
        """(arrival time, datagram) in arrival order."""
        return [(at, d) for at, _, d in sorted(self._in_flight)]

    def drop(self, datagram: Datagram) -> None:
        self._in_flight = [e for e in self._in_flight if e[2] is not datagram]
        heapq.heapify(self._in_flight)
        self._notify_lost(datagram, "dropped")

    def delay(self, datagram: Datagram, extra: float) -> None:
        """Deliver `datagram` `extra` seconds later than planned: later ones overtake it."""
        self._in_flight = [(at + extra, seq, d) if d is datagram else (at, seq, d)
                           for at, seq, d in self._in_flight]
        heapq.heapify(self._in_flight)

    def duplicate(self, datagram: Datagram, extra: float = 0.0) -> None:
        """A second copy of `datagram` arrives `extra` seconds after the first."""
        for at, _, d in list(self._in_flight):
            if d is datagram:
                heapq.heappush(self._in_flight, (at + extra, next(self._seq), d))
                return

    # --- time ----------------------------------------------------------------------------------

    def next_event(self) -> float | None:
        """The earliest of: a datagram arriving, a tunnel's deadline, an observer's deadline."""
        times = [t for t in (node.tunnel.poll_timeout() for node in self.nodes.values())
                 if t is not None]
        times += [t for t in (o.next_deadline() for o in self.observers) if t is not None]
        if self._in_flight:
            times.append(self._in_flight[0][0])
        return min(times) if times else None

    def step(self, until: float = float("inf")) -> bool:
        """Advance to the next event (if it is not after `until`) and handle everything due
        then: arrivals first, in order, then timers. False when there was nothing to do."""
        at = self.next_event()
        if at is None or at > until:
            return False
        if at > self.now:
            self.now = at
            self._events_this_instant = 0
        self._events_this_instant += 1
        if self._events_this_instant > _MAX_EVENTS_PER_INSTANT:
            raise SimError(f"no progress at t={self.now}: a timer keeps firing")
        while self._in_flight and self._in_flight[0][0] <= self.now:
            _, _, datagram = heapq.heappop(self._in_flight)
            self._deliver(datagram)
        for node in list(self.nodes.values()):
            deadline = node.tunnel.poll_timeout()
            if deadline is not None and deadline <= self.now:
                node.tunnel.handle_timeout(self.now, self.wall(node))
                for observer in self.observers:
                    observer.timers_fired(node)
                self._flush(node)
        for observer in self.observers:
            observer.tick(self.now)
        return True

    def run_until(self, end: float) -> None:
        """Handle every event up to and including time `end`; the clock then reads `end`."""
        while self.step(until=end):
            pass
        self.now = max(self.now, end)
        for observer in self.observers:
            observer.tick(self.now)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    run = run_for  # `net.run(5)` reads well in the REPL

    def run_while(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Run while `condition()` holds, at most `timeout` seconds; True if it stopped holding."""
        end = self.now + timeout
        while condition():
            if not self.step(until=end):
                self.now = max(self.now, end)
                return not condition()
        return True

    # --- ping, as the hosts behind the tunnels would do it -------------------------------------

    def ping(self, src: SimNode, dst: SimNode | str, *, family: int = 4,
             timeout: float = 10.0, payload: bytes = b"fz-trio sim ping") -> float | None:
        """`src` sends an ICMP echo request through its tunnel to `dst` (a node or a tunnel
        address); the round-trip time in simulated seconds, or None without a reply in
        `timeout`. A node answers only with `answer_pings` set."""
        if isinstance(dst, SimNode):
            target = dst.tunnel_v4 if family == 4 else dst.tunnel_v6
        else:
            target = dst
        source = src.tunnel_v4 if ipaddress.ip_address(target).version == 4 else src.tunnel_v6
        ident, seq = self.rng.randrange(1 << 16), self.rng.randrange(1 << 16)
        request = icmp_echo(source, target, ident, seq, payload)
        started = self.now
        replied: list[float] = []

        class Watch(SimObserver):
            def tun_packet(self, node: SimNode, packet: bytes) -> None:
                if node is src and parse_echo(packet) == ("reply", target, source, ident, seq):
                    replied.append(node.net.now)

        watch = Watch()
        self.observers.append(watch)
        try:
            self.send(src, request)
            self.run_while(lambda: not replied, timeout)
        finally:
            self.observers.remove(watch)
        return replied[0] - started if replied else None

    # --- tracing -------------------------------------------------------------------------------

    @property
    def trace(self) -> bool:
        """Print every datagram, delivery and TUN write as it happens (the REPL turns it on)."""
        return self._tracer is not None

    @trace.setter
    def trace(self, on: bool) -> None:
        if on and self._tracer is None:
            self._tracer = Tracer(self)
            self.observers.append(self._tracer)
        elif not on and self._tracer is not None:
            self.observers.remove(self._tracer)
            self._tracer = None

    # --- internals -----------------------------------------------------------------------------

    def _flush(self, node: SimNode) -> None:
        """Put `node`'s transmits on the wire and collect its TUN writes (answering pings)."""
        while True:
            transmits = node.tunnel.take_transmits()
            packets = node.tunnel.take_tun_packets()
            if not transmits and not packets:
                return
            for data, dst in transmits:
                datagram = Datagram(next(self._seq), self.now, node.address, dst, bytes(data),
                                    node.name)
                self.history.append(datagram)
                for observer in self.observers:
                    observer.transmitted(node, datagram)
                self._route(node, datagram)
            for written in packets:
                packet = bytes(written)
                node.received.append(packet)
                for observer in self.observers:
                    observer.tun_packet(node, packet)
                if node.answer_pings:
                    reply = echo_reply_to(packet, (node.tunnel_v4, node.tunnel_v6))
                    if reply is not None:
                        node.tunnel.send_packet(reply, self.now, self.wall(node))
                        for observer in self.observers:
                            observer.packet_sent(node, reply)

    def _route(self, sender: SimNode, datagram: Datagram) -> None:
        target = self._by_address.get(datagram.dst)
        link = self.link(sender, target) if target is not None else self.default_link
        # Every datagram draws the same random numbers, so that changing one link's conditions
        # does not change what happens on the others.
        lost, doubled = self.rng.random(), self.rng.random()
        jitter = (self.rng.random(), self.rng.random())
        if not link.up:
            self._notify_lost(datagram, "partition")
            return
        if lost < link.loss:
            self._notify_lost(datagram, "loss")
            return
        delay = link.latency + jitter[0] * link.jitter
        copies = self.fate(datagram) if self.fate is not None else None
        if copies is not None:
            if not copies:
                self._notify_lost(datagram, "fate")
            for data, extra in copies:
                copy = datagram if data == datagram.data else attrs.evolve(
                    datagram, seq=next(self._seq), data=bytes(data))
                self._schedule(copy, self.now + delay + extra)
            return
        self._schedule(datagram, self.now + delay)
        if doubled < link.duplicate:
            self._schedule(datagram, self.now + link.latency + jitter[1] * link.jitter)

    def _schedule(self, datagram: Datagram, at: float) -> None:
        heapq.heappush(self._in_flight, (at, next(self._seq), datagram))

    def _deliver(self, datagram: Datagram) -> None:
        node = self._by_address.get(datagram.dst)
        if node is None:
            self._notify_lost(datagram, "no host at the address")
            return
        for observer in self.observers:
            observer.delivering(node, datagram)
        node.tunnel.receive_datagram(datagram.data, datagram.src, self.now, self.wall(node))
        for observer in self.observers:
            observer.delivered(node, datagram)
        self._flush(node)

    def _notify_lost(self, datagram: Datagram, reason: str) -> None:
        for observer in self.observers:
            observer.lost(datagram, reason)


def _name(node: SimNode | str) -> str:
    return node if isinstance(node, str) else node.name


# --- describing datagrams and packets ----------------------------------------------------------


def describe(data: bytes) -> str:
    """A one-line summary of a WireGuard datagram (it does not decrypt anything)."""
    kind = messages.message_type(data)
    if kind == messages.TYPE_INITIATION and len(data) == messages.INITIATION_LEN:
        sender = struct.unpack_from("<I", data, 4)[0]
        return f"handshake initiation from index {sender:08x}"
    if kind == messages.TYPE_RESPONSE and len(data) == messages.RESPONSE_LEN:
        sender, receiver = struct.unpack_from("<II", data, 4)
        return f"handshake response {sender:08x} -> index {receiver:08x}"
    if kind == messages.TYPE_COOKIE_REPLY and len(data) == messages.COOKIE_REPLY_LEN:
        return f"cookie reply to index {struct.unpack_from('<I', data, 4)[0]:08x}"
    if kind == messages.TYPE_TRANSPORT and len(data) >= messages.TRANSPORT_MIN_LEN:
        receiver, counter = struct.unpack_from("<IQ", data, 4)
        what = "keepalive" if len(data) == messages.TRANSPORT_MIN_LEN else "data"
        return f"{what} to index {receiver:08x} #{counter} ({len(data)} B)"
    return f"not WireGuard ({len(data)} B)"


def describe_packet(packet: bytes) -> str:
    """A one-line summary of an IP packet."""
    echo = parse_echo(packet)
    if echo is not None:
        kind, src, dst, ident, seq = echo
        return f"ICMP echo {kind} {src} -> {dst} id {ident} seq {seq}"
    shape, addresses = ip.layout(packet), ip.addresses(packet)
    if shape is None or addresses is None:
        return f"not IP ({len(packet)} B)"
    version, _, protocol = shape
    source, destination = (ipaddress.ip_address(a) for a in addresses)
    what = "proto" if version == 4 else "next header"
    return f"IPv{version} {source} -> {destination} {what} {protocol} ({len(packet)} B)"


class Tracer(SimObserver):
    """Prints one line per datagram sent or lost and per TUN write: `net.trace = True`."""

    def __init__(self, net: SimNetwork, write: Callable[[str], None] = print) -> None:
        self.net = net
        self.write = write

    def _who(self, endpoint: Endpoint) -> str:
        node = self.net.node_at(endpoint)
        return node.name if node is not None else format_endpoint(endpoint)

    def transmitted(self, node: SimNode, datagram: Datagram) -> None:
        self.write(f"[{self.net.now:9.3f}] {node.name:>6} -> {self._who(datagram.dst):<6} "
                   f"{describe(datagram.data)}")

    def lost(self, datagram: Datagram, reason: str) -> None:
        self.write(f"[{self.net.now:9.3f}] {'':>6}    lost: {describe(datagram.data)} ({reason})")

    def tun_packet(self, node: SimNode, packet: bytes) -> None:
        self.write(f"[{self.net.now:9.3f}] {node.name:>6} <- TUN: {describe_packet(packet)}")


