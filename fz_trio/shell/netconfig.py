"""Configure a tunnel interface (addresses, MTU, link, routes, full-tunnel rules) like wg-quick.

Uses pyroute2's *sync* `IPRoute`: its `AsyncIPRoute` is asyncio-only and fails under Trio. The sync
class runs its own private asyncio loop per instance, so an instance must stay on one thread; we
open a fresh one for each apply()/close() call, which makes it safe to call them from
`trio.to_thread.run_sync` (different worker threads) or directly.

Everything acts on the network namespace of the calling process — the way fz-trio runs in tests
(`ip netns exec NS python ...`). The sysctl written for a full tunnel goes through /proc/sys/net,
which is per-namespace too.

Full tunnel, per family, exactly like wg-quick(8) with `Table = auto` (see its add_default()):
    ip route add 0.0.0.0/0 dev IF table 51820
    ip rule add not fwmark 51820 table 51820
    ip rule add table main suppress_prefixlength 0
    sysctl -w net.ipv4.conf.all.src_valid_mark=1          (IPv4 only)
Only the /0 route goes into table 51820; every other AllowedIPs route stays in `main`, as wg-quick
does. That is deliberate: a more specific tunnel route must beat a less specific LAN route by
longest-prefix match in `main`; in table 51820 it would only be seen after `main` had matched the
LAN route already. The caller marks its UDP sockets with SO_MARK = fwmark so that the encrypted
packets skip table 51820 and leave through the real default route.

Not done (wg-quick does them): the nftables/iptables anti-spoofing and connmark rules, DNS.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from fz_trio.core import Network, as_network

__all__ = [
    "DEFAULT_FWMARK",
    "FullTunnel",
    "InterfaceNetwork",
    "NetConfigError",
    "RULE_PRIORITY_NOT_FWMARK",
    "RULE_PRIORITY_SUPPRESS",
    "SRC_VALID_MARK_PATH",
]

log = logging.getLogger(__name__)

DEFAULT_FWMARK = 51820
MAIN_TABLE = 254
FIB_RULE_INVERT = 0x2  # "not fwmark ..."
# wg-quick lets the kernel number its rules; on a fresh namespace that gives these two. We pin them
# because pyroute2 puts every rule at 32000 unless told, and with equal priorities the kernel keeps
# insertion order — which would consult table 51820 before the suppress rule and hijack LAN routes.
RULE_PRIORITY_SUPPRESS = 32764
RULE_PRIORITY_NOT_FWMARK = 32765
SRC_VALID_MARK_PATH = Path("/proc/sys/net/ipv4/conf/all/src_valid_mark")
IPV6_MIN_MTU = 1280

# Errors that mean "what we wanted to undo is already gone" — usually because the TUN device
# vanished with its last fd and took its addresses and routes with it.
_GONE_ERRNOS = frozenset(
    {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL, errno.ENXIO}
)

Interface = IPv4Interface | IPv6Interface


class NetConfigError(Exception):
    """Configuring or un-configuring the interface failed; the message names the step."""


@attrs.frozen
class FullTunnel:
    """apply() set up a wg-quick style full tunnel: mark the UDP sockets with SO_MARK = fwmark."""

    fwmark: int = DEFAULT_FWMARK
    families: frozenset[socket.AddressFamily] = frozenset()

    @property
    def table(self) -> int:
        # wg-quick uses the same number for the routing table and the fwmark.
        return self.fwmark


_Action = Callable[[IPRoute], object]


def _nl(kind: str, cmd: str, spec: dict[str, Any]) -> _Action:
    """A deferred pyroute2 call such as `ipr.route("del", **spec)`, for the undo stack."""

    def call(ipr: IPRoute) -> object:
        return getattr(ipr, kind)(cmd, **spec)

    return call


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        name = errno.errorcode.get(exc.code, str(exc.code))
        return f"[{name}] {exc.args[1] if len(exc.args) > 1 else exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"[{errno.errorcode.get(exc.errno, exc.errno)}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _family(net: Interface | Network) -> socket.AddressFamily:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _fam_name(family: socket.AddressFamily) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


class InterfaceNetwork:
    """Applies addresses/MTU/link-up/routes for one interface; close() removes all it added.

    Every change apply() makes is pushed on an undo stack; close() pops it in reverse order. Things
    that were already in place (an address or route that existed, a sysctl already 1) are not
    recorded, so close() never removes what someone else set up.
    """

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.index: int | None = None
        self.full_tunnel: FullTunnel | None = None
        self._undo: list[tuple[str, _Action]] = []
        self._applied = False

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> InterfaceNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- apply -----------------------------------------------------------------------------------
    def apply(
        self,
        *,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        mtu: int,
        allowed_ips: Sequence[Network | str],
        fwmark: int = DEFAULT_FWMARK,
        txqueuelen: int = 10000,
    ) -> FullTunnel | None:
        """Configure the interface; on failure undo what was done and raise NetConfigError.

        Blocking (a few netlink round trips); from Trio call it via trio.to_thread.run_sync.
        Returns a FullTunnel when allowed_ips holds 0.0.0.0/0 and/or ::/0, else None.
        """
        if self._applied:
            raise NetConfigError(f"{self.ifname}: apply() was already called; close() first")
        try:
            addrs = [ipaddress.ip_interface(a) for a in addresses]
            nets = [as_network(n) for n in allowed_ips]
        except ValueError as exc:
            raise NetConfigError(f"{self.ifname}: {exc}") from exc
        full_families = frozenset(_family(n) for n in nets if n.prefixlen == 0)
        if full_families and not 0 < fwmark < 2**32:
            raise NetConfigError(
                f"{self.ifname}: a full tunnel needs a non-zero fwmark, got {fwmark}"
            )
        if any(a.version == 6 for a in addrs) and mtu < IPV6_MIN_MTU:
            # The kernel would silently drop IPv6 from the interface instead of failing.
            raise NetConfigError(
                f"{self.ifname}: MTU {mtu} is below {IPV6_MIN_MTU}, the minimum for IPv6 addresses"
            )

        self._applied = True
        try:
            with IPRoute() as ipr:
                self._apply(ipr, addrs, mtu, nets, fwmark, txqueuelen, full_families)
        except BaseException as exc:
            try:
                self.close()
            except NetConfigError as undo_exc:
                log.warning(
                    "%s: rollback after failed apply() was incomplete: %s", self.ifname, undo_exc
                )
            if isinstance(exc, NetConfigError) or not isinstance(exc, Exception):
                raise
            raise NetConfigError(f"{self.ifname}: {_describe(exc)}") from exc
        if full_families:
            self.full_tunnel = FullTunnel(fwmark=fwmark, families=full_families)
        return self.full_tunnel

    def _step(self, ipr: IPRoute, what: str, action: _Action) -> bool:
        """Run one change; returns False when it was already in place (EEXIST)."""
        try:
            action(ipr)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                log.debug("%s: %s: already present, leaving it alone", self.ifname, what)
                return False
            raise NetConfigError(f"{self.ifname}: {what} failed: {_describe(exc)}") from exc
        except OSError as exc:
            raise NetConfigError(f"{self.ifname}: {what} failed: {_describe(exc)}") from exc
        return True

    def _add(self, ipr: IPRoute, what: str, kind: str, spec: dict[str, Any]) -> None:
        """`ipr.<kind>("add", **spec)`, and remember `("del", **spec)` unless it already existed."""
        if self._step(ipr, f"adding {what}", _nl(kind, "add", spec)):
            self._undo.append((f"deleting {what}", _nl(kind, "del", spec)))

    def _apply(
        self,
        ipr: IPRoute,
        addrs: list[Interface],
        mtu: int,
        nets: list[Network],
        fwmark: int,
        txqueuelen: int,
        full_families: frozenset[socket.AddressFamily],
    ) -> None:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise NetConfigError(
                f"interface {self.ifname!r} not found in this network namespace "
                "(is the TUN device open, and is this process in the right namespace?)"
            )
        idx = self.index = found[0]
        link = ipr.link("get", index=idx)[0]
        old = {"mtu": link.get("mtu"), "txqlen": link.get("txqlen")}
        was_up = bool(link["flags"] & 0x1)  # IFF_UP

        # MTU and queue length first: the link must not come up with the 1500 default.
        self._step(
            ipr,
            f"setting mtu {mtu} txqueuelen {txqueuelen}",
            _nl("link", "set", {"index": idx, "mtu": mtu, "txqlen": txqueuelen}),
        )
        self._undo.append(
            (
                f"restoring mtu {old['mtu']} txqueuelen {old['txqlen']}",
                _nl("link", "set", {"index": idx, **old}),
            )
        )

        for a in addrs:
            spec = {
                "index": idx,
                "address": str(a.ip),
                "prefixlen": a.network.prefixlen,
                "family": _family(a),
            }
            self._add(ipr, f"address {a}", "addr", spec)

        if not was_up:
            self._step(ipr, "setting link up", _nl("link", "set", {"index": idx, "state": "up"}))
            self._undo.append(
                ("setting link down", _nl("link", "set", {"index": idx, "state": "down"}))
            )

        if socket.AF_INET in full_families:
            self._enable_src_valid_mark()

        for n in nets:
            table = fwmark if n.prefixlen == 0 else MAIN_TABLE
            tname = "main" if table == MAIN_TABLE else str(table)
            spec = {"dst": str(n), "oif": idx, "table": table, "family": _family(n)}
            self._add(ipr, f"route {n} dev {self.ifname} table {tname}", "route", spec)

        # Priorities pin the suppress rule *before* the fwmark rule (see RULE_PRIORITY_*). It is
        # added first too, so there is no moment in which table 51820 hijacks LAN traffic.
        for fam in sorted(full_families):
            # pyroute2 spells it suppress_prefixlen; "suppress_prefixlength" is silently ignored.
            self._add(
                ipr,
                f"{_fam_name(fam)} rule table main suppress_prefixlength 0",
                "rule",
                {
                    "family": fam,
                    "table": MAIN_TABLE,
                    "suppress_prefixlen": 0,
                    "priority": RULE_PRIORITY_SUPPRESS,
                },
            )
            self._add(
                ipr,
                f"{_fam_name(fam)} rule not fwmark {fwmark} table {fwmark}",
                "rule",
                {
                    "family": fam,
                    "table": fwmark,
                    "fwmark": fwmark,
                    "flags": FIB_RULE_INVERT,
                    "priority": RULE_PRIORITY_NOT_FWMARK,
                },
            )

    def _enable_src_valid_mark(self) -> None:
        # Reverse-path filtering must take the fwmark into account, or replies to our marked
        # UDP socket are judged by table 51820 (default via the tunnel) and dropped.
        try:
            old = SRC_VALID_MARK_PATH.read_text().strip()
            if old == "1":
                return
            SRC_VALID_MARK_PATH.write_text("1\n")
        except OSError as exc:
            what = "setting net.ipv4.conf.all.src_valid_mark=1"
            raise NetConfigError(f"{self.ifname}: {what} failed: {_describe(exc)}") from exc

        def restore(_: IPRoute) -> None:
            # Leave it alone if someone changed it after us.
            if SRC_VALID_MARK_PATH.read_text().strip() == "1":
                SRC_VALID_MARK_PATH.write_text(f"{old}\n")

        self._undo.append((f"restoring net.ipv4.conf.all.src_valid_mark={old}", restore))

    # -- close -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Undo everything apply() added, newest first. Idempotent.

        Things that are already gone are logged at debug level, not raised. Any other failure is
        logged, the remaining steps still run, and one NetConfigError sums them up at the end.
        """
        undo, self._undo = self._undo, []
        self.full_tunnel = None
        self._applied = False
        if not undo:
            return
        failures: list[str] = []
        try:
            ipr = IPRoute()
        except Exception as exc:  # pragma: no cover - netlink socket creation failing is exotic
            raise NetConfigError(f"{self.ifname}: cannot open netlink to clean up: {exc}") from exc
        with ipr:
            for what, action in reversed(undo):
                try:
                    action(ipr)
                except NetlinkError as exc:
                    if exc.code in _GONE_ERRNOS:
                        log.debug("%s: %s: already gone (%s)", self.ifname, what, _describe(exc))
                    else:
                        log.warning("%s: %s failed: %s", self.ifname, what, _describe(exc))
                        failures.append(f"{what}: {_describe(exc)}")
                except OSError as exc:
                    log.warning("%s: %s failed: %s", self.ifname, what, _describe(exc))
                    failures.append(f"{what}: {_describe(exc)}")
        if failures:
            raise NetConfigError(f"{self.ifname}: cleanup incomplete: " + "; ".join(failures))
