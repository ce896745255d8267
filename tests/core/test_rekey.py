"""Rekey under traffic: sessions rotate and no packet is lost or replayed across a rekey.

Two tunnels exchange numbered packets both ways through simulated minutes, with the protocol's
real timers and an in-flight latency (random per datagram, so datagrams overtake each other and
are in the air whenever sessions rotate). Every transport datagram is inspected as it leaves:
the session that sealed it must be younger than REJECT_AFTER_TIME and its counter fresh.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict

import attrs
import pytest

from fz_trio.core.timers import REJECT_AFTER_TIME, REKEY_AFTER_TIME, TimerConfig
from fz_trio.datapath import Device, udp_packet
from fz_trio.lab.sim import Datagram, Link, SimNetwork, SimNode, SimObserver

A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)


def numbered(src: str, dst: str, seq: int) -> bytes:
    # Vary the size too, so that padding is exercised on every rotation.
    body = struct.pack("!Q", seq) + bytes([seq & 0xFF]) * (seq % 37)
    return udp_packet(src, dst, body, 5000, 6000)


@attrs.define(eq=False)
class Audit(SimObserver):
    """Watches every datagram on the wire and records what it sees."""

    net: SimNetwork
    timers: TimerConfig
    used_counters: dict[bytes, set[int]] = attrs.Factory(lambda: defaultdict(set))
    max_age: dict[tuple[str, int], float] = attrs.Factory(lambda: defaultdict(float))
    transports: int = 0
    # Transport datagrams that arrived for a session the receiver no longer (or not yet) calls
    # current: proof that packets were in the air while the sessions rotated.
    arrived_on_old: int = 0
    arrived_on_next: int = 0
    problems: list[str] = attrs.Factory(list)

    def transmitted(self, node: SimNode, datagram: Datagram) -> None:
        if datagram.data[0] == 4:
            self.check_transport(node.tunnel, datagram)

    def delivering(self, node: SimNode, d: Datagram) -> None:
        if d.data[0] != 4 or len(d.data) < 32:
            return
        entry = node.tunnel.indices.get(struct.unpack_from("<I", d.data, 4)[0])
        if entry is None or entry[1] is None:
            return
        peer, session = entry
        if session is peer.previous:
            self.arrived_on_old += 1
        elif session is peer.next:
            self.arrived_on_next += 1

    def check_transport(self, sender: Device, d: Datagram) -> None:
        self.transports += 1
        receiver_index, counter = struct.unpack_from("<IQ", d.data, 4)
        (peer,) = sender.peers.values()
        sessions = [s for s in peer.sessions() if s.remote_index == receiver_index]
        if len(sessions) != 1:
            self.problems.append(f"t={d.sent_at}: no sending session for {receiver_index}")
            return
        session = sessions[0]
        age = d.sent_at - session.created
        self.max_age[d.src] = max(self.max_age[d.src], age)
        if age >= self.timers.reject_after_time:
            self.problems.append(f"t={d.sent_at}: session of age {age} used for sending")
        if session is not peer.current:
            self.problems.append(f"t={d.sent_at}: sent on a session that is not current")
        if counter in self.used_counters[session.sending_key]:
            self.problems.append(f"t={d.sent_at}: counter {counter} reused")
        self.used_counters[session.sending_key].add(counter)


@attrs.define
class Run:
    net: SimNetwork
    a: Device
    b: Device
    audit: Audit
    sent_ab: list[bytes] = attrs.Factory(list)
    sent_ba: list[bytes] = attrs.Factory(list)
    a_indices: list[int] = attrs.Factory(list)
    b_indices: list[int] = attrs.Factory(list)


def setup(timers: TimerConfig, seed: int, max_latency: float = 0.3) -> Run:
    # Every datagram takes 0.05 s to `max_latency`, drawn afresh: they overtake each other.
    net = SimNetwork(seed, timers=timers, link=Link(latency=0.05, jitter=max_latency - 0.05),
                     history_len=None, received_len=None)
    a, b = net.add_node("a", address=A_ADDR), net.add_node("b", address=B_ADDR)
    a.add_peer(b, allowed_ips=["10.0.0.2/32"])
    b.add_peer(a, allowed_ips=["10.0.0.1/32"])
    audit = Audit(net, timers)
    net.observers.append(audit)
    return Run(net, a.tunnel, b.tunnel, audit)


def node(net: SimNetwork, device: Device) -> SimNode:
    return next(n for n in net.nodes.values() if n.tunnel is device)


def tun(net: SimNetwork, device: Device) -> list[bytes]:
    """What `device` wrote to its TUN."""
    return list(node(net, device).received)


def send_from(net: SimNetwork, device: Device, packet: bytes) -> None:
    net.send(node(net, device), packet)


def drive(run: Run, *, duration: float, interval: float = 0.5, a_burst: int = 1,
          b_burst: int = 1, b_starts: float = 1.0, b_phase: float = 0.5) -> None:
    """A sends `a_burst` packets every `interval`, B `b_burst` (`b_phase` intervals later)."""
    net, a, b = run.net, run.a, run.b
    (b_peer,) = b.peers.values()
    b_speaks = False
    t = 0.0
    while t < duration:
        for _ in range(a_burst):
            packet = numbered("10.0.0.1", "10.0.0.2", len(run.sent_ab))
            run.sent_ab.append(packet)
            send_from(net, a, packet)
        net.run_until(t + interval * b_phase)
        # B speaks once the first handshake is done, from `b_starts` on: were B to send first,
        # with a round trip up to REKEY_TIMEOUT, it would start a handshake of its own and be
        # an initiator that rekeys by age too.
        b_speaks = b_speaks or (t >= b_starts and b_peer.current is not None)
        if b_speaks:
            for _ in range(b_burst):
                packet = numbered("10.0.0.2", "10.0.0.1", len(run.sent_ba))
                run.sent_ba.append(packet)
                send_from(net, b, packet)
        t += interval
        net.run_until(t)
        for tunnel, log in ((a, run.a_indices), (b, run.b_indices)):
            (peer,) = tunnel.peers.values()
            if peer.current is not None and (not log or log[-1] != peer.current.local_index):
                log.append(peer.current.local_index)
    net.run_for(5.0)  # let the last packets land


def assert_exactly_once(sent: list[bytes], delivered: list[bytes]) -> None:
    counts = Counter(delivered)
    duplicates = [p for p, n in counts.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} packets delivered more than once"
    missing = [i for i, p in enumerate(sent) if p not in counts]
    assert not missing, f"packets lost: {missing[:20]} ({len(missing)} in all)"
    assert len(delivered) == len(sent)  # and nothing that was never sent (modified) arrived


@pytest.mark.parametrize(("seed", "max_latency"), [(1, 0.3), (2, 1.0), (3, 2.5)])
def test_rekey_by_time_under_steady_traffic(seed: int, max_latency: float) -> None:
    # Latencies up to 2.5 s with a packet every 0.5 s: datagrams overtake each other freely.
    timers = TimerConfig()
    run = setup(timers, seed=seed, max_latency=max_latency)
    drive(run, duration=600.0)
    a, b, net, audit = run.a, run.b, run.net, run.audit

    assert audit.problems == []
    assert_exactly_once(run.sent_ab, tun(net, b))
    assert_exactly_once(run.sent_ba, tun(net, a))
    assert not a.counters.drops and not b.counters.drops, (a.counters.drops, b.counters.drops)

    # Sessions rotated: 600 s of traffic is five REKEY_AFTER_TIME periods.
    rotations = int(600 // REKEY_AFTER_TIME)
    assert len(run.a_indices) >= rotations and len(run.b_indices) >= rotations
    assert len(set(run.a_indices)) == len(run.a_indices)  # a new index every time
    assert a.counters.handshakes_completed >= rotations
    assert b.counters.handshakes_completed == a.counters.handshakes_completed
    # Only the initiator rekeys by age, so handshakes never cross, and it does so promptly:
    # no session was used for sending much past REKEY_AFTER_TIME (one round trip at most).
    assert a.counters.handshake_initiations_sent == a.counters.handshakes_completed
    assert b.counters.handshake_initiations_sent == 0
    # The responder keeps sending on the old session until the new one is confirmed: up to
    # three one-way latencies after the initiator's rekey.
    assert max(audit.max_age.values()) < REKEY_AFTER_TIME + 4 * max_latency + 0.5
    # Datagrams were in the air while sessions rotated: some arrived for the receiver's previous
    # session, and each new session was confirmed by one arriving on the responder's `next`.
    assert audit.arrived_on_old > 0
    assert audit.arrived_on_next == a.counters.handshakes_completed
    # Old sessions are let go: at most current + previous (+ next) are kept.
    assert len(a.indices) <= 3 and len(b.indices) <= 3
    assert audit.transports >= len(run.sent_ab) + len(run.sent_ba)


def test_rekey_by_message_count() -> None:
    timers = attrs.evolve(TimerConfig(), rekey_after_messages=50)
    run = setup(timers, seed=2)
    # A is the busier sender, so it reaches 50 messages first on every session and initiates.
    drive(run, duration=120.0, interval=0.5, a_burst=2, b_burst=1)
    a, b, net, audit = run.a, run.b, run.net, run.audit

    assert audit.problems == []
    assert_exactly_once(run.sent_ab, tun(net, b))
    assert_exactly_once(run.sent_ba, tun(net, a))
    assert not a.counters.drops and not b.counters.drops, (a.counters.drops, b.counters.drops)
    # About one rekey per 50 of A's messages (a handshake round trip overshoots a little).
    assert a.counters.handshakes_completed >= len(run.sent_ab) // 60
    assert len(set(run.a_indices)) == len(run.a_indices) >= len(run.sent_ab) // 60
    # No session carried many more than 50 messages.
    assert max(len(c) for c in audit.used_counters.values()) < 50 + 10


def test_rekey_by_message_count_either_side() -> None:
    # Now B is the busier sender: the responder rekeys by count too (only age is initiator-only).
    timers = attrs.evolve(TimerConfig(), rekey_after_messages=50)
    run = setup(timers, seed=3)
    drive(run, duration=60.0, interval=0.5, a_burst=1, b_burst=3)
    assert run.audit.problems == []
    assert_exactly_once(run.sent_ab, tun(run.net, run.b))
    assert_exactly_once(run.sent_ba, tun(run.net, run.a))
    assert not run.a.counters.drops and not run.b.counters.drops
    assert run.b.counters.handshake_initiations_sent >= len(run.sent_ba) // 60


def test_session_refused_past_reject_after_time_in_a_partition() -> None:
    timers = TimerConfig()
    run = setup(timers, seed=4, max_latency=0.05)
    net, a, b, audit = run.net, run.a, run.b, run.audit
    net.set_link("a", "b", latency=0.01, jitter=0.0)
    a_peer, b_peer = a.peers[b.public_key], b.peers[a.public_key]

    partitioned = False
    straggler: list[Datagram] = []

    def partition(d: Datagram) -> list[tuple[bytes, float]] | None:
        if not partitioned:
            return None
        if d.src == A_ADDR and d.data[0] == 4 and 179.5 <= d.sent_at and not straggler:
            straggler.append(d)  # the last one sealed before the session expires...
            return [(d.data, 1.0)]  # ...lands after it has expired at B
        return []

    net.fate = partition
    send_from(net, a, numbered("10.0.0.1", "10.0.0.2", 0))
    net.run_until(10.0)
    assert b_peer.current is not None
    created_a, created_b = a_peer.current.created, b_peer.current.created
    partitioned = True
    seq = 1
    while net.now < 185.0:
        send_from(net, a, numbered("10.0.0.1", "10.0.0.2", seq))
        seq += 1
        net.run_for(0.1)
    # A's rekey attempts (from REKEY_AFTER_TIME on) all vanished into the partition.
    assert a.counters.handshakes_completed == 1
    assert sent_initiations(net, since=REKEY_AFTER_TIME) >= 10
    # A never sealed with the old session once it was REJECT_AFTER_TIME old: it staged instead.
    last_sealed = max(d.sent_at for d in net.history if d.src == A_ADDR and d.data[0] == 4)
    assert last_sealed < created_a + REJECT_AFTER_TIME
    assert not a_peer.current.usable_for_sending(net.now, timers)
    assert len(a_peer.staged) == round((185.0 - (created_a + REJECT_AFTER_TIME)) / 0.1)
    # B refused the straggler: its copy of the session was too old when it arrived.
    assert straggler and straggler[0].sent_at < created_a + REJECT_AFTER_TIME
    assert b.counters.drops["session_expired"] == 1
    assert numbered("10.0.0.1", "10.0.0.2", seq - 1) not in tun(net, b)
    assert tun(net, b) == [numbered("10.0.0.1", "10.0.0.2", 0)]
    assert created_b + REJECT_AFTER_TIME <= straggler[0].sent_at + 1.0
    assert audit.problems == []

    # The partition heals: the next retransmitted initiation gets through and the staged
    # packets are delivered, once each.
    staged = list(a_peer.staged)
    partitioned = False
    net.run_for(10.0)
    assert a.counters.handshakes_completed == 2
    assert tun(net, b)[1:] == staged
    assert audit.problems == []


def sent_initiations(net: SimNetwork, since: float) -> int:
    return sum(1 for d in net.history if d.src == A_ADDR and d.data[0] == 1 and d.sent_at >= since)


def test_keys_are_forgotten_when_nothing_can_be_renewed() -> None:
    # Partitioned for good: after 3 * REJECT_AFTER_TIME the session keys are zeroed.
    timers = TimerConfig()
    run = setup(timers, seed=5, max_latency=0.05)
    net, a, b = run.net, run.a, run.b
    send_from(net, a, numbered("10.0.0.1", "10.0.0.2", 0))
    net.run_until(1.0)
    net.fate = lambda d: []
    send_from(net, a, numbered("10.0.0.1", "10.0.0.2", 1))
    net.run_until(3 * REJECT_AFTER_TIME + 60)
    for t in (a, b):
        (peer,) = t.peers.values()
        assert peer.sessions() == []
        assert peer.pending is None
        assert len(t.indices) == 0
    assert a.counters.handshake_timeouts == 1
    assert a.counters.drops["handshake_timeout"] == 0  # the packet went out on the old session


def test_crossing_rekeys_lose_only_in_flight_packets() -> None:
    """Both ends reach rekey_after_messages at the same instant, so their initiations cross.

    Each end then answers the other's initiation (a `next` session) and completes its own; like
    the Linux kernel and wireguard-go, it keeps the answered one as `previous` and frees its
    `current`. Datagrams still in flight on the freed sessions are dropped as `unknown_index`:
    the only loss allowed here, each one counted, and never a duplicate, a modified packet, an
    over-age session or a reused counter. Traffic then carries on.
    """
    timers = attrs.evolve(TimerConfig(), rekey_after_messages=50)
    run = setup(timers, seed=7)
    net, a, b, audit = run.net, run.a, run.b, run.audit
    net.set_link("a", "b", latency=0.5, jitter=0.0)
    a_peer, b_peer = a.peers[b.public_key], b.peers[a.public_key]

    def send(n_ab: int, n_ba: int) -> None:
        for _ in range(n_ab):
            run.sent_ab.append(numbered("10.0.0.1", "10.0.0.2", len(run.sent_ab)))
            send_from(net, a, run.sent_ab[-1])
        for _ in range(n_ba):
            run.sent_ba.append(numbered("10.0.0.2", "10.0.0.1", len(run.sent_ba)))
            send_from(net, b, run.sent_ba[-1])

    send(1, 0)
    net.run_for(3.0)
    send(0, 1)
    net.run_for(3.0)
    assert a_peer.current is not None and b_peer.current is not None
    # Bring both sending counters to one below the threshold, then cross it together.
    send(49 - a_peer.current.send_counter, 49 - b_peer.current.send_counter)
    net.run_for(1.0)
    assert a.counters.handshake_initiations_sent == 1 and b.counters.handshake_initiations_sent == 0
    send(1, 1)
    assert a.counters.handshake_initiations_sent == 2 and b.counters.handshake_initiations_sent == 1
    for _ in range(50):  # keep both directions busy while the handshakes cross
        send(1, 1)
        net.run_for(0.1)
    net.run_for(5.0)

    assert audit.problems == []
    assert a.counters.handshakes_completed >= 2 and b.counters.handshakes_completed >= 2
    for sent, receiver, delivered in ((run.sent_ab, b, tun(net, b)), (run.sent_ba, a, tun(net, a))):
        assert len(set(delivered)) == len(delivered)
        assert set(delivered) <= set(sent)
        assert receiver.counters.drops.keys() <= {"unknown_index"}
        lost = len(sent) - len(delivered)
        assert 0 < lost <= receiver.counters.drops["unknown_index"]
        assert lost <= 0.5 / 0.1 + 1  # no more than one latency's worth of packets
        assert delivered[-20:] == sent[-20:]  # and then everything flows again


def test_receive_only_initiator_rekeys_before_the_session_expires() -> None:
    # A started the session and then only listens; B sends nothing but persistent keepalives
    # (every 10 s), so neither end ever sends data. A must rekey on receive once its session is
    # REJECT - KEEPALIVE - REKEY_TIMEOUT (165 s) old, before B's copy expires at 180 s.
    timers = TimerConfig()
    run = setup(timers, seed=8, max_latency=0.05)
    net, a, b, audit = run.net, run.a, run.b, run.audit
    b.peers[a.public_key].persistent_keepalive = 10.0
    send_from(net, a, numbered("10.0.0.1", "10.0.0.2", 0))
    net.run_until(1.0)
    created = a.peers[b.public_key].current.created
    net.run_until(400.0)
    initiations = [d.sent_at for d in net.history if d.src == A_ADDR and d.data[0] == 1]
    rekey_age = timers.receive_side_rekey_age
    assert rekey_age == 165.0
    assert len(initiations) >= 3  # the first handshake, then one per ~165-190 s
    assert created + rekey_age <= initiations[1] <= created + rekey_age + 10.0 + 0.1
    assert b.counters.handshake_initiations_sent == 0
    assert not a.counters.drops and not b.counters.drops
    assert audit.problems == []
    # B's keepalives never stopped: every one was sealed by a session younger than 180 s.
    keepalives = [d.sent_at for d in net.history if d.src == B_ADDR and d.data[0] == 4]
    assert len(keepalives) >= 400 // 10 - 1
