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

from fz_trio.core.timers import TimerConfig
from fz_trio.datapath import Device, ip_packet
from fz_trio.datapath.offload import GSO_UDP_L4, PLAIN_HDR, Segments, VnetHeader, segment
from fz_trio.lab.sim import WALL_EPOCH, Link, SimNetwork, SimNode, det_key, det_random
from tests.datapath.strategies import (
    Flow,
    TunSuperPacket,
    plain_partial_packets,
    tso_packets,
    uso_packets,
)

SERVER = ("198.18.0.1", 51820)
CLIENT = ("198.18.0.2", 40000)
EVERYTHING = ["0.0.0.0/0", "::/0"]

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pair(timers: TimerConfig | None = None) -> tuple[SimNetwork, SimNode, SimNode]:
    """Two tunnels that route everything to each other (the flows' addresses are random), on a
    network without latency whose clock reads 1 s."""
    net = SimNetwork(timers=timers, link=Link(latency=0.0), now=1.0)
    server = net.add_node("server", address=SERVER)
    client = net.add_node("client", address=CLIENT)
    client.add_peer(server, allowed_ips=EVERYTHING)
    server.add_peer(client, allowed_ips=EVERYTHING, endpoint=False)
    return net, client, server


def pump(net: SimNetwork, server: SimNode) -> list[bytes]:
    """Deliver whatever the tunnels have to send (latency 0: at once); what the server wrote to
    its TUN meanwhile."""
    before = len(server.received)
    net.flush()
    net.run_until(net.now)
    return list(server.received)[before:]


def connected(timers: TimerConfig | None = None) -> tuple[SimNetwork, SimNode, SimNode]:
    """A pair with a session, the clock moved on to 2 s."""
    net, client, server = pair(timers)
    # Staged until the handshake it starts completes.
    net.send(client, ip_packet("100.64.0.2", "100.64.0.1", bytes(80), 17))
    assert len(pump(net, server)) == 1
    assert client.peer(server).current is not None
    net.run_until(2.0)
    return net, client, server


super_packets = st.one_of(tso_packets(), uso_packets())


@SETTINGS
@given(sp=super_packets)
def test_send_segments_delivers_what_segment_gives(sp: TunSuperPacket) -> None:
    expected = [bytes(p) for p in segment(sp.hdr, sp.packet)]
    net, client, server = connected()
    device = client.tunnel
    device.send_segments(Segments.of(sp.hdr, sp.packet), net.now, net.wall(client))
    batches = device.take_batches()
    lengths = [len(d) for b in batches for d in b.datagrams()]
    device.recycle(batches)
    # The same packets one by one, on a second pair: the datagram lengths (padding) must match.
    net2, client2, _ = connected()
    client2.tunnel.send_packets(expected, net2.now, net2.wall(client2))
    assert [len(d) for d, _ in client2.tunnel.take_transmits()] == lengths
    device.send_segments(Segments.of(sp.hdr, sp.packet), net.now, net.wall(client))
    assert pump(net, server) == expected
    assert device.counters.packets_to_network >= len(expected)


@SETTINGS
@given(sp=super_packets)
def test_send_segments_without_a_session_stages_every_segment(sp: TunSuperPacket) -> None:
    expected = [bytes(p) for p in segment(sp.hdr, sp.packet)]
    net, client, server = pair()
    client.tunnel.send_segments(Segments.of(sp.hdr, sp.packet), net.now, net.wall(client))
    peer = client.peer(server)
    assert len(peer.staged) == min(len(expected), peer.staged.maxlen)
    assert pump(net, server) == expected[-peer.staged.maxlen:]


@SETTINGS
@given(sp=tso_packets(max_payload=20000), budget=st.integers(0, 40))
def test_send_segments_never_seals_past_reject_after_messages(sp: TunSuperPacket,
                                                              budget: int) -> None:
    limit = 1000
    net, client, server = connected(TimerConfig(rekey_after_messages=limit // 2,
                                                reject_after_messages=limit))
    session = client.peer(server).current
    assert session is not None
    session.send_counter = limit - budget
    segments = Segments.of(sp.hdr, sp.packet)
    client.tunnel.send_segments(segments, net.now, net.wall(client))
    assert session.send_counter <= limit
    sealed_with_it = session.send_counter - (limit - budget)
    assert sealed_with_it == min(budget, segments.count)
    client.tunnel.take_transmits()


@SETTINGS
@given(sp=super_packets, plain=st.integers(0, 2))
def test_send_reads_takes_apart_what_a_vnet_tun_reads(sp: TunSuperPacket, plain: int) -> None:
    """TUN reads with their virtio_net_hdr, in order: plain packets, then the super-packet,
    then a read too short for a header (dropped): delivered as `segment()` gives them."""
    expected = [bytes(p) for p in segment(sp.hdr, sp.packet)]
    small = [ip_packet("100.64.0.2", "100.64.0.1", bytes([k]) * 30, 17) for k in range(plain)]
    reads = [PLAIN_HDR + p for p in small] + [sp.hdr.pack() + sp.packet, b"\x00" * 4]
    net, client, server = connected()
    device = client.tunnel
    assert device.send_reads(reads, net.now, net.wall(client)) == plain + len(expected)
    assert device.counters.drops["tun_malformed_offload"] == 1
    assert pump(net, server) == small + expected
    assert device.stats.super_packets_read == 1
    assert device.stats.segments_from_super_packets == len(expected)


@SETTINGS
@given(case=plain_partial_packets())
def test_send_reads_finishes_a_partial_checksum(case: tuple[VnetHeader, bytearray, Flow]
                                                ) -> None:
    """A plain read with NEEDS_CSUM (the kernel's ACKs) goes out as `segment()` finishes it."""
    hdr, packet, _flow = case
    expected = [bytes(p) for p in segment(hdr, packet)]
    net, client, server = connected()
    assert client.tunnel.send_reads([hdr.pack() + bytes(packet)], net.now,
                                    net.wall(client)) == 1
    assert pump(net, server) == expected


def test_send_reads_counts_a_bad_super_packet() -> None:
    sp = next(iter(_examples(tso_packets(version=4))))
    net, client, server = connected()
    hdr = VnetHeader(sp.hdr.flags, sp.hdr.gso_type, sp.hdr.hdr_len, 0, sp.hdr.csum_start,
                     sp.hdr.csum_offset)  # gso_size 0
    wrong = VnetHeader(sp.hdr.flags, GSO_UDP_L4, sp.hdr.hdr_len, sp.hdr.gso_size,
                       sp.hdr.csum_start, sp.hdr.csum_offset)  # USO on a TCP packet
    reads = [hdr.pack() + sp.packet, wrong.pack() + sp.packet]
    assert client.tunnel.send_reads(reads, net.now, net.wall(client)) == 0
    assert client.tunnel.counters.drops["tun_malformed_offload"] == 2
    assert pump(net, server) == []


def test_send_segments_counts_a_super_packet_without_a_route() -> None:
    client = Device(det_key("client"), random_bytes=det_random("c"))
    server = Device(det_key("server"), random_bytes=det_random("s"))
    client.add_peer(server.public_key, allowed_ips=["100.64.0.0/10"], endpoint=SERVER)
    sp = next(iter(_examples(tso_packets(version=6))))
    client.send_segments(Segments.of(sp.hdr, sp.packet), 1.0, WALL_EPOCH + 1.0)
    assert client.counters.drops["no_route"] == Segments.of(sp.hdr, sp.packet).count
    assert client.take_transmits() == []


def _examples(strategy: st.SearchStrategy[TunSuperPacket]) -> list[TunSuperPacket]:
    found: list[TunSuperPacket] = []

    @settings(max_examples=1, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: TunSuperPacket) -> None:
        found.append(value)

    collect()
    return found
