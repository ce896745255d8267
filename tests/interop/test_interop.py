"""fz-trio against real WireGuard peers (wireguard-go) and against itself, in network namespaces.

Each case builds the test network, starts both ends as real processes (`python -m fz_trio up`
and `wireguard-go`), and checks the handshake, ping over IPv4 and IPv6 inside the tunnel, and a
50 MB TCP transfer in each direction whose SHA-256 must match.
"""

from __future__ import annotations

import time

import pytest

from fz_trio.lab.scenario import TunnelPair
from fz_trio.lab.testnet import TestNet
from tests.interop.tunnel_checks import transfer

pytestmark = pytest.mark.netns

CASES = [
    pytest.param("wireguard-go", "fz-trio", False, id="fz-client-vs-wggo-server"),
    pytest.param("wireguard-go", "fz-trio", True, id="fz-client-vs-wggo-server-psk"),
    pytest.param("fz-trio", "wireguard-go", False, id="wggo-client-vs-fz-server"),
    pytest.param("fz-trio", "wireguard-go", True, id="wggo-client-vs-fz-server-psk"),
    pytest.param("fz-trio", "fz-trio", False, id="fz-vs-fz"),
    pytest.param("fz-trio", "fz-trio", True, id="fz-vs-fz-psk"),
]


def test_inline_tun_io_against_wireguard_go(testnet: TestNet) -> None:
    pair = TunnelPair(testnet, server_impl="wireguard-go", client_impl="fz-trio",
                      extra_args=["--tun-io", "inline", "--tun-queues", "2"])
    pair.start()
    pair.ping(testnet.ns_b, testnet.tunnel_a6)
    sent, received = transfer(testnet, to_server=True, port=5001)
    assert sent == received
    sent, received = transfer(testnet, to_server=False, port=5002)
    assert sent == received


@pytest.mark.parametrize("server_impl, client_impl, use_psk", CASES)
def test_tunnel_interop(testnet: TestNet, server_impl: str, client_impl: str,
                        use_psk: bool) -> None:
    pair = TunnelPair(testnet, server_impl=server_impl, client_impl=client_impl,  # type: ignore[arg-type]
                      use_psk=use_psk)
    pair.start()
    net = testnet
    pair.ping(net.ns_b, net.tunnel_a4)
    pair.ping(net.ns_b, net.tunnel_a6)
    pair.ping(net.ns_a, net.tunnel_b4)
    pair.ping(net.ns_a, net.tunnel_b6)
    sent, received = transfer(net, to_server=True, port=5001)
    assert sent == received
    sent, received = transfer(net, to_server=False, port=5002)
    assert sent == received
    for side in (pair.server, pair.client):
        assert side.process is not None and side.process.poll() is None, side.log_tail()


def test_ipv6_underlay(testnet: TestNet) -> None:
    pair = TunnelPair(testnet, server_impl="wireguard-go", client_impl="fz-trio",
                      ipv6_underlay=True)
    pair.start()
    pair.ping(testnet.ns_b, testnet.tunnel_a4)
    pair.ping(testnet.ns_b, testnet.tunnel_a6)
    shown = testnet.run(testnet.ns_a, "wg", "show", pair.server.ifname, "endpoints").stdout
    assert f"[{testnet.underlay6_b}]:" in shown
    # `fz-trio up CONFIG` serves UAPI too: wg reads the client's side.
    ours = testnet.run(testnet.ns_b, "wg", "show", pair.client.ifname, "endpoints").stdout
    assert f"[{testnet.underlay6_a}]:" in ours, ours


def test_shutdown_is_fast_and_clean(testnet: TestNet) -> None:
    pair = TunnelPair(testnet, server_impl="fz-trio", client_impl="fz-trio")
    pair.start()
    # Traffic in flight while we stop: shutdown must not wait for it.
    flood = testnet.popen(testnet.ns_b, "ping", "-f", "-q", "-w", "10", testnet.tunnel_a4,
                          stdout=-3, stderr=-3)
    time.sleep(0.5)
    elapsed = pair.stop_fz_trio(pair.client)
    flood.kill()
    assert pair.client.process is not None
    assert pair.client.process.returncode == 0, pair.client.log_tail()
    assert elapsed < 1.0, f"shutdown took {elapsed:.2f}s"
    assert not testnet.link_exists(testnet.ns_b, pair.client.ifname)
    routes = testnet.run(testnet.ns_b, "ip", "-4", "route", "show").stdout
    assert "100.64." not in routes, routes
    addrs = testnet.run(testnet.ns_b, "ip", "-6", "addr", "show").stdout
    assert "fd00:64::" not in addrs, addrs


def test_full_tunnel_like_wg_quick(testnet: TestNet) -> None:
    """AllowedIPs 0.0.0.0/0, ::/0: the default route goes through the tunnel (table 51820), our
    own fwmarked UDP packets do not, and more specific main-table routes still win, as in wg-quick.
    Only `ip route get` is asked about the off-net addresses: nothing is sent to them."""
    pair = TunnelPair(testnet, server_impl="wireguard-go", client_impl="fz-trio", full_tunnel=True)
    pair.start()
    ns_b, dev = testnet.ns_b, f"dev {pair.client.ifname}"
    assert dev in testnet.run(ns_b, "ip", "route", "get", "100.127.0.1").stdout
    assert dev in testnet.run(ns_b, "ip", "-6", "route", "get", "fd00:99::1").stdout
    marked = testnet.run(ns_b, "ip", "route", "get", "100.127.0.1", "mark", "51820",
                         check=False).stdout
    assert dev not in marked, marked
    pair.ping(ns_b, testnet.tunnel_a4)
    pair.ping(ns_b, testnet.tunnel_a6)
    shown = testnet.run(testnet.ns_a, "wg", "show", pair.server.ifname, "transfer").stdout.split()
    assert int(shown[1]) > 0 and int(shown[2]) > 0, shown
    fwmark = testnet.run(ns_b, "wg", "show", pair.client.ifname, "fwmark").stdout.strip()
    assert fwmark == "0xca6c", fwmark  # what the full tunnel marks its sockets with, over UAPI
    pair.stop_fz_trio(pair.client)
    rules = testnet.run(ns_b, "ip", "rule", "show").stdout
    assert "51820" not in rules, rules
    assert dev not in testnet.run(ns_b, "ip", "route", "get", "100.127.0.1", check=False).stdout
