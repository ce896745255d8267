"""The test network itself: underlay reachability, a wireguard-go pair, and leak-free teardown."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess

import pytest

from fz_trio.core import generate_private_key, public_key_of
from fz_trio.lab.testnet import (
    WG_SOCKET_DIR,
    TestNet,
    TestNetError,
    WgPeer,
    list_namespaces,
    wait_for,
)


def test_keys_match_wg_public_key_of() -> None:
    priv = generate_private_key()
    assert len(priv) == 32
    assert priv[0] & 7 == 0 and priv[31] & 0x80 == 0 and priv[31] & 0x40  # clamped
    if shutil.which("wg") is None:
        pytest.skip("needs wg(8) to cross-check")
    out = subprocess.run(
        ["wg", "pubkey"], input=base64.b64encode(priv) + b"\n", capture_output=True, check=True
    ).stdout
    assert base64.b64decode(out.strip()) == public_key_of(priv)


def test_wait_for() -> None:
    calls = iter([0, 0, 7])
    assert wait_for(lambda: next(calls), 5, interval=0.001) == 7
    with pytest.raises(TimeoutError, match="the moon"):
        wait_for(lambda: False, 0.05, interval=0.01, what="the moon")


@pytest.mark.netns
def test_underlay_ping_v4_v6(testnet: TestNet) -> None:
    testnet.run(testnet.ns_b, "ping", "-c", "1", "-W", "2", testnet.underlay_a)
    testnet.run(testnet.ns_a, "ping", "-c", "1", "-W", "2", testnet.underlay_b)
    testnet.run(testnet.ns_b, "ping", "-6", "-c", "1", "-W", "2", testnet.underlay6_a)
    testnet.run(testnet.ns_b, "ping", "-c", "1", "-W", "2", "127.0.0.1")  # lo is up


@pytest.mark.netns
def test_only_own_namespaces(testnet: TestNet) -> None:
    other = TestNet()  # never created
    with pytest.raises(TestNetError, match="does not belong"):
        testnet.run(other.ns_a, "true")
    with pytest.raises(TestNetError, match="exit 1"):
        testnet.run(testnet.ns_a, "false")
    assert testnet.run(testnet.ns_a, "false", check=False).returncode == 1


@pytest.mark.netns
def test_wireguard_go_pair_and_teardown(needs_root_netns: None) -> None:
    net = TestNet()
    try:
        net.create()
        ka, kb = generate_private_key(), generate_private_key()
        wga, wgb = f"wga{net.suffix}", f"wgb{net.suffix}"
        pa = net.start_wireguard_go(
            net.ns_a,
            wga,
            private_key=ka,
            listen_port=51820,
            peers=[WgPeer(public_key_of(kb), [f"{net.tunnel_b4}/32", f"{net.tunnel_b6}/128"])],
            addresses=[f"{net.tunnel_a4}/24", f"{net.tunnel_a6}/64"],
        )
        pb = net.start_wireguard_go(
            net.ns_b,
            wgb,
            private_key=kb,
            listen_port=None,
            peers=[
                WgPeer(
                    public_key_of(ka),
                    ["100.64.0.0/24", "fd00:64::/64"],
                    endpoint=f"{net.underlay_a}:51820",
                    persistent_keepalive=25,
                    preshared_key=None,
                )
            ],
            addresses=[f"{net.tunnel_b4}/24", f"{net.tunnel_b6}/64"],
        )
        assert (WG_SOCKET_DIR / f"{wga}.sock").exists()

        net.run(net.ns_b, "ping", "-c", "3", "-i", "0.2", "-W", "3", net.tunnel_a4)
        net.run(net.ns_b, "ping", "-6", "-c", "1", "-W", "3", net.tunnel_a6)
        dump = net.run(net.ns_a, "wg", "show", wga, "dump").stdout.splitlines()
        peer = dump[1].split("\t")
        assert peer[0] == base64.b64encode(public_key_of(kb)).decode()
        assert peer[2].startswith(f"{net.underlay_b}:")  # learnt from the handshake over the veth
        assert int(peer[4]) > 0  # latest handshake

        # A process the TestNet did not start must not survive the namespace either.
        stray = subprocess.Popen(["ip", "netns", "exec", net.ns_a, "sleep", "600"])
    finally:
        net.destroy()
    net.destroy()  # idempotent

    assert pa.poll() is not None and pb.poll() is not None
    assert stray.wait(5) is not None
    assert not {net.ns_a, net.ns_b} & list_namespaces()
    assert not (WG_SOCKET_DIR / f"{wga}.sock").exists()
    assert not (WG_SOCKET_DIR / f"{wgb}.sock").exists()


@pytest.mark.netns
def test_wireguard_go_interface_names_must_be_unique(testnet: TestNet) -> None:
    name = f"wgx{testnet.suffix}"
    testnet.start_wireguard_go(
        testnet.ns_a, name, private_key=generate_private_key(), listen_port=None, peers=[],
            addresses=[]
    )
    with pytest.raises(TestNetError, match="unique"):
        testnet.start_wireguard_go(
            testnet.ns_b, name, private_key=generate_private_key(), listen_port=None, peers=[],
            addresses=[]
        )


@pytest.mark.netns
def test_failed_create_leaves_nothing(needs_root_netns: None) -> None:
    net = TestNet()
    net.veth_b = "x" * 20  # an invalid interface name makes create() fail half way
    with pytest.raises(TestNetError):
        net.create()
    assert not {net.ns_a, net.ns_b} & list_namespaces()


@pytest.mark.netns
def test_stale_wireguard_socket_is_replaced(testnet: TestNet) -> None:
    """A control socket left behind by a SIGKILLed wireguard-go must not block the name."""
    name = f"wgs{testnet.suffix}"
    sock = WG_SOCKET_DIR / f"{name}.sock"
    WG_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(sock))  # bound, never listening: connect() is refused, like a dead daemon's
    try:
        testnet.start_wireguard_go(
            testnet.ns_a, name, private_key=generate_private_key(), listen_port=None, peers=[],
            addresses=[]
        )
        assert testnet.run(testnet.ns_a, "wg", "show", name).returncode == 0
    finally:
        testnet.destroy()
    assert not sock.exists()
