"""The MTU wg-quick gives an interface whose config has no `MTU =`: the path towards the peers,
less WireGuard's overhead.

For each endpoint, the route the kernel would use (`ip route get`): its own `mtu` metric if it
has one, else its device's MTU; the smallest of them. With no endpoint, the default route's.
With nothing at all, 1500. Minus 80 (an IPv6 outer header, UDP and WireGuard's 32 bytes: what
wg-quick subtracts for either family), and never below 1280, the IPv6 minimum. It must be
measured before a full tunnel's rules exist, which would send the lookup into the tunnel.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

__all__ = ["OVERHEAD", "auto_mtu", "path_mtu"]

OVERHEAD = 80
FALLBACK_MTU = 1500
MIN_MTU = 1280


def _metric_mtu(route: Any) -> int | None:
    metrics = route.get_attr("RTA_METRICS")
    mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
    return int(mtu) if mtu else None


def _device_mtu(ipr: IPRoute, index: int | None) -> int | None:
    if index is None:
        return None
    links: Any = ipr.link("get", index=index)
    return int(links[0].get_attr("IFLA_MTU")) if links else None


def path_mtu(ipr: IPRoute, address: IPv4Address | IPv6Address) -> int | None:
    """The MTU towards `address` by the routing table, or None when there is no route."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        routes: Any = ipr.route("get", dst=str(address), family=family)
    except NetlinkError:
        return None  # unreachable
    if not routes:
        return None
    return _metric_mtu(routes[0]) or _device_mtu(ipr, routes[0].get_attr("RTA_OIF"))


def _default_route_mtu(ipr: IPRoute) -> int | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        routes: Any = ipr.route("dump", family=family)
        for route in routes:
            if route["dst_len"] == 0 and route["table"] == 254:
                mtu = _metric_mtu(route) or _device_mtu(ipr, route.get_attr("RTA_OIF"))
                if mtu:
                    return mtu
    return None


def auto_mtu(endpoints: Sequence[IPv4Address | IPv6Address]) -> int:
    """The interface MTU for peers at `endpoints` (blocking: a few netlink round trips)."""
    with IPRoute() as ipr:
        mtus = [mtu for mtu in (path_mtu(ipr, address) for address in endpoints) if mtu]
        mtu = min(mtus) if mtus else (_default_route_mtu(ipr) or FALLBACK_MTU)
    return max(mtu - OVERHEAD, MIN_MTU)
