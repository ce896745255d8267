"""The tunnel as a state machine: random operations on a simulated network, invariants after each.

The machines themselves; test_state_machine.py runs them and test_mutations.py shows they bite.

Three nodes (alice, bob, carol), each a sans-IO `Tunnel`, meet on `fz_trio.lab.sim.SimNetwork` with
the protocol's real timers (REKEY_AFTER_MESSAGES/REJECT_AFTER_MESSAGES lowered to 64/100 so that
they can be crossed). Hypothesis picks the operations — send packets, let time pass, drop,
duplicate, delay, partition, roam, restart, reconfigure, forge, replay — and shrinks any failure
to a short, readable sequence of steps.

A failure prints the steps as code; `# below, ...` lines are notes about the step printed under
them (hypothesis prints a step after running it): which datagram `which=3` picked, and so on.

The reference model (`ModelNode`) is what the configuration says should happen: who may send what to
whom (its own longest-prefix match over AllowedIPs), which keys and preshared keys each node has.
The `Checker` watches every event on the simulated network and checks the invariants at the moment
they could break, so a failure points at the exact datagram:

Safety, on every delivery and every datagram sent
  S1 every packet a node writes to its TUN was sent by a node's TUN, byte for byte, at most once
     over the whole run, to the key the sender's AllowedIPs route its destination to, and its
     source address is one the receiver's AllowedIPs (the model's, at delivery) give the key of
     the peer whose session carried it;
  S2 a datagram is accepted (the receiving peer's rx_bytes grows) only if a tunnel really sent it
     (handshake messages compared without mac2, which only counts under load), only if this
     tunnel instance never accepted it before, and only from the peer whose key sent it; a peer's
     endpoint changes only on an accepted datagram, to that datagram's source;
  S3 no session is used past REJECT_AFTER_TIME (measured from when the checker first saw it, not
     from the core's own `created`) or at a counter >= REJECT_AFTER_MESSAGES, to send or to
     receive;
  S4 no (sending key, counter) pair is ever sent twice;
  S5 routing agrees with the model: a packet is counted `no_route` exactly when the model has no
     peer for its destination.

Keepalives (whitepaper 6.5, with wireguard-go's and the kernel's exact timer rules)
  K1 a keepalive is sent only (a) at the instant a session becomes current — the initiator
     confirming a handshake, or packets staged while there was no session being flushed — or (b)
     when the passive-keepalive timer is due: armed KEEPALIVE_TIMEOUT after authenticated data is
     received, unless already armed (then one more is owed), cancelled by any authenticated
     datagram sent to that peer (transport or handshake) and by giving up a handshake;
  K2 when that timer is due and the node has a usable session, it sends something to that peer
     at that instant (without a usable session the keepalive waits for one, as in wireguard-go).
  No persistent keepalive is configured here.

Liveness (the `check_liveness` rule, and `teardown` at the end of every example, after the
operator reconciled every pair's configuration), what the protocol can promise
  The network is healthy from the moment every link is (no partition, loss or duplication,
  20-22 ms latency) and the last datagram sent before that has arrived. Take two nodes whose
  configurations agree at that moment (each has the other's current key, equal preshared keys,
  AllowedIPs that let the probe addresses through) and of which one knows the other's current
  address (the sender, if only one sends); one sends a probe to the other every second (or both
  do, each to the other). Then from
  LIVENESS_BOUND seconds after the network became healthy, no two consecutive probes of a
  sender are lost, and both nodes end with a current session.
  Why not "every probe arrives": when both ends rekey at once, each uses the session it
  initiated and the other holds it as `previous`; answering the next initiation drops
  `previous` (wireguard-go and the kernel do the same), so a packet in flight on it is lost.
  The sender moves to the new session one round trip later, and a node's own initiations are
  REKEY_TIMEOUT apart, so such losses are single.
  Why not REKEY_TIMEOUT + jitter: that holds for a sender that knows it has no session. A sender
  whose peer lost the session (a restart) only notices by silence, KEEPALIVE_TIMEOUT +
  REKEY_TIMEOUT + jitter after its first unanswered data, and the handshake it then starts is
  skipped when it sent or answered one less than REKEY_TIMEOUT before, which costs a second
  such wait; see LIVENESS_BOUND.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import math
import struct
from typing import NoReturn

import attrs
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
)

from fz_trio.core import TimerConfig, format_endpoint, messages
from fz_trio.datapath import udp_packet
from fz_trio.lab.sim import (
    Datagram,
    Link,
    SimNetwork,
    SimNode,
    SimObserver,
    describe,
)

NAMES = ("alice", "bob", "carol")
# Real times; message limits low enough for a burst to cross them, but REKEY_AFTER_MESSAGES
# above what a one-way sender sends within LIVENESS_BOUND, so that rekeying by count cannot
# stand in for noticing a dead session by silence.
TIMERS = TimerConfig(rekey_after_messages=64, reject_after_messages=100)
ATTACKER = ("198.19.255.254", 6666)
# The default link: 20-22 ms. The jitter matters: with a fixed latency independent events
# (a keepalive deadline, a datagram from elsewhere) coincide to the last bit, and at an exact tie
# the order is arbitrary and either outcome is right; the checker's models assume no such ties.
HEALTHY_LINK = Link(latency=0.02, jitter=0.002)
HEALTHY_LATENCY = HEALTHY_LINK.latency + HEALTHY_LINK.jitter

# A session the peer lost is noticed by silence after this long (wireguard-go's "new handshake").
_SILENCE = TIMERS.keepalive_timeout + TIMERS.rekey_timeout + TIMERS.rekey_timeout_jitter_max
# Worst case as reasoned in the module docstring: one silence to notice, one more when that
# handshake was skipped for a recent one, one retransmission (an initiation refused: TAI64N not
# newer than the last, or under 50 ms after another), the probe interval and a few round trips.
LIVENESS_BOUND = (2 * _SILENCE + TIMERS.rekey_timeout + TIMERS.rekey_timeout_jitter_max + 1.0
                  + 8 * HEALTHY_LATENCY)
PROBE_INTERVAL = 1.0
PROBES_AFTER_BOUND = 4  # probe packets each way after the bound
# (seconds until a direction flowed, whether it was one-way): what the bound has to cover.
LIVENESS_SEEN: list[tuple[float, bool]] = []


def psk_bytes(name: str | None) -> bytes | None:
    return None if name is None else hashlib.blake2s(name.encode()).digest()


# --- what the configuration says ---------------------------------------------------------------


@attrs.define
class ModelNode:
    key: bytes
    old_keys: list[bytes] = attrs.Factory(list)
    # AllowedIPs as wg keeps them: each prefix belongs to exactly one peer key.
    routes: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, bytes] = attrs.Factory(dict)
    psk: dict[bytes, bytes | None] = attrs.Factory(dict)  # configured peers -> preshared key

    def route(self, address: str) -> bytes | None:
        """Longest-prefix match, written independently of fz_trio.core.allowed_ips."""
        ip = ipaddress.ip_address(address)
        best: tuple[int, bytes] | None = None
        for network, key in self.routes.items():
            if ip.version == network.version and ip in network:
                if best is None or network.prefixlen > best[0]:
                    best = (network.prefixlen, key)
        return best[1] if best else None

    def set_allowed(self, key: bytes, networks: list[str]) -> None:
        self.routes = {n: k for n, k in self.routes.items() if k != key}
        for text in networks:
            self.routes[ipaddress.ip_network(text, strict=False)] = key

    def remove_peer(self, key: bytes) -> None:
        self.psk.pop(key, None)
        self.routes = {n: k for n, k in self.routes.items() if k != key}


@attrs.frozen
class SentPacket:
    id: int
    sender: str
    sender_key: bytes
    intended_key: bytes | None  # the key the model routes the destination to at the sender
    src: str
    dst: str
    data: bytes = attrs.field(repr=False)
    sent_at: float


@attrs.frozen
class PacketSpec:
    """An IP packet to send: from `sender`'s TUN, with these addresses and payload size."""

    sender: str
    src: str
    dst: str
    size: int


def _addresses(index: int) -> list[str]:
    # .1 is inside the /25 that `set_allowed_ips` can narrow a node to; .200 is not.
    return [f"100.64.{index}.1", f"100.64.{index}.200", f"fd00:64:0:{index}::1"]


FOREIGN = ["100.65.0.1", "fd00:99::1"]  # in the tunnel ranges, owned by nobody
ALL_ADDRESSES = [a for i in range(1, len(NAMES) + 1) for a in _addresses(i)] + FOREIGN


@st.composite
def packet_specs(draw: st.DrawFn) -> PacketSpec:
    index = draw(st.integers(0, len(NAMES) - 1))
    own = _addresses(index + 1)
    src = draw(st.one_of(st.sampled_from(own), st.sampled_from(ALL_ADDRESSES)))
    v6 = ":" in src
    same_family = [a for a in ALL_ADDRESSES if (":" in a) == v6]
    dst = draw(st.sampled_from(same_family))
    size = draw(st.one_of(st.integers(0, 48), st.integers(0, 1420 - 48 - 16)))
    return PacketSpec(NAMES[index], src, dst, size)


def final_probe_specs() -> st.SearchStrategy[list[str]]:
    """For each pair of nodes: probes one way, the other, or both ways."""
    pairs = [(a, b) for i, a in enumerate(NAMES) for b in NAMES[i + 1:]]
    return st.tuples(*(st.sampled_from([f"{a}<->{b}", f"{a}->{b}", f"{b}->{a}"])
                       for a, b in pairs)).map(list)


# AllowedIPs a node can give one of its peers, by what they mean relative to that peer.
NETWORK_CHOICES = ["own /24", "own /25", "own v6", "third /24", "all v4", "all v6"]


def resolve_networks(choices: list[str], peer_index: int, third_index: int) -> list[str]:
    table = {
        "own /24": f"100.64.{peer_index}.0/24",
        "own /25": f"100.64.{peer_index}.0/25",
        "own v6": f"fd00:64:0:{peer_index}::/64",
        "third /24": f"100.64.{third_index}.0/24",
        "all v4": "100.64.0.0/10",
        "all v6": "fd00::/8",
    }
    return [table[c] for c in choices]


# --- watching the network ------------------------------------------------------------------------


@attrs.define
class SessionRecord:
    node: str
    generation: int
    peer_key: bytes
    created: float  # when the checker first saw it: the instant it was derived
    current_since: float | None = None


@attrs.define
class PassiveKeepalive:
    """The reference timer for one (node, peer): wireguard-go's and the kernel's rules.

    Times are compared exactly: the network stops at every deadline (the core's and this
    timer's, see `Checker.next_deadline`), and a deadline here is computed with the same float
    arithmetic as the core's, so "due" means the same instant to both.
    """

    due: float | None = None
    need_another: bool = False
    last_sent: float = -math.inf  # the node's last authenticated datagram to this peer

    def data_received(self, now: float) -> None:
        if self.due is None:
            self.due = now + TIMERS.keepalive_timeout
        else:
            self.need_another = True

    def authenticated_sent(self, now: float) -> None:
        self.last_sent = now
        if self.due is not None and self.due > now:
            self.due = None  # (at the due instant itself, `tick` settles the timer)


class Violation(AssertionError):
    pass


def _transport_header(data: bytes) -> tuple[int, int]:
    return struct.unpack_from("<IQ", data, 4)


def _identity(data: bytes) -> bytes:
    """What makes a datagram genuine: handshake messages without mac2 (unauthenticated unless
    the responder is under load), everything else byte for byte."""
    kind = messages.message_type(data)
    if kind in (messages.TYPE_INITIATION, messages.TYPE_RESPONSE):
        return data[:-16]
    return data


class Checker(SimObserver):
    def __init__(self, machine: TunnelMachine) -> None:
        self.machine = machine
        self.net = machine.net
        self.sessions: dict[bytes, SessionRecord] = {}  # by sending key
        self.by_receiving_key: dict[bytes, SessionRecord] = {}
        self.wire_counters: set[tuple[bytes, int]] = set()
        self.genuine: dict[bytes, bytes] = {}  # identity -> key of the tunnel that sent it
        self.accepted: dict[tuple[str, int], set[bytes]] = {}
        self.keepalives: dict[tuple[str, int, bytes], PassiveKeepalive] = {}
        self.delivered_ids: set[int] = set()
        self.handshake_timeouts: dict[tuple[str, int], int] = {}
        self._before: dict[bytes, tuple[int, object]] = {}
        self._accepting: tuple[SimNode, bytes] | None = None
        self.data_deliveries = 0

    def fail(self, message: str) -> NoReturn:
        self.machine.fail(message)

    # --- sessions as they appear ----------------------------------------------------------

    def scan(self, node: SimNode) -> None:
        now = self.net.now
        for key, peer in node.tunnel.peers.items():
            for role, session in (("current", peer.current), ("previous", peer.previous),
                                  ("next", peer.next)):
                if session is None:
                    continue
                record = self.sessions.get(session.sending_key)
                if record is None:
                    record = SessionRecord(node.name, node.generation, key, now)
                    self.sessions[session.sending_key] = record
                    self.by_receiving_key[session.receiving_key] = record
                if role == "current" and record.current_since is None:
                    record.current_since = now

    def timer(self, node: SimNode, peer_key: bytes) -> PassiveKeepalive:
        return self.keepalives.setdefault((node.name, node.generation, peer_key),
                                          PassiveKeepalive())

    def forget_node(self, name: str) -> None:
        self.keepalives = {k: v for k, v in self.keepalives.items() if k[0] != name}

    def forget_peer(self, name: str, peer_key: bytes) -> None:
        self.keepalives = {k: v for k, v in self.keepalives.items()
                           if not (k[0] == name and k[2] == peer_key)}

    # --- datagrams sent -------------------------------------------------------------------

    def transmitted(self, node: SimNode, datagram: Datagram) -> None:
        data, now = datagram.data, self.net.now
        self.genuine[_identity(data)] = node.public_key
        kind = messages.message_type(data)
        if kind in (messages.TYPE_INITIATION, messages.TYPE_RESPONSE):
            entry = node.tunnel.indices.get(struct.unpack_from("<I", data, 4)[0])
            if entry is None:
                self.fail(f"{node.name} sent a handshake message from an index it does not hold")
            self.timer(node, entry[0].public_key).authenticated_sent(now)
            return
        if kind != messages.TYPE_TRANSPORT:
            return
        receiver_index, counter = _transport_header(data)
        candidates = [(key, s) for key, peer in node.tunnel.peers.items()
                      for s in peer.sessions() if s.remote_index == receiver_index]
        if len(candidates) != 1:
            self.fail(f"{node.name} sent {describe(data)} on no session it holds")
        peer_key, session = candidates[0]
        record = self.sessions[session.sending_key]
        if (session.sending_key, counter) in self.wire_counters:
            self.fail(f"{node.name} reused counter {counter} of one sending key (S4)")
        self.wire_counters.add((session.sending_key, counter))
        age = now - record.created
        if age >= TIMERS.reject_after_time:
            self.fail(f"{node.name} sent on a session {age:.3f} s old, past REJECT_AFTER_TIME (S3)")
        if counter >= TIMERS.reject_after_messages:
            self.fail(f"{node.name} sent counter {counter}, past REJECT_AFTER_MESSAGES (S3)")
        timer = self.timer(node, peer_key)
        if len(data) == messages.TRANSPORT_MIN_LEN:
            becoming_current = record.current_since is not None and record.current_since == now
            due_now = timer.due is not None and timer.due <= now
            if not (becoming_current or due_now):
                self.fail(f"{node.name} sent a keepalive with no reason: no session became "
                          f"current now and the passive keepalive is due at {timer.due} (K1)")
        timer.authenticated_sent(now)

    # --- datagrams arriving ---------------------------------------------------------------

    def delivering(self, node: SimNode, datagram: Datagram) -> None:
        self._before = {k: (p.rx_bytes, p.endpoint) for k, p in node.tunnel.peers.items()}
        self._accepting = None

    def delivered(self, node: SimNode, datagram: Datagram) -> None:
        self.scan(node)
        data, now = datagram.data, self.net.now
        grown = [k for k, p in node.tunnel.peers.items()
                 if k in self._before and p.rx_bytes > self._before[k][0]]
        moved = [k for k, p in node.tunnel.peers.items()
                 if k in self._before and p.endpoint != self._before[k][1]]
        if not grown:
            if moved:
                self.fail(f"{node.name} moved a peer's endpoint on a datagram it did not accept: "
                          f"{datagram!r} (S2)")
            return
        if len(grown) != 1:
            self.fail(f"{datagram!r} counted by {len(grown)} peers of {node.name}")
        (peer_key,) = grown
        identity = _identity(data)
        if identity not in self.genuine:
            self.fail(f"{node.name} accepted a forged datagram: {datagram!r} (S2)")
        if self.genuine[identity] != peer_key:
            self.fail(f"{node.name} accepted {datagram!r} as from a peer that did not send it (S2)")
        accepted = self.accepted.setdefault((node.name, node.generation), set())
        if identity in accepted:
            self.fail(f"{node.name} accepted a replayed datagram: {datagram!r} (S2)")
        accepted.add(identity)
        endpoint = node.tunnel.peers[peer_key].endpoint
        if endpoint != datagram.src:
            self.fail(f"{node.name}'s endpoint for the peer is {endpoint}, not the source "
                      f"{datagram.src} of its latest authenticated datagram (S2)")
        if messages.message_type(data) != messages.TYPE_TRANSPORT:
            return
        receiver_index, counter = _transport_header(data)
        entry = node.tunnel.indices.get(receiver_index)
        if entry is None or entry[1] is None:
            self.fail(f"{node.name} accepted {datagram!r} for an index it does not hold")
        record = self.by_receiving_key[entry[1].receiving_key]
        age = now - record.created
        if age >= TIMERS.reject_after_time:
            self.fail(f"{node.name} accepted a datagram on a session {age:.3f} s old, past "
                      f"REJECT_AFTER_TIME (S3)")
        if counter >= TIMERS.reject_after_messages:
            self.fail(f"{node.name} accepted counter {counter}, past REJECT_AFTER_MESSAGES (S3)")
        if len(data) > messages.TRANSPORT_MIN_LEN:
            self.timer(node, peer_key).data_received(now)
        self._accepting = (node, peer_key)

    def tun_packet(self, node: SimNode, packet: bytes) -> None:
        if self._accepting is None or self._accepting[0] is not node:
            self.fail(f"{node.name} wrote a packet to TUN without accepting a datagram")
        carrier = self._accepting[1]
        offset = 28 if packet[0] >> 4 == 4 else 48
        (packet_id,) = struct.unpack_from("!Q", packet, offset)
        sent = self.machine.sent.get(packet_id)
        if sent is None or sent.data != packet:
            self.fail(f"{node.name} delivered a packet nobody sent (or modified): id {packet_id}")
        if packet_id in self.delivered_ids:
            self.fail(f"{node.name} delivered packet {packet_id} a second time (S1)")
        self.delivered_ids.add(packet_id)
        if node.public_key != sent.intended_key:
            self.fail(f"packet {packet_id} for another key was delivered by {node.name} (S1)")
        if carrier != sent.sender_key:
            self.fail(f"packet {packet_id} of {sent.sender} arrived on another peer's session (S1)")
        allowed = self.machine.model[node.name].route(sent.src)
        if allowed != sent.sender_key:
            self.fail(f"{node.name} delivered packet {packet_id} from {sent.src}, an address its "
                      f"AllowedIPs do not give to {sent.sender} (S1)")
        self.data_deliveries += 1

    # --- timers ---------------------------------------------------------------------------

    def timers_fired(self, node: SimNode) -> None:
        self.scan(node)
        timeouts = node.tunnel.counters.handshake_timeouts
        tag = (node.name, node.generation)
        if timeouts != self.handshake_timeouts.get(tag, 0):
            self.handshake_timeouts[tag] = timeouts
            # Giving up a handshake cancels the passive keepalive (wireguard-go, the kernel).
            for key, peer in node.tunnel.peers.items():
                if peer.handshake_attempts > TIMERS.max_handshake_attempts and peer.pending is None:
                    self.timer(node, key).due = None

    def usable(self, name: str, generation: int, peer_key: bytes) -> bool:
        node = self.machine.net.nodes[name]
        peer = node.tunnel.peers.get(peer_key)
        if node.generation != generation or peer is None or peer.endpoint is None:
            return False
        session = peer.current
        if session is None:
            return False
        record = self.sessions.get(session.sending_key)
        return (record is not None and self.net.now - record.created < TIMERS.reject_after_time
                and session.send_counter < TIMERS.reject_after_messages)

    def tick(self, now: float) -> None:
        for (name, generation, peer_key), timer in self.keepalives.items():
            if timer.due is None or timer.due > now:
                continue
            if timer.last_sent < timer.due and self.usable(name, generation, peer_key):
                self.fail(f"{name} owed a passive keepalive at {timer.due:.3f} and sent nothing "
                          f"(K2)")
            timer.due = None
            if timer.need_another:
                timer.need_another = False
                timer.due = now + TIMERS.keepalive_timeout

    def next_deadline(self) -> float | None:
        dues = [t.due for t in self.keepalives.values() if t.due is not None]
        return min(dues) if dues else None


# --- the machine ---------------------------------------------------------------------------------


class TunnelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net: SimNetwork
        self.model: dict[str, ModelNode] = {}
        self.sent: dict[int, SentPacket] = {}
        self.ids = itertools.count(1)
        self.failed = False

    def fail(self, message: str) -> NoReturn:
        self.failed = True  # teardown then skips its recovery check: one failure at a time
        raise Violation(f"t={self.net.now:.3f}: {message}")

    @initialize(seed=st.integers(0, 2**16), final_probes=final_probe_specs())
    def build(self, seed: int, final_probes: list[str]) -> None:
        """The network; `final_probes` is the traffic `teardown` checks recovery with."""
        self.final_probes = final_probes
        self.net = net = SimNetwork(seed, timers=TIMERS, link=HEALTHY_LINK)
        alice, bob, carol = (net.add_node(name) for name in NAMES)
        net.connect(alice, bob)
        net.connect(alice, carol)
        net.connect(bob, carol, b_knows_a=False)  # carol must hear from bob first
        for node in net.nodes.values():
            model = self.model[node.name] = ModelNode(node.public_key)
            for key, configured in node.peers.items():
                model.psk[key] = configured.preshared_key
                model.set_allowed(key, configured.allowed_ips)
        self.checker = Checker(self)
        net.observers.append(self.checker)

    def node(self, name: str) -> SimNode:
        return self.net.nodes[name]

    def configured_key(self, at: str, of: str) -> bytes | None:
        """The key `at` is configured with for `of`: its current one, else an old one."""
        model, target = self.model[at], self.model[of]
        for key in [target.key, *reversed(target.old_keys)]:
            if key in model.psk:
                return key
        return None

    # --- traffic ----------------------------------------------------------------------------

    def send_ip(self, sender: str, src: str, dst: str, size: int) -> SentPacket:
        node = self.node(sender)
        packet_id = next(self.ids)
        body = (struct.pack("!Q", packet_id) * (size // 8 + 1))[: max(size, 8)]
        data = udp_packet(src, dst, body)
        intended = self.model[sender].route(dst)
        sent = SentPacket(packet_id, sender, node.public_key, intended, src, dst, data,
                          self.net.now)
        self.sent[packet_id] = sent
        before = node.tunnel.counters.drops["no_route"]
        self.net.send(node, data)
        counted = node.tunnel.counters.drops["no_route"] - before
        if counted != (intended is None):
            self.fail(f"{sender} routed {dst} {'nowhere' if counted else 'to a peer'}; the "
                      f"model says {'nowhere' if intended is None else 'to a peer'} (S5)")
        return sent

    @rule(packet=packet_specs())
    def send(self, packet: PacketSpec) -> None:
        self.send_ip(packet.sender, packet.src, packet.dst, packet.size)

    @rule(sender=st.sampled_from(NAMES), receiver=st.sampled_from(NAMES),
          count=st.sampled_from([3, 30, 110]))
    def burst(self, sender: str, receiver: str, count: int) -> None:
        """Packets from one node's own address to another's, all at once (crosses the message
        limits)."""
        src, dst = self.node(sender).tunnel_v4, self.node(receiver).tunnel_v4
        for _ in range(count):
            self.send_ip(sender, src, dst, 64)

    @rule(a=st.sampled_from(NAMES), b=st.sampled_from(NAMES),
          seconds=st.sampled_from([12, 40, 130, 200]))
    def converse(self, a: str, b: str, seconds: int) -> None:
        """A packet each way every second: sessions rotate under traffic."""
        if a == b:
            return
        for _ in range(seconds):
            self.send_ip(a, self.node(a).tunnel_v4, self.node(b).tunnel_v4, 100)
            self.send_ip(b, self.node(b).tunnel_v4, self.node(a).tunnel_v4, 100)
            self.net.run_for(1.0)

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.3, 1.0, 5.2, 10.0, 15.5, 30.0, 60.0, 90.0,
                                   125.0, 180.0, 200.0, 600.0]))
    def advance(self, seconds: float) -> None:
        self.net.run_for(seconds)

    # --- the wire ---------------------------------------------------------------------------

    def pick_in_flight(self, which: int) -> Datagram:
        flying = self.net.in_flight()
        datagram = flying[which % len(flying)][1]
        note(f"# below, which={which} picks {datagram!r}")
        return datagram

    def anything_in_flight(self) -> bool:
        return bool(self.net.in_flight())

    @precondition(anything_in_flight)
    @rule(which=st.integers(0, 63))
    def drop_in_flight(self, which: int) -> None:
        self.net.drop(self.pick_in_flight(which))

    @precondition(anything_in_flight)
    @rule(which=st.integers(0, 63), extra=st.sampled_from([0.0, 0.5, 20.0]))
    def duplicate_in_flight(self, which: int, extra: float) -> None:
        self.net.duplicate(self.pick_in_flight(which), extra)

    @precondition(anything_in_flight)
    @rule(which=st.integers(0, 63), extra=st.sampled_from([0.05, 1.0, 6.0, 30.0]))
    def delay_in_flight(self, which: int, extra: float) -> None:
        self.net.delay(self.pick_in_flight(which), extra)

    @rule(a=st.sampled_from(NAMES), b=st.sampled_from(NAMES), both_ways=st.booleans(),
          loss=st.sampled_from([0.0, 0.3, 1.0]), duplicate=st.sampled_from([0.0, 0.5]),
          jitter=st.sampled_from([HEALTHY_LINK.jitter, 0.2, 2.0]))
    def degrade_link(self, a: str, b: str, both_ways: bool, loss: float, duplicate: float,
                     jitter: float) -> None:
        if a != b:
            self.net.set_link(a, b, both_ways=both_ways, loss=loss, duplicate=duplicate,
                              jitter=jitter)

    @rule(a=st.sampled_from(NAMES), b=st.sampled_from(NAMES))
    def partition(self, a: str, b: str) -> None:
        if a != b:
            self.net.partition(a, b)

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(name=st.sampled_from(NAMES))
    def roam(self, name: str) -> None:
        note(f"# below, {name} moves to {format_endpoint(self.net.roam(self.node(name)))}")

    # --- nodes and their configuration ------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), new_key=st.booleans(), peers_learn_it=st.booleans())
    def restart(self, name: str, new_key: bool, peers_learn_it: bool) -> None:
        """A restart; with a new key, the others are reconfigured for it or (until a
        `check_liveness` reconciles) keep the old one."""
        node = self.node(name)
        old_key = node.public_key
        self.net.restart(node, new_key=new_key)
        self.checker.forget_node(name)
        model = self.model[name]
        if not new_key:
            return
        model.old_keys.append(old_key)
        model.key = node.public_key
        if peers_learn_it:
            for other in self.net.nodes.values():
                if other is not node and old_key in other.peers:
                    self.replace_peer_key(other, old_key, node)

    def replace_peer_key(self, at: SimNode, old_key: bytes, node: SimNode) -> None:
        """`at` swaps `old_key` for `node`'s current key, keeping the peer's settings."""
        configured = at.peers[old_key]
        at.remove_peer(old_key)
        self.checker.forget_peer(at.name, old_key)
        at.add_peer(node.public_key, allowed_ips=configured.allowed_ips,
                    endpoint=configured.endpoint, preshared_key=configured.preshared_key)
        model = self.model[at.name]
        psk = model.psk[old_key]
        networks = [str(n) for n, k in model.routes.items() if k == old_key]
        model.remove_peer(old_key)
        model.psk[node.public_key] = psk
        model.set_allowed(node.public_key, networks)

    @rule(at=st.sampled_from(NAMES), of=st.sampled_from(NAMES),
          networks=st.lists(st.sampled_from(NETWORK_CHOICES), unique=True, max_size=3))
    def set_allowed_ips(self, at: str, of: str, networks: list[str]) -> None:
        key = self.configured_key(at, of) if at != of else None
        if key is None:
            return
        (third,) = set(NAMES) - {at, of}
        resolved = resolve_networks(networks, self.node(of).index, self.node(third).index)
        self.node(at).set_allowed_ips(key, resolved)
        self.model[at].set_allowed(key, resolved)

    @rule(at=st.sampled_from(NAMES), of=st.sampled_from(NAMES),
          psk=st.sampled_from([None, "psk-1", "psk-2"]))
    def set_psk(self, at: str, of: str, psk: str | None) -> None:
        key = self.configured_key(at, of) if at != of else None
        if key is None:
            return
        self.node(at).set_preshared_key(key, psk_bytes(psk))
        self.model[at].psk[key] = psk_bytes(psk)

    # --- attackers --------------------------------------------------------------------------

    def recent(self, which: int) -> Datagram | None:
        history = list(self.net.history)[-64:]
        if not history:
            return None
        datagram = history[which % len(history)]
        note(f"# below, which={which} picks {datagram!r}")
        return datagram

    @rule(which=st.integers(0, 63), from_attacker=st.booleans())
    def replay(self, which: int, from_attacker: bool) -> None:
        """A datagram seen on the wire arrives again, now, from its source or elsewhere."""
        original = self.recent(which)
        if original is None:
            return
        src = ATTACKER if from_attacker else original.src
        self.net.deliver_now(Datagram(-1, self.net.now, src, original.dst, original.data, None))

    @rule(which=st.integers(0, 63), how=st.sampled_from(
        ["flip a ciphertext bit", "flip a tag bit", "bump the counter", "change the index",
         "truncate", "random body", "flip a handshake bit"]), from_attacker=st.booleans())
    def forge(self, which: int, how: str, from_attacker: bool) -> None:
        original = self.recent(which)
        if original is None:
            return
        data = bytearray(original.data)
        if how == "flip a ciphertext bit" and len(data) > 32:
            data[16] ^= 0x01
        elif how == "flip a tag bit":
            data[-1] ^= 0x80
        elif how == "bump the counter" and len(data) >= 16:
            data[8] ^= 0x01
        elif how == "change the index" and len(data) >= 8:
            data[4] ^= 0x01
        elif how == "truncate":
            del data[len(data) // 2:]
        elif how == "random body":
            data[4:] = self.net.rng.randbytes(len(data) - 4)
        elif how == "flip a handshake bit" and len(data) > 48:
            data[40] ^= 0x01  # inside the ephemeral key or the encrypted fields
        else:
            data[-1] ^= 0x01
        src = ATTACKER if from_attacker else original.src
        self.net.deliver_now(Datagram(-1, self.net.now, src, original.dst, bytes(data), None))

    # --- liveness ---------------------------------------------------------------------------

    @rule(a=st.sampled_from(NAMES), b=st.sampled_from(NAMES), reconcile=st.booleans(),
          both_ways=st.booleans())
    def check_liveness(self, a: str, b: str, reconcile: bool, both_ways: bool) -> None:
        """Heal the network; `a` sends a probe to `b` every second (and `b` to `a` when
        `both_ways`); they must flow within LIVENESS_BOUND. With `reconcile` the operator first
        makes the pair's configuration agree; without, a pair that disagrees is not checked."""
        if a == b:
            return
        directions = [(a, b), (b, a)] if both_ways else [(a, b)]
        self.become_healthy()
        if reconcile:
            self.reconcile(directions)
        reason = self.disagreement(directions)
        if reason is not None:
            note(f"# below, liveness not checked: {reason}")
            return
        self.probe(directions)

    def teardown(self) -> None:
        """Whatever the steps left behind: reconciled and healthy, every pair must recover."""
        if getattr(self, "final_probes", None) and not self.failed:
            directions = [d for spec in self.final_probes for d in _directions(spec)]
            self.become_healthy()
            self.reconcile(directions)
            reason = self.disagreement(directions)
            if reason is not None:
                self.fail(f"reconciling did not make the configuration agree: {reason}")
            self.probe(directions)

    def become_healthy(self) -> None:
        """Heal every link and let every datagram sent before arrive. Only then is the
        configuration judged: such a straggler can still be accepted and change state (an
        initiation from a peer's old address moves its endpoint back there, rightly; an
        answered one holds back our own next initiation for REKEY_TIMEOUT)."""
        self.net.heal()
        self.net.run_until(max([self.net.now] + [at for at, _ in self.net.in_flight()]))

    def reconcile(self, directions: list[tuple[str, str]]) -> None:
        """Make the configuration of every pair agree, as an operator would: current keys,
        equal preshared keys, AllowedIPs for the tunnel addresses, and an endpoint for every
        sender (at least one side per pair)."""
        for sender, receiver in directions:
            a, b = self.node(sender), self.node(receiver)
            for at, other in ((a, b), (b, a)):
                if other.public_key not in at.peers:
                    stale = self.configured_key(at.name, other.name)
                    if stale is not None:
                        self.replace_peer_key(at, stale, other)
                    else:
                        at.add_peer(other)
                        self.model[at.name].psk[other.public_key] = None
                        self.model[at.name].set_allowed(other.public_key, other.networks)
            psk = self.model[a.name].psk[b.public_key]
            if self.model[b.name].psk[a.public_key] != psk:
                b.set_preshared_key(a, psk)
                self.model[b.name].psk[a.public_key] = psk
            for at, other in ((a, b), (b, a)):
                if self.model[at.name].route(other.tunnel_v4) != other.public_key:
                    at.set_allowed_ips(other, other.networks)
                    self.model[at.name].set_allowed(other.public_key, other.networks)
            if (sender, receiver) in directions and (receiver, sender) not in directions:
                if a.peer(b).endpoint != b.address:
                    a.set_endpoint(b, b.address)
            elif a.peer(b).endpoint != b.address and b.peer(a).endpoint != a.address:
                a.set_endpoint(b, b.address)

    def disagreement(self, directions: list[tuple[str, str]]) -> str | None:
        """Why some pair cannot be expected to connect, or None when all can."""
        for sender, receiver in directions:
            a, b = self.node(sender), self.node(receiver)
            ma, mb = self.model[a.name], self.model[b.name]
            if b.public_key not in ma.psk or a.public_key not in mb.psk:
                return f"{a.name} and {b.name} do not both know the other's current key"
            if ma.psk[b.public_key] != mb.psk[a.public_key]:
                return f"{a.name} and {b.name} have different preshared keys"
            for at, other in ((a, b), (b, a)):
                if self.model[at.name].route(other.tunnel_v4) != other.public_key:
                    return f"{at.name} does not route {other.tunnel_v4} to {other.name}"
            alone = (receiver, sender) not in directions
            if alone and a.peer(b).endpoint != b.address:
                return f"{a.name} sends alone but does not know where {b.name} is"
            if a.peer(b).endpoint != b.address and b.peer(a).endpoint != a.address:
                return f"neither {a.name} nor {b.name} knows where the other is"
        return None

    def probe(self, directions: list[tuple[str, str]]) -> None:
        """Probes once a second from each sender, from the (healthy) now; check they flow."""
        healed = self.net.now
        probes: dict[tuple[str, str], list[SentPacket]] = {d: [] for d in directions}
        until = healed + LIVENESS_BOUND + PROBES_AFTER_BOUND * PROBE_INTERVAL
        while self.net.now < until:
            for sender, receiver in directions:
                probes[sender, receiver].append(self.send_ip(
                    sender, self.node(sender).tunnel_v4, self.node(receiver).tunnel_v4, 100))
            self.net.run_for(PROBE_INTERVAL)
        self.net.run_for(4 * HEALTHY_LATENCY)
        delivered = self.checker.delivered_ids
        for (sender, receiver), sent in probes.items():
            lost = [p.id not in delivered for p in sent]
            # When traffic settled: the first probe after which no two in a row were lost.
            settled = max((i + 1 for i in range(len(lost) - 1) if lost[i] and lost[i + 1]),
                          default=0)
            settled_after = (max(0.0, sent[settled].sent_at - healed) if settled < len(sent)
                             else math.inf)
            alone = (receiver, sender) not in probes
            LIVENESS_SEEN.append((settled_after, alone))
            note(f"# below, {sender} -> {receiver} flowed {settled_after:.2f} s after healing")
            if settled_after > LIVENESS_BOUND:
                self.fail(f"{sender} -> {receiver} still lost two probes in a row "
                          f"{settled_after:.2f} s after the network became healthy at "
                          f"{healed:.3f}; the bound is {LIVENESS_BOUND:.2f} s (liveness)")
            for x, y in ((sender, receiver), (receiver, sender)):
                if self.node(x).peer(self.node(y)).current is None:
                    self.fail(f"{x} has no session with {y} after the probes (liveness)")


def _directions(spec: str) -> list[tuple[str, str]]:
    """"alice->bob" is one way, "alice<->bob" both."""
    if "<->" in spec:
        a, b = spec.split("<->")
        return [(a, b), (b, a)]
    a, b = spec.split("->")
    return [(a, b)]


class RecoveryMachine(TunnelMachine):
    """The same machine without link faults and attackers: traffic, time, restarts, roaming and
    reconfiguration, the states that recovery (the liveness checks) is slowest from."""

    send = drop_in_flight = duplicate_in_flight = delay_in_flight = None
    degrade_link = partition = heal = replay = forge = None

