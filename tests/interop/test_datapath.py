"""The batched data path under real load, in namespaces: several TUN queues keep each flow in
order, a stalled UDP side stops the TUN readers (bounded memory, no silent drops), and shutdown
under full load is quick."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest

from fz_trio.lab.iperf import iperf3
from fz_trio.lab.scenario import TunnelPair
from fz_trio.lab.testnet import TestNet
from tests.interop.tunnel_checks import exit_stats, nstat

pytestmark = pytest.mark.netns


def vm_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# What the sender's TCP counts when it detects that segments arrived out of order.
REORDERING = ("TcpExtTCPSACKReorder", "TcpExtTCPTSReorder", "TcpExtTCPRenoReorder")


@pytest.mark.parametrize("tun_io", ["threads", "inline"])
def test_multiqueue_keeps_each_flow_in_order(testnet: TestNet, tun_io: str) -> None:
    """Four TUN queues on both ends, four parallel TCP flows: the sender's kernel detects (almost)
    no reordering, and retransmits nothing beyond what the tunnel dropped (and counted). Bound:
    0.1% of the MSS-sized packets moved (with TUN offloads the kernel counts a coalesced
    super-packet as one segment, so the packet count comes from the bytes moved)."""
    net = testnet
    pair = TunnelPair(net, server_impl="fz-trio", client_impl="fz-trio",
                      extra_args=["--tun-queues", "4", "--tun-io", tun_io])
    pair.start()
    before = nstat(net, net.ns_b, *REORDERING, "TcpOutSegs")
    lost_before = sum(nstat(net, ns, "UdpRcvbufErrors")["UdpRcvbufErrors"]
                      for ns in (net.ns_a, net.ns_b))
    result = iperf3(net, seconds=3, streams=4)
    after = nstat(net, net.ns_b, *REORDERING, "TcpOutSegs")
    lost = sum(nstat(net, ns, "UdpRcvbufErrors")["UdpRcvbufErrors"]
               for ns in (net.ns_a, net.ns_b)) - lost_before
    segments = after["TcpOutSegs"] - before["TcpOutSegs"]
    reordered = sum(after[name] - before[name] for name in REORDERING)
    packets = result.mbits * 1e6 * 3 / 8 / 1400
    assert packets > 10_000 and segments > 1000, (result, segments)
    # The sender's kernel detected (almost) no reordering. (Losses do happen: a saturated
    # tunnel drops at its UDP receive buffer, kept small to bound the delay under load, and TCP
    # retransmits those; they are counted by the kernel, and they are not reordering.)
    assert reordered <= packets / 1000, (reordered, packets)
    # One receive-buffer drop is one GRO skb: up to 64 datagrams.
    assert result.retransmits <= packets / 1000 + 64 * lost, (result, packets, lost)
    for side in (pair.client, pair.server):
        pair.stop_fz_trio(side)
        stats = exit_stats(side)
        assert set(stats["protocol"]["drops"]) <= {"no_route"}, stats  # type: ignore[arg-type]


_FLOOD = r"""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"f" * 1200
deadline = time.monotonic() + float(sys.argv[2])
sent = 0
while time.monotonic() < deadline:
    try:
        sock.sendto(payload, (sys.argv[1], 9))
        sent += 1
    except OSError:
        pass
print(sent)
"""


@pytest.mark.parametrize("tun_io", ["threads", "inline"])
def test_stalled_udp_side_stops_tun_reads_with_bounded_memory(testnet: TestNet,
                                                              tun_io: str) -> None:
    """The client's underlay is throttled to 1 Mbit/s with a queue larger than the socket's send
    buffer, so its UDP socket fills and stays full. A UDP flood into the tunnel must then make the
    packet loop stop, the readers stop reading TUN (the kernel drops at the TUN queue, visible in
    its TX drop counter), fz-trio's memory stay flat, and fz-trio itself drop nothing silently."""
    net = testnet
    pair = TunnelPair(net, server_impl="fz-trio", client_impl="fz-trio",
                      extra_args=["--tun-io", tun_io])
    pair.start()
    assert pair.client.process is not None
    pid = pair.client.process.pid
    net.run(net.ns_b, "tc", "qdisc", "replace", "dev", net.veth_b, "root", "tbf", "rate", "1mbit",
            "burst", "32kbit", "limit", "200000000")
    script = net.tmpdir / "flood.py"
    script.write_text(_FLOOD)
    flood = net.popen(net.ns_b, sys.executable, str(script), net.tunnel_a4, "6", stdout=-1)
    samples = []
    for _ in range(24):
        time.sleep(0.25)
        samples.append(vm_rss_mb(pid))
    sent = int(flood.communicate(timeout=30)[0])
    shown = net.run(net.ns_b, "ip", "-s", "-j", "link", "show", pair.client.ifname).stdout
    link = json.loads(shown)
    tun_tx_dropped = link[0]["stats64"]["tx"]["dropped"]
    elapsed = pair.stop_fz_trio(pair.client)
    stats = exit_stats(pair.client)
    read = stats["io"]["tun_packets_read"]  # type: ignore[index]
    assert sent > 50_000, sent
    assert tun_tx_dropped > sent // 2, (tun_tx_dropped, sent)  # the readers stopped reading
    assert read < sent // 4, (read, sent)
    growth = max(samples[4:]) - samples[4]
    assert growth < 20, samples  # MB, after the first second: memory is bounded
    assert max(samples) < 150, samples
    assert set(stats["protocol"]["drops"]) <= {"no_route"}, stats  # type: ignore[arg-type]
    assert elapsed < 1.0, f"shutdown with a stalled socket took {elapsed:.2f}s"


def test_shutdown_under_full_load_with_several_queues(testnet: TestNet) -> None:
    net = testnet
    pair = TunnelPair(net, server_impl="fz-trio", client_impl="fz-trio",
                      extra_args=["--tun-queues", "2"])
    pair.start()
    server = net.popen(net.ns_a, "iperf3", "-s", "-1", "-B", net.tunnel_a4, stdout=-3, stderr=-3)
    time.sleep(0.3)
    client = net.popen(net.ns_b, "iperf3", "-c", net.tunnel_a4, "-t", "20", "-P", "4",
                       stdout=-3, stderr=-3)
    time.sleep(2)
    for side in (pair.client, pair.server):
        assert side.process is not None
        side.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    for side in (pair.client, pair.server):
        assert side.process is not None
        side.process.wait(5)
        assert side.process.returncode == 0, side.log_tail()
    elapsed = time.monotonic() - started
    client.kill()
    server.kill()
    assert elapsed < 1.0, f"shutdown under load took {elapsed:.2f}s"
    for side in (pair.client, pair.server):
        assert not net.link_exists(side.namespace, side.ifname)
