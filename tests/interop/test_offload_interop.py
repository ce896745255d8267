"""TUN offloads (TSO/USO super-packets in, GRO-coalesced super-packets out) against real peers.

With offloads on (the default of `fz-trio up`), in network namespaces: a 200 MB TCP transfer in
each direction whose SHA-256 must match, against wireguard-go in both roles and against fz-trio
itself; `ethtool -k` on the fz-trio TUN shows TSO on; the exit stats show that super-packets were
really read (segmented) and written (coalesced), that the kernel refused no GSO write, and that
nothing was dropped. `--no-offload` turns it all off. A UDP sender using UDP_SEGMENT makes the
kernel hand USO super-packets to fz-trio's TUN; every datagram must arrive intact.
"""

from __future__ import annotations

import json
import sys

import pytest

from fz_trio.datapath import kernels
from fz_trio.lab.scenario import Side, TunnelPair
from fz_trio.lab.testnet import TestNet
from tests.interop.tunnel_checks import exit_stats, nstat, transfer

pytestmark = pytest.mark.netns

TRANSFER_BYTES = 200 * 1024 * 1024

def ethtool_features(net: TestNet, side: Side) -> dict[str, str]:
    out = net.run(side.namespace, "ethtool", "-k", side.ifname).stdout
    features = {}
    for line in out.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep:
            features[name] = value.split()[0] if value.split() else ""
    return features


def offload_mode(side: Side) -> str:
    """The mode named in the `up` line: 'tso+uso', 'tso', 'csum' or 'off'."""
    for line in side.log_tail(50000).splitlines():
        if "up: mtu" in line and "TUN offload " in line:
            return line.split("TUN offload ", 1)[1].split(",")[0].strip()
    raise AssertionError("no `up` line naming the TUN offload mode:\n" + side.log_tail())


def fz_sides(pair: TunnelPair) -> list[Side]:
    return [s for s in (pair.server, pair.client) if s.implementation == "fz-trio"]


def check_offloads_on(net: TestNet, side: Side) -> str:
    mode = offload_mode(side)
    assert mode.startswith("tso"), f"TUN offload {mode}:\n{side.log_tail()}"
    features = ethtool_features(net, side)
    assert features.get("tcp-segmentation-offload") == "on", features
    assert features.get("tx-checksumming") == "on", features
    if mode == "tso+uso":
        assert features.get("tx-udp-segmentation") == "on", features
    return mode


def stop_and_check_stats(pair: TunnelPair, side: Side) -> dict[str, int]:
    """SIGTERM the fz-trio end; its offload stats, after checking it stopped cleanly with no
    drops (except packets for which no route exists; a malformed TUN read would be one), no GSO
    refusals, on the data path kernels this test process has too."""
    pair.stop_fz_trio(side)
    assert side.process is not None and side.process.returncode == 0, side.log_tail()
    stats = exit_stats(side)
    drops = stats["protocol"]["drops"]
    assert set(drops) <= {"no_route"}, drops  # type: ignore[arg-type]
    io, datapath, tun = stats["io"], stats["datapath"], stats["tun"]
    assert isinstance(io, dict) and isinstance(datapath, dict) and isinstance(tun, dict), stats
    assert datapath["kernels"] == kernels.IMPLEMENTATION, datapath
    assert io["tun_gso_writes_rejected"] == 0 and tun["coalescing"] is True, (io, tun)
    assert not io["errors"], io
    return io | datapath  # type: ignore[no-any-return]


TCP_CASES = [
    pytest.param("wireguard-go", "fz-trio", id="fz-client-vs-wggo-server"),
    pytest.param("fz-trio", "wireguard-go", id="wggo-client-vs-fz-server"),
    pytest.param("fz-trio", "fz-trio", id="fz-vs-fz"),
]


@pytest.mark.parametrize("server_impl, client_impl", TCP_CASES)
def test_200mb_tcp_both_directions_with_offloads(testnet: TestNet, server_impl: str,
                                                 client_impl: str) -> None:
    net = testnet
    pair = TunnelPair(net, server_impl=server_impl, client_impl=client_impl)  # type: ignore[arg-type]
    pair.start()
    for side in fz_sides(pair):
        check_offloads_on(net, side)
    sent, received = transfer(net, to_server=True, port=5301, size=TRANSFER_BYTES)
    assert sent == received and sent.endswith(f" {TRANSFER_BYTES}"), (sent, received)
    sent, received = transfer(net, to_server=False, port=5302, size=TRANSFER_BYTES)
    assert sent == received and sent.endswith(f" {TRANSFER_BYTES}"), (sent, received)
    for side in fz_sides(pair):
        offload = stop_and_check_stats(pair, side)
        # Each fz-trio end sent 200 MB (TSO super-packets read and split) and received 200 MB
        # (decrypted segments coalesced into super-packets written to TUN).
        assert offload["super_packets_read"] > 0, (side.ifname, offload)
        assert offload["segments_from_super_packets"] > offload["super_packets_read"], offload
        assert offload["tun_super_packets_written"] > 0, (side.ifname, offload)


def test_no_offload_turns_it_all_off(testnet: TestNet) -> None:
    net = testnet
    pair = TunnelPair(net, server_impl="wireguard-go", client_impl="fz-trio",
                      extra_args=["--no-offload"])
    pair.start()
    side = pair.client
    assert offload_mode(side) == "off"
    assert "TUN offload off" in side.log_tail(50000)
    features = ethtool_features(net, side)
    assert features.get("tcp-segmentation-offload") == "off", features
    sent, received = transfer(net, to_server=True, port=5303, size=20 * 1024 * 1024)
    assert sent == received, (sent, received)
    pair.stop_fz_trio(side)
    stats = exit_stats(side)
    assert stats["tun"]["offload"] == "off", stats  # type: ignore[index]
    assert set(stats["protocol"]["drops"]) <= {"no_route"}, stats  # type: ignore[arg-type]


# Runs in a namespace. "receive": bind host:port, print "ready", then read datagrams until all
# expected ones arrived (or 5 s of silence) and print a JSON verdict. "send": send the schedule
# with UDP_SEGMENT, so one sendmsg carries many datagrams as one USO super-packet.
_UDP_PEER = r"""
import hashlib, json, socket, struct, sys, time
SOL_UDP, UDP_SEGMENT = 17, 103
role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
v6 = ":" in host
family = socket.AF_INET6 if v6 else socket.AF_INET
MAX_SEG = 1420 - (48 if v6 else 28)  # the tunnel MTU minus IP and UDP headers
SIZES = [MAX_SEG, 1200, 1000, 537, 100, 1]

def body(index, length):
    seed = hashlib.sha256(index.to_bytes(4, "big")).digest()
    pattern = seed * (length // 32 + 1)
    return struct.pack("!IH", index, length) + pattern[:length - 6]

def schedule():
    # (segment size, [datagram lengths]) for each sendmsg.
    out = []
    for j in range(240):
        size = SIZES[j % len(SIZES)]
        count = 1 + (j * 7) % 48
        count = min(count, 65000 // max(size, 6))
        lengths = [max(size, 6)] * count
        if j % 3 == 0:
            lengths[-1] = max(6, size // 2 + 1)
        out.append((max(size, 6), lengths))
    return out

if role == "send":
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect((host, port))
    index = 0
    for size, lengths in schedule():
        data = b"".join(body(index + i, n) for i, n in enumerate(lengths))
        index += len(lengths)
        sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))])
        time.sleep(0.003)
    print(index, flush=True)
else:
    expected = sum(len(lengths) for _, lengths in schedule())
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    sock.bind((host, port))
    print("ready", flush=True)
    sock.settimeout(5)
    seen, bad, dups = set(), 0, 0
    while len(seen) < expected:
        try:
            data = sock.recv(65535)
        except socket.timeout:
            break
        if len(data) < 6:
            bad += 1
            continue
        index, length = struct.unpack_from("!IH", data)
        if len(data) != length or data != body(index, length):
            bad += 1
        elif index in seen:
            dups += 1
        else:
            seen.add(index)
    missing = sorted(set(range(expected)) - seen)
    print(json.dumps({"expected": expected, "received": len(seen), "bad": bad, "dups": dups,
                      "missing": missing[:20]}), flush=True)
"""


# What the receiving host's kernel drops when our test receiver falls behind (a socket buffer
# full): not the tunnel's loss, and counted, so the tests can tell the two apart.
RECEIVER_DROPS = ("UdpRcvbufErrors", "Udp6RcvbufErrors")


def udp_segment_run(net: TestNet, host: str, port: int) -> tuple[int, dict[str, object]]:
    """Datagrams sent from B with UDP_SEGMENT to `host`:`port` in A; (how many were sent,
    what the receiver saw, plus `receiver_drops`: those A's kernel dropped at its socket)."""
    before = sum(nstat(net, net.ns_a, *RECEIVER_DROPS).values())
    script = net.tmpdir / "offload_udp.py"
    script.write_text(_UDP_PEER)
    receiver = net.popen(net.ns_a, sys.executable, str(script), "receive", host, str(port),
                         stdout=-1, stderr=-1, text=True)
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    sender = net.run(net.ns_b, sys.executable, str(script), "send", host, str(port), timeout=60)
    out, err = receiver.communicate(timeout=60)
    assert receiver.returncode == 0, err
    verdict = json.loads(out)
    verdict["receiver_drops"] = sum(nstat(net, net.ns_a, *RECEIVER_DROPS).values()) - before
    return int(sender.stdout.strip()), verdict


@pytest.mark.parametrize("server_impl", ["fz-trio", "wireguard-go"])
def test_udp_segment_datagrams_arrive_intact(testnet: TestNet, server_impl: str) -> None:
    """A sender in B uses UDP_SEGMENT: the kernel gives the fz-trio TUN in B USO super-packets
    (when the kernel offers USO), fz-trio splits them, and every datagram reaches A intact —
    through fz-trio's coalesced USO writes when A is fz-trio too."""
    net = testnet
    pair = TunnelPair(net, server_impl=server_impl, client_impl="fz-trio")  # type: ignore[arg-type]
    pair.start()
    modes = {side.ifname: check_offloads_on(net, side) for side in fz_sides(pair)}
    for host, port in ((net.tunnel_a4, 5311), (net.tunnel_a6, 5312)):
        sent, verdict = udp_segment_run(net, host, port)
        assert verdict["expected"] == sent, verdict
        assert verdict["bad"] == 0 and verdict["dups"] == 0, verdict
        # Every datagram got through the tunnel: the receiver has it, or A's kernel counted it
        # dropped at the receiver's full socket (a loaded machine; the tunnel is past by then).
        assert verdict["received"] + verdict["receiver_drops"] == sent, verdict
    client = stop_and_check_stats(pair, pair.client)
    if modes[pair.client.ifname] == "tso+uso":
        assert client["super_packets_read"] > 0, client  # USO super-packets from the sender
        assert client["segments_from_super_packets"] > client["super_packets_read"], client
    if server_impl == "fz-trio":
        server = stop_and_check_stats(pair, pair.server)
        if modes[pair.server.ifname] == "tso+uso":
            assert server["tun_super_packets_written"] > 0, server  # coalesced USO writes
