"""Cryptokey routing table: longest-prefix match over IPv4 and IPv6 prefixes."""

from __future__ import annotations

import ipaddress
from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from fz_trio.core.allowed_ips import AllowedIPs, Network


def packed(address: str) -> bytes:
    return ip_address(address).packed


def table(*entries: tuple[str, str]) -> AllowedIPs[str]:
    t: AllowedIPs[str] = AllowedIPs()
    for network, value in entries:
        t.insert(ip_network(network), value)
    return t


def test_empty_table() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    assert t.lookup(packed("10.0.0.1")) is None
    assert t.lookup(packed("::1")) is None
    assert len(t) == 0


def test_longest_prefix_wins_v4() -> None:
    t = table(("10.0.0.0/8", "a"), ("10.1.0.0/16", "b"), ("10.1.2.0/24", "c"),
              ("10.1.2.3/32", "d"))
    assert t.lookup(packed("10.1.2.3")) == "d"
    assert t.lookup(packed("10.1.2.4")) == "c"
    assert t.lookup(packed("10.1.3.4")) == "b"
    assert t.lookup(packed("10.2.3.4")) == "a"
    assert t.lookup(packed("11.0.0.0")) is None
    assert t.lookup(packed("9.255.255.255")) is None


def test_longest_prefix_wins_v6() -> None:
    t = table(("fd00::/8", "a"), ("fd00:1::/32", "b"), ("fd00:1:2::/48", "c"),
              ("fd00:1:2::3/128", "d"))
    assert t.lookup(packed("fd00:1:2::3")) == "d"
    assert t.lookup(packed("fd00:1:2::4")) == "c"
    assert t.lookup(packed("fd00:1:3::4")) == "b"
    assert t.lookup(packed("fd42::1")) == "a"
    assert t.lookup(packed("fe80::1")) is None


def test_default_routes_and_host_routes() -> None:
    t = table(("0.0.0.0/0", "v4-default"), ("::/0", "v6-default"), ("192.0.2.1/32", "host4"),
              ("2001:db8::1/128", "host6"))
    assert t.lookup(packed("192.0.2.1")) == "host4"
    assert t.lookup(packed("192.0.2.2")) == "v4-default"
    assert t.lookup(packed("0.0.0.0")) == "v4-default"
    assert t.lookup(packed("255.255.255.255")) == "v4-default"
    assert t.lookup(packed("2001:db8::1")) == "host6"
    assert t.lookup(packed("2001:db8::2")) == "v6-default"
    assert t.lookup(packed("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) == "v6-default"


def test_families_do_not_mix() -> None:
    t = table(("0.0.0.0/0", "v4"))
    assert t.lookup(packed("::")) is None
    assert t.lookup(packed("::ffff:10.0.0.1")) is None  # an IPv4-mapped address is still IPv6
    t = table(("::/0", "v6"))
    assert t.lookup(packed("0.0.0.0")) is None


def test_host_bits_beyond_the_prefix_are_ignored() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert(ip_network("10.9.8.7/16", strict=False), "x")
    assert t.lookup(packed("10.9.255.255")) == "x"
    assert t.networks_of("x") == [ip_network("10.9.0.0/16")]


def test_remove() -> None:
    t = table(("10.0.0.0/8", "a"), ("10.1.0.0/16", "b"), ("fd00::/8", "c"))
    t.remove(ip_network("10.1.0.0/16"))
    assert t.lookup(packed("10.1.2.3")) == "a"
    t.remove(ip_network("10.0.0.0/8"))
    assert t.lookup(packed("10.1.2.3")) is None
    t.remove(ip_network("10.0.0.0/8"))  # removing twice is harmless
    t.remove(ip_network("192.168.0.0/16"))  # as is removing what was never there
    assert t.lookup(packed("fd00::1")) == "c"
    assert len(t) == 1


def test_reinsert_moves_the_prefix_to_the_new_value() -> None:
    t = table(("10.0.0.0/24", "a"), ("10.0.1.0/24", "a"))
    t.insert(ip_network("10.0.0.0/24"), "b")
    assert t.lookup(packed("10.0.0.1")) == "b"
    assert t.lookup(packed("10.0.1.1")) == "a"
    assert t.networks_of("a") == [ip_network("10.0.1.0/24")]
    assert t.networks_of("b") == [ip_network("10.0.0.0/24")]
    assert len(t) == 2


def test_remove_value_removes_only_that_value() -> None:
    a, b = ["peer-a"], ["peer-b"]  # identity matters, as with Peer objects
    t: AllowedIPs[list[str]] = AllowedIPs()
    t.insert(ip_network("10.0.0.0/8"), a)
    t.insert(ip_network("10.1.0.0/16"), b)
    t.insert(ip_network("fd00::/64"), a)
    t.remove_value(a)
    assert t.lookup(packed("10.1.0.1")) is b
    assert t.lookup(packed("10.2.0.1")) is None
    assert t.lookup(packed("fd00::1")) is None
    assert [v for _, v in t] == [b]


# --- against a brute-force reference ----------------------------------------------------------


def _networks(version: int) -> st.SearchStrategy[Network]:
    bits = 32 if version == 4 else 128
    # A few base addresses, perturbed in a random number of low bits: prefixes overlap and nest
    # often, at every depth.
    base = st.sampled_from([0, 0x0A000000 << (bits - 32), 0xC0A80000 << (bits - 32),
                            (1 << bits) - 1])
    perturbation = st.integers(0, bits).flatmap(lambda k: st.integers(0, (1 << k) - 1))
    network = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return st.builds(lambda b, p, length: network((b ^ p, length), strict=False),
                     base, perturbation, st.integers(0, bits))


def _address(version: int) -> st.SearchStrategy[bytes]:
    address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return _networks(version).flatmap(
        lambda n: st.integers(int(n.network_address), int(n.broadcast_address)).map(
            lambda i: address(i).packed))


def _brute_force(entries: dict[Network, int], address: bytes) -> int | None:
    addr = ip_address(address)
    best: tuple[int, int] | None = None
    for network, value in entries.items():
        if network.version == addr.version and addr in network:
            if best is None or network.prefixlen > best[0]:
                best = (network.prefixlen, value)
    return None if best is None else best[1]


_operation = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from([4, 6]).flatmap(_networks), st.integers(0, 5)),
    st.tuples(st.just("remove"), st.integers(0, 1000), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_operation, max_size=40),
       st.lists(st.sampled_from([4, 6]).flatmap(_address), min_size=1, max_size=20))
def test_matches_brute_force(operations: list[tuple], addresses: list[bytes]) -> None:
    t: AllowedIPs[int] = AllowedIPs()
    reference: dict[Network, int] = {}
    for op, arg, value in operations:
        if op == "insert":
            t.insert(arg, value)
            reference[arg] = value
        elif reference:
            victim = sorted(reference, key=str)[arg % len(reference)]
            t.remove(victim)
            del reference[victim]
    assert len(t) == len(reference)
    assert dict(iter(t)) == reference
    # Probe the given addresses and every network's own first and last address.
    probes = list(addresses)
    for network in reference:
        probes += [network.network_address.packed, network.broadcast_address.packed]
    for address in probes:
        assert t.lookup(address) == _brute_force(reference, address), ip_address(address)
