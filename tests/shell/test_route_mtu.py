"""wg-quick's automatic MTU, against real routes in a test namespace."""

from __future__ import annotations

import pytest

from fz_trio.lab.testnet import TestNet

pytestmark = pytest.mark.netns


def _auto(net: TestNet, ns: str, *endpoints: str) -> int:
    code = ("from ipaddress import ip_address\nfrom fz_trio.shell.route_mtu import auto_mtu\n"
            f"print(auto_mtu([ip_address(a) for a in {list(endpoints)!r}]))")
    return int(net.run_python(ns, code).stdout)


def test_the_path_towards_the_endpoints_less_80(testnet: TestNet) -> None:
    ns = testnet.ns_b
    testnet.run(ns, "ip", "link", "set", "vb", "mtu", "1400")
    assert _auto(testnet, ns, testnet.underlay_a) == 1320
    assert _auto(testnet, ns, testnet.underlay6_a) == 1320
    # A route's own mtu beats its device's; the result never goes below IPv6's 1280.
    testnet.run(ns, "ip", "route", "add", "198.18.9.0/24", "dev", "vb", "mtu", "1300")
    assert _auto(testnet, ns, "198.18.9.1") == 1280
    testnet.run(ns, "ip", "route", "add", "198.18.10.0/24", "dev", "vb", "mtu", "1372")
    assert _auto(testnet, ns, testnet.underlay_a, "198.18.10.1") == 1292  # the smallest


def test_without_endpoints_the_default_route_counts(testnet: TestNet) -> None:
    ns = testnet.ns_b
    assert _auto(testnet, ns) == 1420  # no default route: 1500 - 80
    testnet.run(ns, "ip", "link", "set", "vb", "mtu", "1450")
    testnet.run(ns, "ip", "route", "add", "default", "via", testnet.underlay_a)
    assert _auto(testnet, ns) == 1370
    assert _auto(testnet, ns, "198.19.200.1") == 1370  # off-link: by the default route
