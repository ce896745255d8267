"""The core's batch paths give exactly what its per-packet paths give.

- `Device.send_segments` (a TUN super-packet, each segment built and sealed in place) puts the
  same packets on the wire as `segment()` followed by `send_packet` for each: the receiving core
  delivers the segments byte for byte, and the datagrams have the same lengths.
- Without a usable session, or when the batch would cross REJECT_AFTER_MESSAGES, it falls back
  to the per-packet path, so the staging and counter limits stay exact.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memnet import MemNet, det_random, private_key
from test_offload import SuperPacket, tso_packets, uso_packets

from fz_trio.core.timers import TimerConfig
from fz_trio.datapath import Device, ip_packet
from fz_trio.datapath.offload import Segments, segment

CLIENT = ("198.18.0.2", 40000)
SERVER = ("198.18.0.1", 51820)
WALL = 1_700_000_000.0  # the wall clock at now == 0
EVERYTHING = ["0.0.0.0/0", "::/0"]

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pair(timers: TimerConfig | None = None) -> tuple[Device, Device]:
    """Two tunnels that route everything to each other (the flows' addresses are random)."""
    client = Device(private_key("client"), random_bytes=det_random("c"), timers=timers)
    server = Device(private_key("server"), random_bytes=det_random("s"), timers=timers)
    client.add_peer(server.public_key, allowed_ips=EVERYTHING, endpoint=SERVER)
    server.add_peer(client.public_key, allowed_ips=EVERYTHING)
    return client, server


def pump(client: Device, server: Device, now: float) -> list[bytes]:
    """Deliver whatever both have to send, over a MemNet without latency; what the server
    wrote to its TUN."""
    net = MemNet(now=now)
    net.add(CLIENT, client)
    net.add(SERVER, server)
    net.run_until(now)
    return net.tun[server]


def connected(timers: TimerConfig | None = None) -> tuple[Device, Device]:
    client, server = pair(timers)
    # Staged until the handshake it starts completes.
    client.send_packet(ip_packet("100.64.0.2", "100.64.0.1", bytes(80), 17), 1.0, WALL + 1.0)
    assert len(pump(client, server, 1.0)) == 1
    assert client.peers[server.public_key].current is not None
    return client, server


super_packets = st.one_of(tso_packets(), uso_packets())


@SETTINGS
@given(sp=super_packets)
def test_send_segments_delivers_what_segment_gives(sp: SuperPacket) -> None:
    expected = [bytes(p) for p in segment(sp.hdr, sp.packet)]
    client, server = connected()
    client.send_segments(Segments.of(sp.hdr, sp.packet), 2.0, WALL + 2.0)
    batches = client.take_batches()
    lengths = [len(d) for b in batches for d in b.datagrams()]
    client.recycle(batches)
    # The same packets one by one, on a second pair: the datagram lengths (padding) must match.
    client2, _ = connected()
    client2.send_packets(expected, 2.0, WALL + 2.0)
    assert [len(d) for d, _ in client2.take_transmits()] == lengths
    client.send_segments(Segments.of(sp.hdr, sp.packet), 2.0, WALL + 2.0)
    assert pump(client, server, 2.0) == expected
    assert client.counters.packets_to_network >= len(expected)


@SETTINGS
@given(sp=super_packets)
def test_send_segments_without_a_session_stages_every_segment(sp: SuperPacket) -> None:
    expected = [bytes(p) for p in segment(sp.hdr, sp.packet)]
    client, server = pair()
    client.send_segments(Segments.of(sp.hdr, sp.packet), 1.0, WALL + 1.0)
    peer = client.peers[server.public_key]
    assert len(peer.staged) == min(len(expected), peer.staged.maxlen)
    assert pump(client, server, 1.0) == expected[-peer.staged.maxlen:]


@SETTINGS
@given(sp=tso_packets(max_payload=20000), budget=st.integers(0, 40))
def test_send_segments_never_seals_past_reject_after_messages(sp: SuperPacket,
                                                              budget: int) -> None:
    limit = 1000
    client, server = connected(TimerConfig(rekey_after_messages=limit // 2,
                                           reject_after_messages=limit))
    session = client.peers[server.public_key].current
    assert session is not None
    session.send_counter = limit - budget
    segments = Segments.of(sp.hdr, sp.packet)
    client.send_segments(segments, 2.0, WALL + 2.0)
    assert session.send_counter <= limit
    sealed_with_it = session.send_counter - (limit - budget)
    assert sealed_with_it == min(budget, segments.count)
    client.take_transmits()


def test_send_segments_counts_a_super_packet_without_a_route() -> None:
    client = Device(private_key("client"), random_bytes=det_random("c"))
    server = Device(private_key("server"), random_bytes=det_random("s"))
    client.add_peer(server.public_key, allowed_ips=["100.64.0.0/10"], endpoint=SERVER)
    sp = next(iter(_examples(tso_packets(version=6))))
    client.send_segments(Segments.of(sp.hdr, sp.packet), 1.0, WALL + 1.0)
    assert client.counters.drops["no_route"] == Segments.of(sp.hdr, sp.packet).count
    assert client.take_transmits() == []


def _examples(strategy: st.SearchStrategy[SuperPacket]) -> list[SuperPacket]:
    found: list[SuperPacket] = []

    @settings(max_examples=1, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: SuperPacket) -> None:
        found.append(value)

    collect()
    return found
