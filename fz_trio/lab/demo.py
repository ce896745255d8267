"""`fz-trio demo`: a live tunnel between fz-trio and a peer, in two throw-away namespaces."""

from __future__ import annotations

import shutil

from fz_trio.lab.iperf import iperf3
from fz_trio.lab.scenario import TunnelPair, implementation
from fz_trio.lab.testnet import TestNet, netns_unavailable_reason


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(*, seconds: int = 3, peer: str = "auto") -> int:
    reason = netns_unavailable_reason(need_wireguard=False)
    if reason:
        _say(f"fz-trio demo: cannot build the test network: {reason}")
        return 1
    if peer == "auto":
        peer = "wireguard-go" if shutil.which("wireguard-go") and shutil.which("wg") else "fz-trio"
    server = implementation(peer)
    with TestNet() as net:
        _say(f"1. Built namespaces {net.ns_a} and {net.ns_b}, joined by a veth pair "
             f"({net.underlay_a} <-> {net.underlay_b}).")
        pair = TunnelPair(net, server_impl=server, client_impl="fz-trio")
        pair.start()
        _say(f"2. Started {peer} in {net.ns_a} (tunnel {net.tunnel_a4}, {net.tunnel_a6}) and "
             f"fz-trio in {net.ns_b} (tunnel {net.tunnel_b4}, {net.tunnel_b6}); "
             "they completed a WireGuard handshake.")
        for address in (net.tunnel_a4, net.tunnel_a6):
            result = net.run(net.ns_b, "ping", "-c", "3", "-i", "0.2", address, check=False)
            summary = [line for line in result.stdout.splitlines()
                       if "packet loss" in line or "rtt" in line]
            _say(f"3. ping {address} through the tunnel: " + "; ".join(summary))
            if result.returncode != 0:
                _say("   ping failed; fz-trio's log:\n" + pair.client.log_tail())
                return 1
        if shutil.which("iperf3"):
            for reverse in (False, True):
                mbits = iperf3(net, seconds=seconds, reverse=reverse).mbits
                direction = f"{peer} -> fz-trio" if reverse else f"fz-trio -> {peer}"
                _say(f"4. iperf3 TCP for {seconds} s, {direction}: {mbits:.0f} Mbit/s")
        else:
            _say("4. iperf3 is not installed; skipped the throughput test "
                 "(apt-get install -y iperf3).")
        _say("5. Stopping the tunnel and removing the namespaces.")
    _say("Done: nothing is left behind.")
    return 0
