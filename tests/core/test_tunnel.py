"""The Device driven through the simulated network: handshakes, routing, drops, roaming, timers,
cookies.

Everything runs on simulated time with the protocol's real timer constants (`SimNetwork` fires
`handle_timeout` whenever `poll_timeout()` is due, so minutes pass in milliseconds). A test that
plays the attacker or carries datagrams by hand sets `net.fate` and injects datagrams itself.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fz_trio.core import Peer, noise, public_key_of
from fz_trio.core.messages import padded_length
from fz_trio.core.timers import (
    KEEPALIVE_TIMEOUT,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    TimerConfig,
)
from fz_trio.core.tunnel import TunnelError
from fz_trio.datapath import Device, ip_packet, udp_packet
from fz_trio.lab.sim import (
    WALL_EPOCH,
    Datagram,
    Endpoint,
    Link,
    SimNetwork,
    SimNode,
    SimObserver,
    det_key,
    det_random,
)

A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)
C_ADDR = ("198.18.0.3", 51820)
EVIL = ("198.18.0.66", 4444)
NOWHERE = ("198.18.0.200", 1)  # nobody listens here
WALL = WALL_EPOCH  # the wall clock at now == 0; an integer so that TAI64N steps are predictable
JITTER = REKEY_TIMEOUT_JITTER_MAX


def v4(src: str, dst: str, body: bytes = b"hello") -> bytes:
    return udp_packet(src, dst, body, 1000, 2000)


v6 = v4  # the IP version follows the addresses


def make_tunnel(name: str, **kwargs: object) -> Device:
    """A Device on no network (to check its API, or to forge messages with)."""
    return Device(det_key(name), random_bytes=det_random(name), **kwargs)  # type: ignore[arg-type]


@attrs.define
class Pair:
    net: SimNetwork
    a: SimNode
    b: SimNode

    @property
    def a_peer(self) -> Peer:  # A's view of B
        return self.a.peer(self.b)

    @property
    def b_peer(self) -> Peer:  # B's view of A
        return self.b.peer(self.a)

    def ab(self, body: bytes = b"hello") -> bytes:
        return v4("10.0.0.1", "10.0.0.2", body)

    def ba(self, body: bytes = b"hello") -> bytes:
        return v4("10.0.0.2", "10.0.0.1", body)


def make_pair(*, latency: float = 0.01, timers: TimerConfig | None = None,
              psk_a: bytes | None = None, psk_b: bytes | None = None,
              a_keepalive: float | None = None, b_knows_a: bool = False,
              connect: bool = False) -> Pair:
    net = SimNetwork(timers=timers, link=Link(latency=latency))
    a = net.add_node("a", address=A_ADDR)
    b = net.add_node("b", address=B_ADDR)
    a.add_peer(b, allowed_ips=["10.0.0.2/32", "fd00::2/128"], preshared_key=psk_a,
               persistent_keepalive=a_keepalive)
    b.add_peer(a, allowed_ips=["10.0.0.1/32", "fd00::1/128"], endpoint=b_knows_a,
               preshared_key=psk_b)
    pair = Pair(net, a, b)
    if connect:
        net.send(a, pair.ab(b"connect"))
        net.run_for(1.0)
        assert tun(b) == [pair.ab(b"connect")]
        b.received.clear()
    return pair


def tun(node: SimNode) -> list[bytes]:
    """What `node`'s tunnel wrote to its TUN."""
    return list(node.received)


def wire(net: SimNetwork) -> list[Datagram]:
    """Every datagram the tunnels sent, in order (injected ones are not there)."""
    return list(net.history)


def kinds(datagrams: Iterable[Datagram]) -> list[int]:
    return [d.data[0] for d in datagrams]


def sent_by(net: SimNetwork, node: SimNode, kind: int | None = None,
            since: float = float("-inf")) -> list[Datagram]:
    return [d for d in net.history if d.sender == node.name and d.sent_at >= since
            and (kind is None or d.data[0] == kind)]


def inject(net: SimNetwork, to: SimNode, data: bytes, source: Endpoint) -> None:
    """`to` receives `data` from `source` right now (an attacker, a replay)."""
    net.inject(data, src=source, dst=to.address, at_once=True)


def is_keepalive(d: Datagram) -> bool:
    return d.data[0] == 4 and len(d.data) == 32


def total_drops(t: Device) -> int:
    return sum(t.counters.drops.values())


# --- handshake and data -------------------------------------------------------------------


def test_handshake_then_ipv4_and_ipv6_both_ways() -> None:
    p = make_pair()
    net, a, b = p.net, p.a, p.b
    first = p.ab(b"first")
    net.send(a, first)
    assert kinds(wire(net)) == [1]
    assert len(wire(net)[0].data) == 148
    net.run_for(1.0)
    # initiation, response, then the staged packet itself confirms the session for B.
    assert kinds(wire(net)) == [1, 2, 4]
    assert len(wire(net)[1].data) == 92
    assert tun(b) == [first]
    assert a.tunnel.counters.handshakes_completed == b.tunnel.counters.handshakes_completed == 1
    assert p.a_peer.current is not None and p.b_peer.current is not None
    assert p.a_peer.current.sending_key == p.b_peer.current.receiving_key
    assert p.b_peer.endpoint == A_ADDR  # learnt from the initiation

    packets_ab = [v4("10.0.0.1", "10.0.0.2", b"x" * n) for n in (0, 1, 100, 1000)]
    packets_ab += [v6("fd00::1", "fd00::2", b"y" * n) for n in (0, 7, 1200)]
    packets_ba = [v4("10.0.0.2", "10.0.0.1", b"z" * n) for n in (3, 500)]
    packets_ba += [v6("fd00::2", "fd00::1", b"w" * n) for n in (0, 999)]
    for pa, pb in zip(packets_ab, packets_ba + [None] * 3, strict=True):
        net.send(a, pa)
        if pb is not None:
            net.send(b, pb)
    net.run_for(1.0)
    assert tun(b) == [first] + packets_ab
    assert tun(a) == packets_ba
    assert not a.tunnel.counters.drops and not b.tunnel.counters.drops
    assert a.tunnel.counters.packets_to_tun == len(packets_ba)
    assert b.tunnel.counters.packets_to_tun == 1 + len(packets_ab)


def test_no_handshake_without_endpoint() -> None:
    p = make_pair()  # B does not know where A is
    p.net.send(p.b, p.ba())
    assert wire(p.net) == []
    assert p.b.tunnel.counters.drops["no_endpoint"] == 1


@pytest.mark.parametrize("size", [20, 21, 28, 31, 32, 33, 100, 1399, 1400, 1419, 1420, 1421, 1500])
def test_padding_on_the_wire_and_stripped_on_arrival(size: int) -> None:
    p = make_pair(connect=True)
    packet = ip_packet("10.0.0.1", "10.0.0.2", bytes(range(256)) * 6, 17)[:size]
    packet = packet[:2] + struct.pack("!H", size) + packet[4:]  # total length = size
    p.net.send(p.a, packet)
    datagram = wire(p.net)[-1].data
    padded = min(padded_length(size), max(size, 1420))  # never padded beyond the MTU
    assert len(datagram) == 16 + padded + 16
    p.net.run_for(0.1)
    assert tun(p.b) == [packet]


def test_psk_on_both_sides_works_and_mismatch_fails() -> None:
    psk = bytes(range(32))
    p = make_pair(psk_a=psk, psk_b=psk, connect=True)
    assert p.a.tunnel.counters.handshakes_completed == 1
    q = make_pair(psk_a=psk, psk_b=None)
    q.net.send(q.a, q.ab())
    q.net.run_for(1.0)
    assert q.a.tunnel.counters.drops["handshake_auth"] == 1  # the response does not verify
    assert q.a.tunnel.counters.handshakes_completed == 0
    assert tun(q.b) == []


# --- cryptokey routing and drops --------------------------------------------------------------


def test_inner_source_not_in_allowed_ips_is_dropped() -> None:
    p = make_pair(connect=True)
    for spoof in [v4("10.0.0.99", "10.0.0.1"), v6("fd00::99", "fd00::1"),
                  v4("10.0.0.2", "10.0.0.1")]:
        p.net.send(p.b, spoof)
    p.net.run_for(0.1)
    assert tun(p.a) == [v4("10.0.0.2", "10.0.0.1")]
    assert p.a.tunnel.counters.drops["source_not_allowed"] == 2


def test_authenticated_but_not_ip_inside_is_dropped() -> None:
    p = make_pair(connect=True)
    # Declares 60 bytes but carries 25 (padded to 32): the receiver refuses to read past the end.
    liar = v4("10.0.0.2", "10.0.0.1", b"12345")
    liar = liar[:2] + struct.pack("!H", 60) + liar[4:]
    p.net.send(p.b, liar)
    p.net.run_for(0.1)
    assert tun(p.a) == []
    assert p.a.tunnel.counters.drops["inner_not_ip"] == 1


def test_unroutable_and_non_ip_packets_from_tun_are_counted() -> None:
    p = make_pair(connect=True)
    before = len(wire(p.net))
    p.net.send(p.a, v4("10.0.0.1", "10.9.9.9"))
    p.net.send(p.a, v6("fd00::1", "fd00::9"))
    p.net.send(p.a, b"")
    p.net.send(p.a, b"\x60" + bytes(10))
    assert len(wire(p.net)) == before
    assert p.a.tunnel.counters.drops["no_route"] == 2
    assert p.a.tunnel.counters.drops["tun_not_ip"] == 2


def test_three_peers_with_cryptokey_routing() -> None:
    net = SimNetwork(link=Link(latency=0.005))
    hub, b, c = (net.add_node(name, address=address)
                 for name, address in [("hub", A_ADDR), ("b", B_ADDR), ("c", C_ADDR)])
    hub.add_peer(b, allowed_ips=["10.0.0.2/32", "fd00::2/128"])
    hub.add_peer(c, allowed_ips=["10.0.0.3/32", "10.3.0.0/16", "10.3.7.0/24", "fd00::3/128"])
    # A fourth peer holds the covering /8: the spokes' longer prefixes must win over it.
    hub.add_peer(public_key_of(det_key("d")), allowed_ips=["10.0.0.0/8"], endpoint=None)
    b.add_peer(hub, allowed_ips=["0.0.0.0/0", "::/0"])
    c.add_peer(hub, allowed_ips=["10.0.0.0/8", "fd00::/64"])

    to_b = [v4("10.0.0.1", "10.0.0.2"), v6("fd00::1", "fd00::2")]
    to_c = [v4("10.0.0.1", "10.0.0.3"), v4("10.0.0.1", "10.3.7.9"), v4("10.0.0.1", "10.3.200.1"),
            v6("fd00::1", "fd00::3")]
    for packet in to_b + to_c:
        net.send(hub, packet)
    net.run_for(1.0)
    assert tun(b) == to_b
    assert tun(c) == to_c
    assert hub.tunnel.counters.handshakes_completed == 2

    # Each spoke may speak only for its own prefixes.
    from_b = [v4("10.0.0.2", "10.0.0.1"), v4("10.3.7.9", "10.0.0.1"), v4("10.0.0.3", "10.0.0.1")]
    from_c = [v4("10.3.7.9", "10.0.0.1"), v4("10.0.0.3", "10.0.0.1"), v4("10.0.0.2", "10.0.0.1"),
              v6("fd00::3", "fd00::1")]
    for packet in from_b:
        net.send(b, packet)
    for packet in from_c:
        net.send(c, packet)
    net.run_for(1.0)
    assert tun(hub) == [from_b[0], from_c[0], from_c[1], from_c[3]]
    assert hub.tunnel.counters.drops["source_not_allowed"] == 3

    # Moving a prefix to another peer changes routing at once.
    hub.set_allowed_ips(b, ["10.0.0.2/32", "10.3.7.0/24"])
    net.send(hub, v4("10.0.0.1", "10.3.7.9"))
    net.send(hub, v4("10.0.0.1", "10.3.8.9"))
    net.run_for(1.0)
    assert tun(b)[-1] == v4("10.0.0.1", "10.3.7.9")
    assert tun(c)[-1] == v4("10.0.0.1", "10.3.8.9")


def test_add_peer_validation() -> None:
    t = make_tunnel("t")
    other = make_tunnel("o")
    with pytest.raises(TunnelError):
        t.add_peer(b"short")
    with pytest.raises(TunnelError):
        t.add_peer(t.public_key)
    with pytest.raises(TunnelError):
        t.add_peer(bytes(32))  # a low-order key: the static-static DH is refused
    t.add_peer(other.public_key)
    with pytest.raises(TunnelError):
        t.add_peer(other.public_key)
    with pytest.raises(TunnelError):
        Device(b"\x00" * 31)


def test_removed_peer_traffic_is_dropped() -> None:
    p = make_pair(connect=True)
    p.net.send(p.a, p.ab(b"before"))
    datagram = wire(p.net)[-1].data
    p.b.remove_peer(p.a.public_key)
    p.net.run_for(1.0)
    assert p.b.tunnel.counters.drops["unknown_index"] == 1
    inject(p.net, p.b, datagram, A_ADDR)
    assert p.b.tunnel.counters.drops["unknown_index"] == 2
    assert tun(p.b) == []
    assert len(p.b.tunnel.indices) == 0


# --- replays, duplicates and garbage ----------------------------------------------------------


def test_replayed_transport_is_dropped_and_delivered_once() -> None:
    p = make_pair(connect=True)
    p.net.send(p.a, p.ab(b"once"))
    datagram = wire(p.net)[-1].data
    p.net.run_for(0.1)
    for _ in range(3):
        inject(p.net, p.b, datagram, A_ADDR)
    assert tun(p.b) == [p.ab(b"once")]
    assert p.b.tunnel.counters.drops["replay_or_forged"] == 3


def test_duplicated_and_reordered_datagrams_are_delivered_once() -> None:
    p = make_pair(connect=True)
    n = 0

    def dup_and_delay(d: Datagram) -> list[tuple[bytes, float]]:
        nonlocal n
        n += 1
        return [(d.data, 0.05 * (n % 3)), (d.data, 0.2)]  # two copies, shuffled in time

    p.net.fate = dup_and_delay
    packets = [p.ab(str(i).encode()) for i in range(30)]
    for packet in packets:
        p.net.send(p.a, packet)
    p.net.run_for(1.0)
    assert sorted(tun(p.b)) == sorted(packets)
    assert tun(p.b) != packets  # they really were reordered
    assert p.b.tunnel.counters.drops == {"replay_or_forged": 30}


def test_tampered_transport_is_dropped_and_does_not_move_the_window() -> None:
    p = make_pair(connect=True)
    p.net.fate = lambda d: []  # hold everything: we deliver by hand
    p.net.send(p.a, p.ab(b"real"))
    real = wire(p.net)[-1].data
    forged = bytearray(real)
    forged[8:16] = (10**6).to_bytes(8, "little")  # a far-future counter...
    forged[-1] ^= 1  # ...without the key to authenticate it
    inject(p.net, p.b, bytes(forged), A_ADDR)
    assert p.b.tunnel.counters.drops["replay_or_forged"] == 1
    inject(p.net, p.b, real, A_ADDR)  # counter 1 is still acceptable
    assert tun(p.b) == [p.ab(b"real")]


def test_counter_at_reject_after_messages_is_refused() -> None:
    p = make_pair(connect=True)
    p.net.send(p.a, p.ab())
    real = bytearray(wire(p.net)[-1].data)
    real[8:16] = (2**64 - 1).to_bytes(8, "little")
    inject(p.net, p.b, bytes(real), A_ADDR)
    assert p.b.tunnel.counters.drops["session_expired"] == 1


GARBAGE_EXAMPLES = [
    b"", b"\x01", b"\x04\x00\x00\x00", b"\x01\x00\x00\x00" + bytes(144),
    b"\x01\x00\x00\x00" + bytes(143), b"\x02\x00\x00\x00" + bytes(88),
    b"\x03\x00\x00\x00" + bytes(60), b"\x04\x00\x00\x00" + bytes(27),
    b"\x04\x00\x00\x00" + bytes(28), b"\x05\x00\x00\x00" + bytes(60),
    b"\x01\x01\x00\x00" + bytes(144), b"\xff" * 1500, bytes(65535),
]


def _garbage() -> st.SearchStrategy[bytes]:
    typed = st.builds(lambda k, body: bytes([k, 0, 0, 0]) + body, st.integers(1, 4),
                      st.one_of(st.binary(min_size=144, max_size=144),
                                st.binary(min_size=88, max_size=88),
                                st.binary(min_size=60, max_size=60),
                                st.binary(min_size=28, max_size=300)))
    return st.one_of(st.binary(max_size=300), typed, st.sampled_from(GARBAGE_EXAMPLES))


@pytest.fixture(scope="module")
def connected() -> Pair:
    return make_pair(connect=True)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_garbage(), as_type=st.sampled_from([bytes, bytearray, memoryview]),
       source=st.sampled_from([A_ADDR, EVIL, ("::ffff:198.18.0.1", 51820, 0, 0),
                               ("2001:db8::1", 1)]))
def test_garbage_never_raises_and_is_counted(connected: Pair, data: bytes, as_type: type,
                                             source: tuple) -> None:
    for node, peer in ((connected.a, connected.a_peer), (connected.b, connected.b_peer)):
        t = node.tunnel
        before = total_drops(t)
        endpoint = peer.endpoint
        t.receive_datagram(as_type(data), source, connected.net.now, connected.net.wall(node))
        assert total_drops(t) == before + 1
        assert t.take_transmits() == []
        assert t.take_tun_packets() == []
        assert peer.endpoint == endpoint


# --- roaming ----------------------------------------------------------------------------------


def test_endpoint_follows_authenticated_packets_only() -> None:
    p = make_pair(connect=True)
    net, a, b = p.net, p.a, p.b
    assert p.a_peer.endpoint == B_ADDR

    # Forgeries from an attacker's address do not move A's endpoint for B:
    net.send(b, p.ba(b"captured"))
    captured = wire(net)[-1].data
    net.run_for(0.1)
    receiver = captured[4:8]
    fake = b"\x04\x00\x00\x00" + receiver + (99).to_bytes(8, "little") + bytes(48)
    inject(net, a, fake, EVIL)  # right index, no key
    inject(net, a, captured, EVIL)  # a replay of an authentic datagram
    inject(net, a, b"\x02\x00\x00\x00" + bytes(88), EVIL)  # a junk handshake response
    assert p.a_peer.endpoint == B_ADDR
    assert a.tunnel.counters.drops["replay_or_forged"] == 2

    # B moves (a NAT rebinding): its next authenticated packet moves A's endpoint.
    new_b = ("198.18.0.77", 40000)
    net.roam(b, new_b)
    net.send(b, p.ba(b"from the new place"))
    net.run_for(0.1)
    assert p.a_peer.endpoint == new_b
    net.send(a, p.ab(b"reply"))
    assert wire(net)[-1].dst == new_b
    net.run_for(0.1)
    assert tun(b)[-1] == p.ab(b"reply")
    assert tun(a) == [p.ba(b"captured"), p.ba(b"from the new place")]


def test_keepalive_also_moves_the_endpoint() -> None:
    p = make_pair(connect=True, a_keepalive=5.0)
    new_a = ("198.18.0.99", 1234)
    p.net.roam(p.a, new_a)
    p.net.run_for(6.0)  # A's persistent keepalive is the only thing sent
    assert p.b_peer.endpoint == new_a


def test_replayed_initiation_from_elsewhere_does_not_move_the_endpoint() -> None:
    p = make_pair(connect=True)
    initiation = wire(p.net)[0].data
    p.net.run_for(5.0)
    inject(p.net, p.b, initiation, EVIL)
    assert p.b_peer.endpoint == A_ADDR
    assert p.b.tunnel.counters.drops["handshake_replayed_timestamp"] == 1


# --- keepalives -------------------------------------------------------------------------------


def test_passive_keepalive_after_receiving_data() -> None:
    p = make_pair(latency=0.02, connect=True)
    net, a = p.net, p.a
    net.run_for(30.0)  # let the keepalive for the connecting packet pass
    t0 = net.now
    net.send(a, p.ab(b"ping"))  # B receives data and has nothing to say
    net.run_for(60.0)
    from_b = sent_by(net, p.b, since=t0)
    assert len(from_b) == 1 and is_keepalive(from_b[0])
    assert from_b[0].sent_at == pytest.approx(t0 + 0.02 + KEEPALIVE_TIMEOUT)
    # A keepalive is not data: A does not answer it, and nobody starts a new handshake.
    assert sent_by(net, p.a, since=t0 + 1) == []
    assert a.tunnel.counters.handshakes_completed == 1


def test_more_data_during_the_keepalive_wait_asks_for_another_keepalive() -> None:
    p = make_pair(latency=0.02, connect=True)
    net = p.net
    net.run_for(30.0)
    t0 = net.now
    net.send(p.a, p.ab(b"one"))
    net.run_for(3.0)
    net.send(p.a, p.ab(b"two"))  # arrives while B's keepalive timer is already running
    net.run_for(60.0)
    times = [d.sent_at for d in sent_by(net, p.b, since=t0)]
    assert all(is_keepalive(d) for d in sent_by(net, p.b, since=t0))
    first = t0 + 0.02 + KEEPALIVE_TIMEOUT
    assert times == pytest.approx([first, first + KEEPALIVE_TIMEOUT])


def test_passive_keepalive_also_after_data_that_is_dropped() -> None:
    # Authenticated data is data for the timers even when its inner source is not allowed
    # (wireguard-go and the kernel alike); otherwise the sender hears nothing and, 15 s on,
    # starts a handshake it does not need.
    p = make_pair(latency=0.02, connect=True)
    net = p.net
    net.run_for(30.0)
    t0 = net.now
    net.send(p.a, v4("10.0.0.99", "10.0.0.2"))  # A may not use 10.0.0.99: B drops it
    net.run_for(60.0)
    assert p.b.tunnel.counters.drops["source_not_allowed"] == 1
    from_b = sent_by(net, p.b, since=t0)
    assert len(from_b) == 1 and is_keepalive(from_b[0])
    assert from_b[0].sent_at == pytest.approx(t0 + 0.02 + KEEPALIVE_TIMEOUT)
    assert sent_by(net, p.a, kind=1, since=t0) == []


def test_staged_reply_flushed_on_confirmation_counts_as_a_reply() -> None:
    # B (responder) has a packet staged until A's first data confirms the session; flushing it
    # then answers that data, so no passive keepalive is owed 10 s later, and B now waits for
    # an answer to it ("data sent, nothing received" armed).
    p = make_pair(latency=0.01)
    net = p.net
    net.send(p.a, p.ab(b"first"))
    net.run_for(0.025)  # A has its session; "first" is in flight
    net.send(p.b, p.ba(b"reply"))  # B has only its unconfirmed `next`: staged
    assert len(p.b_peer.staged) == 1
    net.run_for(0.006)  # "first" arrives, B confirms and sends "reply"
    assert tun(p.a) == [] and p.b_peer.staged == deque()
    assert p.b_peer.send_keepalive_at is None
    assert p.b_peer.new_handshake_at is not None
    net.run_for(30.0)
    assert tun(p.a) == [p.ba(b"reply")]
    assert not any(is_keepalive(d) for d in sent_by(net, p.b))


def test_no_passive_keepalive_when_replying_anyway() -> None:
    p = make_pair(latency=0.02, connect=True)
    t0 = p.net.now
    for i in range(30):
        p.net.send(p.a, p.ab(b"%d" % i))
        p.net.run_for(1.0)
        p.net.send(p.b, p.ba(b"%d" % i))
    p.net.run_for(5.0)
    assert not any(is_keepalive(d) for d in wire(p.net) if d.sent_at >= t0)


def test_keepalives_stop_data_triggered_handshake() -> None:
    # After B's passive keepalive, A heard back: no "data sent, nothing received" handshake.
    p = make_pair(connect=True)
    p.net.send(p.a, p.ab())
    p.net.run_for(100.0)
    assert sent_by(p.net, p.a, kind=1, since=1.0) == []


def test_persistent_keepalive_at_its_interval() -> None:
    p = make_pair(a_keepalive=25.0)
    p.net.start(p.a)  # a peer with a persistent keepalive handshakes at once
    p.net.run_for(110.0)
    assert p.a.tunnel.counters.handshakes_completed == 1
    keepalives = [d.sent_at for d in sent_by(p.net, p.a) if is_keepalive(d)]
    # The first one confirms the handshake; then one every 25 s of silence.
    assert len(keepalives) == 5
    gaps = [y - x for x, y in zip(keepalives, keepalives[1:], strict=False)]
    assert gaps == pytest.approx([25.0] * 4)
    assert sent_by(p.net, p.b, kind=4) == []  # B never needs to say anything


def test_persistent_keepalive_counts_from_last_traffic() -> None:
    p = make_pair(a_keepalive=25.0, latency=0.02, connect=True)
    for _ in range(5):
        p.net.send(p.a, p.ab())
        p.net.run_for(10.0)  # traffic every 10 s: no keepalive needed
    assert not any(is_keepalive(d) for d in sent_by(p.net, p.a))
    p.net.run_for(60.0)
    keepalives = [d.sent_at for d in sent_by(p.net, p.a) if is_keepalive(d)]
    assert keepalives
    # Any authenticated packet either way restarts the interval (here: B's passive keepalives).
    before = [d for d in wire(p.net) if d.sent_at < keepalives[0]]
    last_traffic = max([d.sent_at for d in before if d.src == A_ADDR]
                       + [d.sent_at + 0.02 for d in before if d.dst == A_ADDR])
    assert keepalives[0] == pytest.approx(last_traffic + 25.0)
    assert keepalives[0] > 50.0 + 25.0  # later than 25 s after A's own last data


# --- handshake timers -------------------------------------------------------------------------


def test_handshake_retransmits_then_gives_up() -> None:
    p = make_pair()
    net, a = p.net, p.a
    net.roam(p.b, NOWHERE)  # B is unreachable at the endpoint A knows
    staged = [p.ab(b"%d" % i) for i in range(3)]
    net.send(a, staged[0])
    net.run_until(2.0)
    net.send(a, staged[1])  # more packets do not send more initiations
    net.send(a, staged[2])
    net.run_until(REKEY_ATTEMPT_TIME)
    assert a.tunnel.counters.handshake_timeouts == 0
    assert len(p.a_peer.staged) == 3
    net.run_until(REKEY_ATTEMPT_TIME + 30)
    initiations = [d.sent_at for d in sent_by(net, p.a, kind=1)]
    assert len(initiations) == a.tunnel.timers.max_handshake_attempts + 2
    gaps = [y - x for x, y in zip(initiations, initiations[1:], strict=False)]
    assert all(REKEY_TIMEOUT <= g <= REKEY_TIMEOUT + JITTER + 1e-9 for g in gaps), gaps
    assert len(set(gaps)) > 1  # the jitter is there
    assert a.tunnel.counters.handshake_timeouts == 1
    assert a.tunnel.counters.drops["handshake_timeout"] == 3
    assert len(p.a_peer.staged) == 0
    assert p.a_peer.pending is None
    assert len(a.tunnel.indices) == 0  # the last pending index was released
    assert a.tunnel.counters.handshakes_completed == 0
    assert tun(p.b) == []

    # Nothing more happens until there is something to send; then it all starts again.
    net.run_for(100.0)
    assert len(sent_by(net, p.a, kind=1)) == len(initiations)
    net.roam(p.b, B_ADDR)
    net.send(a, p.ab(b"later"))
    net.run_for(1.0)
    assert tun(p.b) == [p.ab(b"later")]


def test_lost_response_is_retransmitted() -> None:
    p = make_pair()
    dropped: list[Datagram] = []

    def lose_first_response(d: Datagram) -> list[tuple[bytes, float]] | None:
        if d.data[0] == 2 and not dropped:
            dropped.append(d)
            return []
        return None

    p.net.fate = lose_first_response
    p.net.send(p.a, p.ab())
    p.net.run_for(REKEY_TIMEOUT + 1)
    initiations = sent_by(p.net, p.a, kind=1)
    assert len(initiations) == 2
    assert REKEY_TIMEOUT <= initiations[1].sent_at <= REKEY_TIMEOUT + JITTER
    assert tun(p.b) == [p.ab()]
    # B answered both: its first (unconfirmed) session was replaced by the second.
    assert p.b.tunnel.counters.handshake_responses_sent == 2
    assert len(p.b.tunnel.indices) == 1


def test_new_handshake_when_data_gets_no_answer() -> None:
    p = make_pair(connect=True)
    p.net.run_for(20.0)  # B's passive keepalive answered the connecting packet
    assert sent_by(p.net, p.a, kind=1, since=0.5) == []
    # From now on nothing B sends as transport data reaches A (handshake messages still do).
    p.net.fate = lambda d: [] if d.src == B_ADDR and d.data[0] == 4 else None
    t_send = p.net.now
    p.net.send(p.a, p.ab(b"anyone there?"))
    p.net.run_for(30.0)
    initiations = sent_by(p.net, p.a, kind=1, since=t_send)
    silence = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    assert initiations, "A never noticed the silence"
    assert t_send + silence <= initiations[0].sent_at <= t_send + silence + JITTER
    assert p.a.tunnel.counters.handshakes_completed == 2  # B answered; A has a fresh session


def test_initiation_flood_from_one_peer_is_ignored() -> None:
    p = make_pair()
    net, b = p.net, p.b
    net.fate = lambda d: []  # we carry A's initiations to B by hand
    net.send(p.a, p.ab())
    first = wire(net)[-1].data
    inject(net, b, first, A_ADDR)
    assert b.tunnel.counters.handshake_responses_sent == 1

    def initiation_from_restarted_a() -> bytes:
        net.restart(p.a)  # same key, fresh state: each initiation is a new one
        net.send(p.a, p.ab())
        data = wire(net)[-1].data
        assert data[0] == 1
        return data

    net.run_until(0.02)
    flood = initiation_from_restarted_a()
    assert noise.tai64n(WALL + 0.02) > noise.tai64n(WALL)  # newer: only the rate limit stops it
    inject(net, b, flood, A_ADDR)
    assert b.tunnel.counters.handshake_responses_sent == 1
    assert b.tunnel.counters.drops["handshake_flood"] == 1
    net.run_until(0.04)
    inject(net, b, initiation_from_restarted_a(), A_ADDR)
    assert b.tunnel.counters.drops["handshake_flood"] == 2
    net.run_until(0.1)  # 50 ms after the last one that was consumed
    inject(net, b, initiation_from_restarted_a(), A_ADDR)
    assert b.tunnel.counters.handshake_responses_sent == 2


def test_replayed_initiation_is_not_answered() -> None:
    p = make_pair(connect=True)
    net, b = p.net, p.b
    initiation = wire(net)[0].data
    assert initiation[0] == 1
    current = p.b_peer.current
    net.run_for(10.0)
    responses = b.tunnel.counters.handshake_responses_sent
    inject(net, b, initiation, A_ADDR)
    assert b.tunnel.counters.handshake_responses_sent == responses
    assert b.tunnel.counters.drops["handshake_replayed_timestamp"] == 1
    assert p.b_peer.current is current and p.b_peer.next is None
    # Same for an initiator whose clock is behind the last accepted timestamp: A restarts with
    # its wall clock a minute slow, and initiates.
    p.a.clock_skew = -60.0
    net.restart(p.a)
    net.send(p.a, p.ab())
    assert kinds(wire(net)[-1:]) == [1]
    net.run_for(0.1)
    assert b.tunnel.counters.drops["handshake_replayed_timestamp"] == 2
    assert b.tunnel.counters.handshake_responses_sent == responses


def test_initiation_from_unknown_key_is_not_answered() -> None:
    p = make_pair()
    eve = make_tunnel("eve")
    eve.add_peer(p.b.public_key, allowed_ips=["10.0.0.2/32"], endpoint=B_ADDR)
    eve.send_packet(v4("10.0.0.66", "10.0.0.2"), 0.0, WALL)
    (data, _), = eve.take_transmits()
    inject(p.net, p.b, data, EVIL)
    assert p.b.tunnel.counters.drops["unknown_peer"] == 1
    assert wire(p.net) == []


# --- cookies under load -----------------------------------------------------------------------


def test_cookie_reply_under_load_then_mac2_is_accepted() -> None:
    p = make_pair()
    net, a, b = p.net, p.a, p.b
    b.tunnel.force_under_load = True
    net.send(a, p.ab(b"patience"))
    net.run_for(1.0)
    first = wire(net)[0].data
    assert b.tunnel.cookie_checker.mac1_valid(first)
    assert first[-16:] == bytes(16)  # no cookie yet, so no mac2
    assert kinds(wire(net)) == [1, 3]
    reply = wire(net)[1]
    assert len(reply.data) == 64 and reply.dst == A_ADDR
    assert b.tunnel.counters.cookie_replies_sent == 1
    assert b.tunnel.counters.handshake_responses_sent == 0
    assert p.a_peer.cookies.cookie is not None  # A took the cookie...
    assert "cookie_reply_rejected" not in a.tunnel.counters.drops
    assert kinds(wire(net)) == [1, 3]  # ...and waits for its retransmit timer, as wireguard-go

    net.run_for(REKEY_TIMEOUT + 1)
    retry = sent_by(net, p.a, kind=1)[1].data
    assert retry[-16:] != bytes(16)
    assert b.tunnel.cookie_checker.mac2_valid(retry, A_ADDR, net.now)
    assert b.tunnel.counters.handshake_responses_sent == 1
    assert b.tunnel.counters.cookie_replies_sent == 1
    assert tun(b) == [p.ab(b"patience")]


def test_cookie_reply_with_wrong_aad_is_rejected_by_the_tunnel() -> None:
    p = make_pair()
    net, a, b = p.net, p.a, p.b
    net.fate = lambda d: []
    net.send(a, p.ab())
    initiation = bytearray(wire(net)[-1].data)
    initiation[116:132] = bytes(16)  # bind the reply to a mac1 A never sent
    sender = struct.unpack_from("<I", initiation, 4)[0]
    bad = b.tunnel.cookie_checker.make_reply(bytes(initiation), sender, A_ADDR, net.now)
    inject(net, a, bad.pack(), B_ADDR)
    assert a.tunnel.counters.drops["cookie_reply_rejected"] == 1
    assert p.a_peer.cookies.cookie is None
    # To an index A never used: rejected too.
    good = b.tunnel.cookie_checker.make_reply(wire(net)[-1].data, sender ^ 1, A_ADDR, net.now)
    inject(net, a, good.pack(), B_ADDR)
    assert a.tunnel.counters.drops["cookie_reply_rejected"] == 2
    assert p.a_peer.cookies.cookie is None


def test_bad_mac1_is_dropped_before_any_work() -> None:
    p = make_pair()
    p.net.fate = lambda d: []
    p.net.send(p.a, p.ab())
    data = bytearray(wire(p.net)[-1].data)
    data[120] ^= 1
    p.b.tunnel.force_under_load = True  # not even a cookie reply for a bad mac1
    inject(p.net, p.b, bytes(data), A_ADDR)
    assert p.b.tunnel.counters.drops["handshake_bad_mac1"] == 1
    assert p.b.tunnel.counters.cookie_replies_sent == 0
    assert len(wire(p.net)) == 1


def test_under_load_by_rate() -> None:
    p = make_pair()
    b = p.b
    b.tunnel.under_load_threshold = 3
    p.net.fate = lambda d: []
    p.net.send(p.a, p.ab())
    initiation = wire(p.net)[-1].data
    for _ in range(5):
        inject(p.net, b, initiation, EVIL)
    # The first three are processed (one answered, two replays), then B asks for cookies.
    assert b.tunnel.counters.handshake_responses_sent == 1
    assert b.tunnel.counters.cookie_replies_sent == 2


def test_initiator_under_load_asks_the_responder_for_a_cookie_too() -> None:
    # The mac2 rule covers responses as well (as in wireguard-go): an initiator under load
    # answers a response without mac2 with a cookie reply addressed to the responder's index.
    # The responder takes the cookie, and its answer to the retried initiation carries mac2.
    p = make_pair()
    net, a, b = p.net, p.a, p.b
    a.tunnel.force_under_load = True
    net.send(a, p.ab(b"under load"))
    net.run_for(1.0)
    assert kinds(wire(net)) == [1, 2, 3]
    assert a.tunnel.counters.cookie_replies_sent == 1
    assert "cookie_reply_rejected" not in b.tunnel.counters.drops
    assert p.b_peer.cookies.cookie is not None
    net.run_for(REKEY_TIMEOUT + 1)
    response = sent_by(net, p.b, kind=2)[-1].data
    assert a.tunnel.cookie_checker.mac2_valid(response, B_ADDR, net.now)
    assert a.tunnel.counters.handshakes_completed == 1
    assert tun(b) == [p.ab(b"under load")]


# --- the wire format of transport data --------------------------------------------------------


def test_transport_datagrams_match_an_independent_decryption() -> None:
    import nacl.bindings

    p = make_pair(connect=True)
    start = len(wire(p.net))
    packets = [p.ab(b"k" * n) for n in (0, 5, 40)] + [v6("fd00::1", "fd00::2", b"six")]
    for packet in packets:
        p.net.send(p.a, packet)
    key = p.b_peer.current.receiving_key
    for i, (packet, d) in enumerate(zip(packets, wire(p.net)[start:], strict=True)):
        kind, receiver, counter = struct.unpack_from("<IIQ", d.data)
        assert (kind, receiver) == (4, p.b_peer.current.local_index)
        assert counter == i + 1  # counter 0 carried the connecting packet
        plain = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            d.data[16:], b"", bytes(4) + counter.to_bytes(8, "little"), key)
        assert plain == packet + bytes(padded_length(len(packet)) - len(packet))


# --- lossy, duplicating, reordering paths -----------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_loss_duplication_and_reordering(data: st.DataObject) -> None:
    """Packets arrive at most once and unmodified; every one whose datagram got through arrives,
    unless its session was gone when it did: an initiation that overtakes data sealed on B's
    unconfirmed session replaces that session (as in wireguard-go), and B drops the data as
    `unknown_index`."""
    p = make_pair(latency=0.02)
    survived_data: set[int] = set()

    def fate(d: Datagram) -> list[tuple[bytes, float]]:
        copies = data.draw(st.lists(st.floats(0.0, 0.5), max_size=3), label=f"{d.sent_at:.2f}")
        return [(d.data, extra) for extra in copies]

    class Arrivals(SimObserver):
        def delivering(self, node: SimNode, d: Datagram) -> None:
            if node is p.b and d.data[0] == 4 and len(d.data) > 32:
                receiver = struct.unpack_from("<I", d.data, 4)[0]
                if p.b.tunnel.receiving_session(receiver) is not None:
                    survived_data.add(d.seq)

    p.net.observers.append(Arrivals())
    p.net.fate = fate
    packets = [p.ab(b"%d" % i) for i in range(15)]
    for packet in packets:
        p.net.send(p.a, packet)
        p.net.run_for(data.draw(st.sampled_from([0.0, 0.1, 1.0, 7.0]), label="gap"))
    p.net.run_for(130.0)
    delivered = tun(p.b)
    assert len(set(delivered)) == len(delivered)
    assert set(delivered) <= set(packets)
    assert len(delivered) == len(survived_data)
    # Duplicates, late handshake messages, and packets staged during a handshake that never
    # completed are the only reasons for A to drop anything.
    assert p.a.tunnel.counters.drops.keys() <= {"replay_or_forged", "unknown_index",
                                                "handshake_timeout", "staged_queue_full"}


# --- crossing handshakes and restarts ---------------------------------------------------------


def test_both_sides_initiate_at_once() -> None:
    p = make_pair(b_knows_a=True)
    p.net.send(p.a, p.ab(b"from a"))
    p.net.send(p.b, p.ba(b"from b"))
    assert kinds(wire(p.net)) == [1, 1]
    p.net.run_for(1.0)
    assert tun(p.b) == [p.ab(b"from a")]
    assert tun(p.a) == [p.ba(b"from b")]
    for i in range(5):
        p.net.send(p.a, p.ab(b"%d" % i))
        p.net.send(p.b, p.ba(b"%d" % i))
    p.net.run_for(1.0)
    assert len(tun(p.a)) == len(tun(p.b)) == 6
    assert not p.a.tunnel.counters.drops and not p.b.tunnel.counters.drops


def test_peer_restart_recovers() -> None:
    p = make_pair(connect=True, b_knows_a=True)
    p.net.run_for(30.0)
    # A restarts: same key and address, no sessions, a later clock.
    restarted = p.net.restart(p.a)
    restarted.received.clear()
    p.net.send(p.b, p.ba(b"lost: A forgot the session"))
    p.net.run_for(1.0)
    assert restarted.tunnel.counters.drops["unknown_index"] == 1
    p.net.send(restarted, p.ab(b"hello again"))
    p.net.run_for(1.0)
    assert tun(p.b) == [p.ab(b"hello again")]
    p.net.send(p.b, p.ba(b"welcome back"))
    p.net.run_for(1.0)
    assert tun(restarted) == [p.ba(b"welcome back")]


def test_b_notices_a_restart_by_itself() -> None:
    # B keeps sending into a session A forgot; after KEEPALIVE + REKEY_TIMEOUT of silence
    # it starts a handshake of its own, and traffic resumes without A sending anything.
    p = make_pair(connect=True, b_knows_a=True)
    p.net.run_for(30.0)
    restarted = p.net.restart(p.a)
    restarted.received.clear()
    for i in range(40):
        p.net.send(p.b, p.ba(b"%d" % i))
        p.net.run_for(1.0)
    got = tun(restarted)
    assert got and got[-1] == p.ba(b"39")
    assert p.b.tunnel.counters.handshake_initiations_sent == 1


def test_scaled_timers() -> None:
    timers = TimerConfig().scaled(0.01)
    assert timers.rekey_timeout == pytest.approx(0.05)
    assert timers.max_handshake_attempts == TimerConfig().max_handshake_attempts
    p = make_pair(timers=timers)
    p.net.roam(p.b, NOWHERE)
    p.net.send(p.a, p.ab())
    p.net.run_for(2.0)
    initiations = [d.sent_at for d in sent_by(p.net, p.a, kind=1)]
    assert len(initiations) == timers.max_handshake_attempts + 2
    assert initiations[-1] <= REKEY_ATTEMPT_TIME * 0.01 + 2 * 0.05 * 1.1 * 20
    assert p.a.tunnel.counters.handshake_timeouts == 1


def test_responder_waits_for_confirmation_instead_of_initiating() -> None:
    # B answers A's initiation; before A's first packet confirms the session, B has data of its
    # own. Like wireguard-go and the kernel, B counts its response as a handshake sent and does
    # not start a crossing one within REKEY_TIMEOUT: the data waits for the confirmation.
    p = make_pair(latency=0.5, b_knows_a=True)
    p.net.send(p.a, p.ab(b"a first"))
    p.net.run_for(0.6)  # B has answered; A's confirmation is still on its way
    assert p.b_peer.next is not None and p.b_peer.current is None
    p.net.send(p.b, p.ba(b"b meanwhile"))
    p.net.run_for(2.0)
    assert p.b.tunnel.counters.handshake_initiations_sent == 0
    assert tun(p.a) == [p.ba(b"b meanwhile")]
    assert tun(p.b) == [p.ab(b"a first")]
    assert kinds(wire(p.net)) == [1, 2, 4, 4]
    # Both ends agree on one session, so only A (its initiator) will rekey by age.
    assert p.a_peer.current.sending_key == p.b_peer.current.receiving_key
    assert p.a_peer.current.is_initiator and not p.b_peer.current.is_initiator


def test_staged_queue_keeps_the_newest_packets() -> None:
    p = make_pair(latency=0.5)
    packets = [p.ab(b"%d" % i) for i in range(130)]
    for packet in packets:  # all before the handshake completes
        p.net.send(p.a, packet)
    assert kinds(wire(p.net)) == [1]
    assert p.a.tunnel.counters.drops["staged_queue_full"] == 2
    p.net.run_for(3.0)
    assert tun(p.b) == packets[2:]  # the oldest ones made room, order kept


def test_ipv4_mapped_source_is_the_same_endpoint() -> None:
    p = make_pair(connect=True)
    p.net.fate = lambda d: []  # we deliver by hand
    p.net.send(p.b, p.ba(b"via a dual-stack socket"))
    datagram = wire(p.net)[-1].data
    p.a.tunnel.receive_datagram(datagram, ("::ffff:198.18.0.2", 51820, 0, 0), p.net.now,
                                p.net.wall(p.a))
    assert p.a.tunnel.take_tun_packets() == [p.ba(b"via a dual-stack socket")]
    assert p.a_peer.endpoint == B_ADDR


def test_send_packets_routes_a_batch_like_send_packet_does() -> None:
    """The batch API used by the shell gives the same result as one call per packet, including
    runs to one destination, changes of destination, and unroutable or non-IP packets."""
    net = SimNetwork(link=Link(latency=0.005))
    hub, b, c = (net.add_node(name, address=address)
                 for name, address in [("hub", A_ADDR), ("b", B_ADDR), ("c", C_ADDR)])
    hub.add_peer(b, allowed_ips=["10.0.0.2/32"])
    hub.add_peer(c, allowed_ips=["10.0.0.3/32", "fd00::3/128"])
    b.add_peer(hub, allowed_ips=["10.0.0.0/8"])
    c.add_peer(hub, allowed_ips=["10.0.0.0/8", "fd00::/64"])
    batch = [v4("10.0.0.1", "10.0.0.2", bytes([i]) * 30) for i in range(3)]
    batch += [v4("10.0.0.1", "10.0.0.3"), v6("fd00::1", "fd00::3"), v4("10.0.0.1", "10.9.9.9"),
              b"\x00" * 10, v4("10.0.0.1", "10.0.0.2", b"last")]
    hub.tunnel.send_packets(batch, net.now, net.wall(hub))
    net.flush(hub)
    net.run_for(1.0)
    assert tun(b) == batch[:3] + [batch[7]]
    assert tun(c) == batch[3:5]
    assert hub.tunnel.counters.drops["no_route"] == 1
    assert hub.tunnel.counters.drops["tun_not_ip"] == 1


def test_a_flooding_source_is_cut_off_before_mac1_and_the_real_peer_still_gets_in() -> None:
    """Under load every handshake message first asks its source's token bucket; past it a
    message costs no cryptography at all (mac1 is not even checked), and a peer at another
    address still completes its handshake."""
    p = make_pair()
    b = p.b
    b.tunnel.force_under_load = True
    p.net.fate = lambda d: []
    p.net.send(p.a, p.ab())
    initiation = wire(p.net)[-1].data
    for _ in range(1000):
        inject(p.net, b, initiation, EVIL)
    drops = b.tunnel.counters.drops
    assert drops["handshake_rate_limited"] == 995  # the burst of five got through
    assert b.tunnel.counters.cookie_replies_sent == 5  # and no more work than that
    bad = bytearray(initiation)
    bad[120] ^= 1
    inject(p.net, b, bytes(bad), EVIL)
    assert drops["handshake_bad_mac1"] == 0  # refused before mac1 was looked at
    assert drops["handshake_rate_limited"] == 996
    p.net.fate = None
    b.tunnel.force_under_load = False
    p.net.send(p.a, p.ab(b"still here"))
    p.net.run_for(REKEY_TIMEOUT + 1)  # A retries the initiation the flood test swallowed
    assert tun(b)[-1] == p.ab(b"still here")


def _initiation_and_pair() -> tuple[Pair, bytes]:
    p = make_pair()
    p.net.fate = lambda d: []
    p.net.send(p.a, p.ab())
    return p, wire(p.net)[-1].data


def test_a_gro_read_of_initiations_costs_one_bucket_lookup() -> None:
    """Under load, a UDP GRO read of 200 initiations from one source is one admission: the
    source's burst gets in (each answered by a cookie reply), the rest are dropped unread."""
    p, initiation = _initiation_and_pair()
    b = p.b.tunnel
    b.force_under_load = True
    bad = bytearray(initiation)
    bad[120] ^= 1  # past the burst, not even mac1 is looked at
    read = initiation * 5 + bytes(bad) * 195
    b.receive_batch(read, len(read), len(initiation), EVIL, p.net.now, WALL)
    assert b.counters.cookie_replies_sent == 5
    assert b.counters.drops["handshake_rate_limited"] == 195
    assert b.counters.drops["handshake_bad_mac1"] == 0
    # A short last datagram of the read (here a transport-sized one) is looked at on its own.
    read = initiation * 3 + b"\x04\0\0\0" + bytes(28)
    b.receive_batch(read, len(read), len(initiation), EVIL, p.net.now, WALL)
    assert b.counters.drops["handshake_rate_limited"] == 198
    assert b.counters.drops["unknown_index"] == 1


def test_queued_handshakes_wait_for_their_turn() -> None:
    """With `handshakes_inline` off (the IO shell's setting) an admitted handshake message
    waits in the queue: transport data is handled at once, handshakes when the shell says,
    and then their answers are ready to send."""
    p = make_pair(connect=True)
    b = p.b.tunnel
    b.handshakes_inline = False
    p.net.send(p.a, p.ab(b"data first"))
    p.net.run_for(0.1)
    assert tun(p.b)[-1] == p.ab(b"data first")  # the session exists: no queue on the way
    q, initiation = _initiation_and_pair()  # a pair of its own: B there has not answered yet
    b2 = q.b.tunnel
    b2.handshakes_inline = False
    b2.receive_datagram(initiation, A_ADDR, q.net.now, WALL)
    assert b2.handshakes_pending == 1 and b2.take_transmits() == []
    assert b2.process_handshakes(q.net.now, WALL, limit=8) == 0
    assert b2.handshakes_pending == 0
    # The response, ready to send as soon as it was made (not at the next timer).
    assert [data[0] for data, _ in b2.take_transmits()] == [2]


def test_the_handshake_queue_is_bounded_and_a_backlog_means_under_load() -> None:
    p, initiation = _initiation_and_pair()
    b = p.b.tunnel
    b.handshakes_inline = False
    b.under_load_threshold = 10**9  # only the queue can say "under load" here
    read = initiation * 1100
    b.receive_batch(read, len(read), len(initiation), EVIL, p.net.now, WALL)
    assert b.handshakes_pending == 1024
    assert b.counters.drops["handshake_queue_full"] == 76
    assert b.under_load(p.net.now)
    # Under load now: the next read from that source goes through its bucket first.
    b.receive_batch(read, len(read), len(initiation), EVIL, p.net.now, WALL)
    assert b.counters.drops["handshake_rate_limited"] == 1095
    assert b.counters.drops["handshake_queue_full"] == 81
    assert b.process_handshakes(p.net.now, WALL, limit=1000) == 24
    b.process_handshakes(p.net.now, WALL, limit=1000)
    assert not b.under_load(p.net.now)
    # All were one initiation replayed while B demanded cookies: cookie replies, no responses.
    assert b.counters.handshake_responses_sent <= 1
