"""A UAPI `set` applied to a live Tunnel (`fz_trio.live_config`): whole or not at all, with
wireguard-go's semantics, for random requests too."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fz_trio import live_config
from fz_trio.core import Tunnel, public_key_of
from fz_trio.lab.sim import det_key, det_random
from fz_trio.uapi import EINVAL, PeerChange, SetRequest, UapiError, parse_request

LOW_ORDER = bytes(32)  # the identity point: X25519 with it gives all zeros
KEYS = [public_key_of(det_key(f"peer{i}")) for i in range(4)]
OWN = det_key("own")


def tunnel() -> Tunnel:
    t = Tunnel(OWN, random_bytes=det_random("own"))
    t.add_peer(KEYS[0], allowed_ips=["100.64.0.0/24"], endpoint=("198.18.0.2", 51820))
    t.add_peer(KEYS[1], allowed_ips=["100.64.1.0/24"], persistent_keepalive=25)
    return t


def view(t: Tunnel) -> object:
    """Everything a set can change, comparable."""
    return (t.private_key, {
        key: (peer.preshared_key, peer.endpoint, peer.persistent_keepalive,
              sorted(map(str, t.allowed_ips_of(key))))
        for key, peer in t.peers.items()})


def test_a_wg_setconf_shaped_request_replaces_everything() -> None:
    t = tunnel()
    request = parse_request(
        b"set=1\nprivate_key=" + det_key("new").hex().encode() + b"\nlisten_port=51820\n"
        b"replace_peers=true\npublic_key=" + KEYS[2].hex().encode() + b"\n"
        b"preshared_key=" + bytes(range(32)).hex().encode() + b"\nreplace_allowed_ips=true\n"
        b"allowed_ip=100.64.2.1/24\nallowed_ip=fd00::/64\nendpoint=[fd00:18::2]:51820\n"
        b"persistent_keepalive_interval=15\n\n")
    assert isinstance(request, SetRequest)
    live_config.apply_to_tunnel(t, request, 1.0, 1000.0)
    assert list(t.peers) == [KEYS[2]]
    peer = t.peers[KEYS[2]]
    assert (peer.endpoint, peer.persistent_keepalive) == (("fd00:18::2", 51820), 15)
    assert peer.preshared_key == bytes(range(32))
    assert sorted(map(str, t.allowed_ips_of(KEYS[2]))) == ["100.64.2.0/24", "fd00::/64"]
    assert t.private_key == det_key("new")


def test_a_bad_peer_key_anywhere_changes_nothing() -> None:
    t = tunnel()
    before = view(t)
    request = SetRequest(private_key=det_key("other"), replace_peers=True, peers=(
        PeerChange(KEYS[2], allowed_ips=(ipaddress.ip_network("100.64.2.0/24"),)),
        PeerChange(LOW_ORDER)))
    with pytest.raises(UapiError) as e:
        live_config.apply_to_tunnel(t, request, 1.0, 1000.0)
    assert e.value.errno == EINVAL
    assert view(t) == before


def test_wireguard_go_block_rules() -> None:
    t = tunnel()
    own_public = public_key_of(OWN)
    request = SetRequest(peers=(
        PeerChange(own_public, persistent_keepalive=5),  # our own key: ignored
        PeerChange(KEYS[3], update_only=True, persistent_keepalive=5),  # unknown: left alone
        PeerChange(KEYS[1], remove=True),
        PeerChange(KEYS[0], replace_allowed_ips=True,
                   allowed_ips=(ipaddress.ip_network("100.64.1.0/24"),)),
        PeerChange(KEYS[0], preshared_key=bytes(32), persistent_keepalive=0),
    ))
    live_config.apply_to_tunnel(t, request, 1.0, 1000.0)
    assert list(t.peers) == [KEYS[0]]
    assert [str(n) for n in t.allowed_ips_of(KEYS[0])] == ["100.64.1.0/24"]
    assert t.peers[KEYS[0]].persistent_keepalive is None


def test_removing_the_private_key_and_no_key_peers_checked_against_none() -> None:
    t = tunnel()
    live_config.apply_to_tunnel(t, SetRequest(private_key=bytes(32)), 1.0, 1000.0)
    assert t.private_key is None and t.public_key is None
    # With no key of our own, a peer with any usable key may be added.
    live_config.apply_to_tunnel(t, SetRequest(peers=(PeerChange(public_key_of(OWN)),)),
                                2.0, 1001.0)
    assert public_key_of(OWN) in t.peers


_keys = st.sampled_from(KEYS + [LOW_ORDER, public_key_of(OWN)])
_networks = st.sampled_from([ipaddress.ip_network(n) for n in
                             ("100.64.0.0/24", "100.64.1.0/24", "100.64.0.7/32", "fd00::/64",
                              "0.0.0.0/0")])
_changes = st.builds(
    PeerChange, public_key=_keys,
    update_only=st.booleans(),
    preshared_key=st.none() | st.just(bytes(32)) | st.just(bytes(range(32))),
    endpoint=st.none() | st.just(("198.18.0.9", 4000)),
    persistent_keepalive=st.none() | st.integers(0, 65535),
    replace_allowed_ips=st.booleans(),
    allowed_ips=st.lists(_networks, max_size=3).map(tuple)) | st.builds(
    PeerChange, public_key=_keys, remove=st.just(True))
_requests = st.builds(
    SetRequest, private_key=st.none() | st.just(bytes(32)) | st.sampled_from(
        [det_key("k1"), det_key("peer0")]),
    replace_peers=st.booleans(), peers=st.lists(_changes, max_size=5).map(tuple))


@settings(max_examples=300, deadline=None)
@given(_requests)
def test_random_sets_apply_whole_or_not_at_all(request: SetRequest) -> None:
    t = tunnel()
    before = view(t)
    try:
        live_config.check(t, request)
    except UapiError:
        with pytest.raises(UapiError):
            live_config.apply_to_tunnel(t, request, 1.0, 1000.0)
        assert view(t) == before
        return
    live_config.apply_to_tunnel(t, request, 1.0, 1000.0)
    own = t.public_key
    assert own not in t.peers
    # Each key's last block decides what is there: a removal, or its values.
    last: dict[bytes, PeerChange] = {}
    for change in request.peers:
        last[change.public_key] = change
    for key, change in last.items():
        if key == own:
            continue
        if change.remove:
            assert key not in t.peers
        elif key in t.peers:
            peer = t.peers[key]
            if change.endpoint is not None:
                assert peer.endpoint == change.endpoint
            if change.persistent_keepalive is not None:
                assert peer.persistent_keepalive == (change.persistent_keepalive or None)
        else:
            assert change.update_only
    # Cryptokey routing stays a function: each prefix has one owner among the peers.
    owners = [n for key in t.peers for n in t.allowed_ips_of(key)]
    assert len(owners) == len(set(owners))
