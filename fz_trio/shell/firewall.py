"""The anti-spoofing rules wg-quick adds for a full tunnel, as an nftables table of our own.

With every route through the tunnel, a packet that arrives on another interface (the LAN)
addressed to one of the tunnel's addresses is spoofed: the kernel's weak-host model would still
accept it. Per family of the full tunnel, table `ip fz-trio-IFACE` (`ip6` ...):

    preraw     (prerouting, priority -300): iifname != IFACE, daddr one of ours, the source
               not a local address: counted and dropped
    premangle  (prerouting, priority -150): UDP gets its conntrack mark as packet mark
    postmangle (postrouting, priority -150): UDP with our fwmark leaves it in conntrack

The mangle pair is wg-quick's too: replies to our marked UDP socket carry the mark back, so
reverse-path filtering judges them by the right table. Applied atomically with `nft -f -`; the
table's deletion is written to the host-state journal first. Without `nft` nothing is applied
and the caller says so.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import subprocess
from collections.abc import Collection, Sequence
from typing import Any

from pyroute2 import IPRoute

from fz_trio.shell.host_state import HostState, command_change

__all__ = ["FirewallError", "apply_anti_spoofing", "link_addresses", "nft_script", "table_name"]

log = logging.getLogger(__name__)

NFT_TIMEOUT = 15.0
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class FirewallError(Exception):
    """nft refused the rules; the message carries its last line of complaint."""


def table_name(ifname: str) -> str:
    return f"fz-trio-{ifname}"


def _nft_family(family: socket.AddressFamily) -> str:
    return "ip" if family == socket.AF_INET else "ip6"


def nft_script(ifname: str, addresses: Sequence[Address], fwmark: int,
               family: socket.AddressFamily) -> str:
    """The `nft -f` input for one family (the table is emptied first, so it is idempotent)."""
    fam = _nft_family(family)
    table = f"{fam} {table_name(ifname)}"
    version = 4 if family == socket.AF_INET else 6
    lines = [f"add table {table}", f"flush table {table}",
             f"add chain {table} preraw {{ type filter hook prerouting priority -300; }}",
             f"add chain {table} premangle {{ type filter hook prerouting priority -150; }}",
             f"add chain {table} postmangle {{ type filter hook postrouting priority -150; }}"]
    for address in addresses:
        if address.version == version:
            lines.append(f'add rule {table} preraw iifname != "{ifname}" {fam} daddr '
                         f"{address.ip} fib saddr type != local counter drop")
    lines += [f"add rule {table} premangle meta l4proto udp meta mark set ct mark",
              f"add rule {table} postmangle meta l4proto udp meta mark {fwmark:#x} "
              f"ct mark set meta mark"]
    return "\n".join(lines) + "\n"


def link_addresses(ifname: str) -> list[Address]:
    """The addresses the interface has now, as `ip address show dev IFACE` lists them."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return []
        messages: Any = ipr.addr("dump", index=found[0])
        return [ipaddress.ip_interface((m.get_attr("IFA_ADDRESS"), m["prefixlen"]))
                for m in messages if m.get_attr("IFA_ADDRESS")]


def apply_anti_spoofing(state: HostState, ifname: str, addresses: Sequence[Address],
                        fwmark: int, families: Collection[socket.AddressFamily]) -> bool:
    """Add the rules for each family; False when nft is not installed (nothing done).
    Blocking (one nft run per family)."""
    nft = shutil.which("nft")
    if nft is None:
        return False
    # wg-quick protects every address the interface has, the kernel's link-local one included.
    addresses = list(dict.fromkeys([*addresses, *link_addresses(ifname)]))
    for family in sorted(families):
        fam = _nft_family(family)
        state.record(command_change(f"nftables table {fam} {table_name(ifname)}",
                                    [nft, "delete", "table", fam, table_name(ifname)]))
        result = subprocess.run([nft, "-f", "-"], input=nft_script(ifname, addresses, fwmark,
                                                                   family),
                                capture_output=True, text=True, timeout=NFT_TIMEOUT,
                                check=False)
        if result.returncode != 0:
            why = (result.stderr.strip().splitlines() or ["(no message)"])[-1][:200]
            raise FirewallError(f"{ifname}: nft refused the anti-spoofing rules: {why}")
        log.debug("%s: anti-spoofing rules in table %s %s", ifname, fam, table_name(ifname))
    return True
