"""The log lines a person is given about each peer, from real tunnels on the simulated network."""

from __future__ import annotations

from fz_trio.lab.sim import SimNetwork, SimNode
from fz_trio.shell.peer_watch import PeerEvent, PeerWatch, peer_name, status_line


def _watch(net: SimNetwork, node: SimNode, seconds: float) -> list[PeerEvent]:
    """Observe `node`'s peers once a simulated second, as the interface does."""
    watch = PeerWatch("wg0", node.public_key)
    watch.observe(node.tunnel.peers, net.now)
    events: list[PeerEvent] = []
    for _ in range(int(seconds)):
        net.run_for(1)
        events += watch.observe(node.tunnel.peers, net.now)
    return events


def test_a_first_handshake_says_the_peer_is_up() -> None:
    net = SimNetwork(seed=3)
    alice, bob = net.add_node("alice"), net.add_node("bob")
    net.connect(alice, bob)
    bob.answer_pings = True
    watch = PeerWatch("wg0", alice.public_key)
    watch.observe(alice.tunnel.peers, net.now)
    assert net.ping(alice, bob) is not None
    events = watch.observe(alice.tunnel.peers, net.now)
    assert [e.level for e in events] == ["info"]
    assert f"peer {peer_name(bob.public_key)}: handshake completed, peer up" in events[0].message
    assert status_line(alice.tunnel.peers, net.wall(alice)) == (
        "1/1 peer up, latest handshake 0 s ago")


def test_an_unanswered_handshake_is_explained_once() -> None:
    net = SimNetwork(seed=4)
    alice, bob = net.add_node("alice"), net.add_node("bob")
    net.connect(alice, bob)
    net.partition(alice, bob)  # a wrong port or a firewall looks the same from here
    net.ping(alice, bob, timeout=1)
    events = _watch(net, alice, 60)
    warnings = [e for e in events if e.level == "warning"]
    assert len(warnings) == 1, events
    text = warnings[0].message
    assert "handshake not completing" in text and "Endpoint address or port" in text
    assert "198.18." in text and "blocked" in text
    assert status_line(alice.tunnel.peers, net.wall(alice)) == "0/1 peer up, no handshake yet"


def test_roaming_and_expiry_are_told() -> None:
    net = SimNetwork(seed=5)
    alice, bob = net.add_node("alice"), net.add_node("bob")
    net.connect(alice, bob)
    bob.answer_pings = True
    alice.answer_pings = True
    watch = PeerWatch("wg0", bob.public_key)
    watch.observe(bob.tunnel.peers, net.now)
    assert net.ping(alice, bob) is not None
    watch.observe(bob.tunnel.peers, net.now)
    net.roam(alice)
    assert net.ping(alice, bob) is not None
    roamed = watch.observe(bob.tunnel.peers, net.now)
    assert any("endpoint changed from 198.18." in e.message for e in roamed), roamed
    net.partition(alice, bob)
    events = _watch(net, bob, 600)
    assert any("session expired" in e.message for e in events), events
