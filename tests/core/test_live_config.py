"""Configuration changed on a running tunnel (what UAPI `set` does): keys, keepalives, AllowedIPs,
endpoints — and the per-peer byte counters `wg show transfer` reports, counted as wireguard-go
and the kernel count them.

All on the simulated network, with the protocol's real timers.
"""

from __future__ import annotations

import pytest

from fz_trio.config import Config
from fz_trio.core import TYPE_TRANSPORT, public_key_of
from fz_trio.core.messages import TYPE_INITIATION
from fz_trio.core.tunnel import TunnelError, check_peer_key
from fz_trio.datapath import Device, icmp_echo, udp_packet
from fz_trio.lab.sim import Link, SimNetwork, SimNode, det_key, det_random

A_ADDR = ("198.18.0.1", 51820)
B_ADDR = ("198.18.0.2", 51820)
C_ADDR = ("198.18.0.3", 51820)


def pair(*, a_keepalive: float | None = None) -> tuple[SimNetwork, SimNode, SimNode]:
    net = SimNetwork(link=Link(latency=0.01))
    a = net.add_node("a", address=A_ADDR)
    b = net.add_node("b", address=B_ADDR)
    a.add_peer(b, allowed_ips=["10.0.0.2/32"], persistent_keepalive=a_keepalive)
    b.add_peer(a, allowed_ips=["10.0.0.1/32"], endpoint=False)
    return net, a, b


def ab(body: bytes = b"hi") -> bytes:
    return udp_packet("10.0.0.1", "10.0.0.2", body)


def ba(body: bytes = b"hi") -> bytes:
    return udp_packet("10.0.0.2", "10.0.0.1", body)


def test_transfer_counts_what_the_kernel_selftest_expects() -> None:
    """The kernel's netns.sh: ten 84-byte pings from the initiator, then `wg show transfer` is
    rx 1372 (response 92 + 10 × 128) and tx 1428 (initiation 148 + 10 × 128) on the initiator,
    and the mirror image on the responder."""
    net = SimNetwork(link=Link(latency=0.01))
    a = net.add_node("a", address=A_ADDR)
    b = net.add_node("b", address=B_ADDR)
    a.add_peer(b)  # AllowedIPs: b's tunnel prefixes
    b.add_peer(a, endpoint=False)
    b.answer_pings = True
    for seq in range(10):
        net.send(a, icmp_echo(a.tunnel_v4, b.tunnel_v4, 7, seq, bytes(56)))
        net.run_for(0.1)
    a_view, b_view = a.peer(b), b.peer(a)
    assert (a_view.rx_bytes, a_view.tx_bytes) == (92 + 10 * 128, 148 + 10 * 128)
    assert (b_view.tx_bytes, b_view.rx_bytes) == (92 + 10 * 128, 148 + 10 * 128)


def test_handshake_retransmits_count_as_sent() -> None:
    net, a, b = pair()
    net.partition(a, b)
    net.send(a, ab())
    net.run_for(6.0)  # one retransmit after REKEY_TIMEOUT (+ jitter)
    initiations = [d for d in net.history if d.sender == "a" and d.data[0] == TYPE_INITIATION]
    assert len(initiations) == 2
    assert a.peer(b).tx_bytes == 2 * 148


def test_new_private_key_voids_sessions_and_handshakes_again() -> None:
    net, a, b = pair()
    net.send(a, ab(b"first"))
    net.run_for(1.0)
    assert b.received
    old_public, new_key = a.public_key, det_key("a-new")
    a.tunnel.set_private_key(new_key)
    a.private_key = new_key
    # B learns the new key (as its operator would with `wg set`); its old view of A goes.
    b.remove_peer(old_public)
    b.add_peer(a, allowed_ips=["10.0.0.1/32"], endpoint=False)
    b.received.clear()
    before = len([d for d in net.history if d.sender == "a" and d.data[0] == TYPE_INITIATION])
    net.send(a, ab(b"second"))
    net.run_for(1.0)
    after = len([d for d in net.history if d.sender == "a" and d.data[0] == TYPE_INITIATION])
    assert after == before + 1  # the old session may not send: a new handshake at once
    assert list(b.received) == [ab(b"second")]


def test_same_private_key_again_keeps_sessions() -> None:
    net, a, b = pair()
    net.send(a, ab())
    net.run_for(1.0)
    session = a.peer(b).current
    a.tunnel.set_private_key(a.private_key)
    assert a.peer(b).current is session
    assert session is not None and session.send_counter < 2**60


def test_private_key_of_a_peer_removes_that_peer() -> None:
    net, a, b = pair()
    a.tunnel.set_private_key(b.private_key)
    assert b.public_key not in a.tunnel.peers
    assert a.tunnel.public_key == b.public_key


def test_no_private_key_means_no_handshakes_counted() -> None:
    device = Device(None, random_bytes=det_random("x"))
    assert device.public_key is None
    peer_key = public_key_of(det_key("p"))
    device.add_peer(peer_key, allowed_ips=["10.0.0.2/32"], endpoint=B_ADDR)
    device.send_packet(ab(), 1.0, 1000.0)
    assert device.take_transmits() == []
    assert device.counters.drops["no_private_key"] == 1
    device.set_private_key(det_key("a"))
    device.send_packet(ab(), 2.0, 1001.0)
    assert [d[0][0] for d in device.take_transmits()] == [TYPE_INITIATION]
    device.set_private_key(None)
    assert device.public_key is None and device.private_key is None


def test_keepalive_turned_on_live_starts_a_handshake_at_once() -> None:
    net, a, b = pair()
    a.tunnel.set_persistent_keepalive(b.public_key, 25, net.now, net.wall(a))
    a.tunnel.flush_outbox()
    net.flush(a)
    net.run_for(1.0)
    assert a.peer(b).current is not None
    assert a.peer(b).persistent_keepalive == 25
    a.tunnel.set_persistent_keepalive(b.public_key, 0, net.now, net.wall(a))
    assert a.peer(b).persistent_keepalive is None
    assert a.peer(b).persistent_keepalive_at is None


def test_more_specific_allowed_ip_on_another_peer_takes_over() -> None:
    net = SimNetwork(link=Link(latency=0.01))
    hub = net.add_node("hub", address=A_ADDR)
    b = net.add_node("b", address=B_ADDR)
    c = net.add_node("c", address=C_ADDR)
    hub.add_peer(b, allowed_ips=["10.0.0.0/24"])
    hub.add_peer(c, allowed_ips=["10.0.1.0/24"])
    b.add_peer(hub, allowed_ips=["10.0.0.0/8"], endpoint=False)
    c.add_peer(hub, allowed_ips=["10.0.0.0/8"], endpoint=False)
    to_5 = udp_packet("10.0.9.1", "10.0.0.5", b"x")
    net.send(hub, to_5)
    net.run_for(1.0)
    assert list(b.received) == [to_5] and not c.received
    hub.tunnel.add_allowed_ips(c.public_key, ["10.0.0.5/32"])
    assert hub.tunnel.allowed_ips_of(c.public_key)[-1].compressed == "10.0.0.5/32"
    net.send(hub, to_5)
    net.run_for(1.0)
    assert list(c.received) == [to_5]


def test_an_identical_prefix_moves_to_the_last_peer_given_it() -> None:
    net, a, b = pair()
    c_key = public_key_of(det_key("c"))
    a.tunnel.add_peer(c_key, endpoint=C_ADDR)
    a.tunnel.add_allowed_ips(c_key, ["10.0.0.2/32"])
    assert a.tunnel.allowed_ips_of(b.public_key) == []
    assert [str(n) for n in a.tunnel.allowed_ips_of(c_key)] == ["10.0.0.2/32"]


def test_endpoint_set_live_is_used_for_the_next_handshake() -> None:
    net, a, b = pair()
    a.tunnel.set_endpoint(b.public_key, ("::ffff:198.18.0.2", 51820))
    assert a.peer(b).endpoint == B_ADDR  # one peer, one address form
    net.send(a, ab())
    net.run_for(1.0)
    assert b.received
    transport = [d for d in net.history if d.sender == "a" and d.data[0] == TYPE_TRANSPORT]
    assert transport and all(d.dst == B_ADDR for d in transport)


def test_unusable_peer_keys_are_refused() -> None:
    with pytest.raises(TunnelError):
        check_peer_key(bytes(32))  # a low-order point
    with pytest.raises(TunnelError):
        check_peer_key(b"short")
    check_peer_key(public_key_of(det_key("ok")))


def _config(*peer_blocks: str, port: int = 51820) -> Config:
    from fz_trio.config import parse_config
    from fz_trio.core import encode_key

    text = f"[Interface]\nPrivateKey = {encode_key(det_key('me'))}\nListenPort = {port}\n"
    for block in peer_blocks:
        text += "[Peer]\n" + block
    return parse_config(text)


def _peer(name: str, extra: str = "") -> str:
    from fz_trio.core import encode_key

    return (f"PublicKey = {encode_key(public_key_of(det_key(name)))}\n"
            f"AllowedIPs = 100.64.0.{ord(name[0])}/32\n{extra}")


def test_a_reload_touches_only_the_peers_whose_lines_changed() -> None:
    from fz_trio.live_config import needs_restart, reload_request

    running = _config(_peer("alice"), _peer("bob"), _peer("carol"))
    new = _config("# a comment moves every line down\n" + _peer("alice"),
                  _peer("bob", "PersistentKeepalive = 25\nEndpoint = 198.18.0.9:51820\n"),
                  _peer("dave"), port=51821)
    request = reload_request(running, new, {public_key_of(det_key("bob")): ("198.18.0.9", 51820)})
    changed = {c.public_key: c for c in request.peers}
    assert public_key_of(det_key("alice")) not in changed
    bob = changed[public_key_of(det_key("bob"))]
    assert (bob.persistent_keepalive, bob.endpoint, bob.replace_allowed_ips) == (
        25, ("198.18.0.9", 51820), True)
    assert changed[public_key_of(det_key("carol"))].remove
    assert not changed[public_key_of(det_key("dave"))].remove
    assert request.listen_port == 51821 and request.private_key is None
    assert needs_restart(running, new) == []
    assert reload_request(running, running, {}).peers == ()
