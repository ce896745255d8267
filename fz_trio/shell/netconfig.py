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

`Table` as wg-quick reads it: "auto" is the above; "off" adds no routes at all; a number (main is
254) puts every AllowedIPs route, /0 included, in that table and adds no rules. `FwMark` is the
mark of the UDP sockets and, under "auto", the full tunnel's table too.

Changes that outlive the TUN device (the policy rules, the sysctl) are written to the host-state
journal (`shell.host_state`) before they are made, so a `kill -9` is undone by the next start;
what goes with the device (its addresses, routes, MTU) is undone from memory only. The
anti-spoofing nftables rules are `shell.firewall`'s, DNS is `shell.dns`'s.
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
from fz_trio.shell.host_state import Change, HostState, file_change, netlink_change, undo_change

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
    """A deferred pyroute2 call such as `ipr.route("add", **spec)`."""

    def call(ipr: IPRoute) -> object:
        return getattr(ipr, kind)(cmd, **spec)

    return call


Table = int | str  # "auto", "off" or a routing table number


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

    def __init__(self, ifname: str, state: HostState | None = None) -> None:
        self.ifname = ifname
        self.state = state
        self.index: int | None = None
        self.full_tunnel: FullTunnel | None = None
        # (the change's undo, whether the journal holds it), oldest first
        self._undo: list[tuple[Change, bool]] = []
        self._applied = False
        # The AllowedIPs routed through us: the route's undo, or None if it was there before.
        self.routes: dict[Network, Change | None] = {}
        self._table: Table = "auto"
        self._fwmark = DEFAULT_FWMARK

    def _push(self, change: Change, *, lasting: bool) -> None:
        """Remember how to undo a change about to be made; a lasting one (it outlives the
        device) goes to the journal first."""
        journaled = lasting and self.state is not None
        if journaled:
            assert self.state is not None
            self.state.record(change)
        self._undo.append((change, journaled))

    def _drop(self) -> None:
        """The change just pushed was not made (it was already in place)."""
        change, journaled = self._undo.pop()
        if journaled and self.state is not None:
            self.state.forget(change)

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
        fwmark: int | None = None,
        table: Table = "auto",
        txqueuelen: int = 10000,
    ) -> FullTunnel | None:
        """Configure the interface; on failure undo what was done and raise NetConfigError.

        Blocking (a few netlink round trips); from Trio call it via trio.to_thread.run_sync.
        Returns a FullTunnel when `table` is "auto" and allowed_ips holds 0.0.0.0/0 and/or
        ::/0, else None. `fwmark` None means DEFAULT_FWMARK for a full tunnel.
        """
        if fwmark is None:
            fwmark = DEFAULT_FWMARK
        if not (table in ("auto", "off") or isinstance(table, int) and 0 < table < 2**32):
            raise NetConfigError(f"{self.ifname}: invalid routing table {table!r}")
        if self._applied:
            raise NetConfigError(f"{self.ifname}: apply() was already called; close() first")
        try:
            addrs = [ipaddress.ip_interface(a) for a in addresses]
            nets = [as_network(n) for n in allowed_ips]
        except ValueError as exc:
            raise NetConfigError(f"{self.ifname}: {exc}") from exc
        if table == "off":
            nets = []
        full_families = (frozenset(_family(n) for n in nets if n.prefixlen == 0)
                         if table == "auto" else frozenset())
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
                self._apply(ipr, addrs, mtu, nets, fwmark, table, txqueuelen, full_families)
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

    def _add(self, ipr: IPRoute, what: str, kind: str, spec: dict[str, Any], *,
             lasting: bool = False) -> Change | None:
        """`ipr.<kind>("add", **spec)`, undone by `("del", **spec)` unless it already existed
        (then None). The undo is written down before the change is made."""
        change = netlink_change(f"{kind} {what}", kind, spec)
        self._push(change, lasting=lasting)
        if not self._step(ipr, f"adding {what}", _nl(kind, "add", spec)):
            self._drop()
            return None
        return change

    def _add_route(self, ipr: IPRoute, n: Network) -> None:
        assert self.index is not None
        if self._table == "auto":
            number = self._fwmark if n.prefixlen == 0 else MAIN_TABLE
        else:
            assert isinstance(self._table, int)
            number = self._table
        tname = "main" if number == MAIN_TABLE else str(number)
        spec = {"dst": str(n), "oif": self.index, "table": number, "family": int(_family(n))}
        self.routes[n] = self._add(ipr, f"route {n} dev {self.ifname} table {tname}", "route",
                                   spec)

    def full_tunnel_changes(self, allowed_ips: Sequence[Network | str]) -> bool:
        """Whether these AllowedIPs would gain or lose a /0 of a family (auto table only)."""
        if not self._applied or self._table != "auto":
            return False
        new = {as_network(n).version for n in allowed_ips if as_network(n).prefixlen == 0}
        return new != {n.version for n in self.routes if n.prefixlen == 0}

    def set_routes(self, allowed_ips: Sequence[Network | str]) -> None:
        """A reload changed the AllowedIPs: add the new prefixes' routes, remove those of the
        prefixes gone (only the routes we added). A /0 appearing or going changes the full
        tunnel's rules, which only a start sets up: NetConfigError, nothing changed."""
        if not self._applied or self._table == "off":
            return
        nets = list(dict.fromkeys(as_network(n) for n in allowed_ips))
        if self.full_tunnel_changes(nets):
            raise NetConfigError(f"{self.ifname}: AllowedIPs gained or lost a /0: the full "
                                 f"tunnel changes at the next start only")
        gone = [n for n in self.routes if n not in nets]
        with IPRoute() as ipr:
            for n in nets:
                if n not in self.routes:
                    self._add_route(ipr, n)
            for n in gone:
                change = self.routes.pop(n)
                if change is None:
                    continue  # it was there before us: not ours to remove
                self._undo = [(c, j) for c, j in self._undo if c != change]
                failure = undo_change(change, ipr)
                if failure is not None:
                    raise NetConfigError(f"{self.ifname}: {failure}")

    def _apply(
        self,
        ipr: IPRoute,
        addrs: list[Interface],
        mtu: int,
        nets: list[Network],
        fwmark: int,
        table: Table,
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
        self._push(netlink_change(f"restoring mtu {old['mtu']} txqueuelen {old['txqlen']}",
                                  "link", {"index": idx, **old}, cmd="set"), lasting=False)
        self._step(
            ipr,
            f"setting mtu {mtu} txqueuelen {txqueuelen}",
            _nl("link", "set", {"index": idx, "mtu": mtu, "txqlen": txqueuelen}),
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
            self._push(netlink_change("setting link down", "link",
                                      {"index": idx, "state": "down"}, cmd="set"),
                       lasting=False)
            self._step(ipr, "setting link up", _nl("link", "set", {"index": idx, "state": "up"}))

        if socket.AF_INET in full_families:
            self._enable_src_valid_mark()

        self._table, self._fwmark = table, fwmark
        for n in nets:
            self._add_route(ipr, n)

        # Priorities pin the suppress rule *before* the fwmark rule (see RULE_PRIORITY_*). It is
        # added first too, so there is no moment in which table 51820 hijacks LAN traffic.
        for fam in sorted(full_families):
            # pyroute2 spells it suppress_prefixlen; "suppress_prefixlength" is silently ignored.
            self._add(
                ipr,
                f"{_fam_name(fam)} rule table main suppress_prefixlength 0",
                "rule",
                {
                    "family": int(fam),
                    "table": MAIN_TABLE,
                    "suppress_prefixlen": 0,
                    "priority": RULE_PRIORITY_SUPPRESS,
                },
                lasting=True,
            )
            self._add(
                ipr,
                f"{_fam_name(fam)} rule not fwmark {fwmark} table {fwmark}",
                "rule",
                {
                    "family": int(fam),
                    "table": fwmark,
                    "fwmark": fwmark,
                    "flags": FIB_RULE_INVERT,
                    "priority": RULE_PRIORITY_NOT_FWMARK,
                },
                lasting=True,
            )

    def _enable_src_valid_mark(self) -> None:
        # Reverse-path filtering must take the fwmark into account, or replies to our marked
        # UDP socket are judged by table 51820 (default via the tunnel) and dropped.
        what = "setting net.ipv4.conf.all.src_valid_mark=1"
        try:
            old = SRC_VALID_MARK_PATH.read_text()
            if old.strip() == "1":
                return
            # Undone only if it still reads 1: someone who changed it after us keeps theirs.
            self._push(file_change(f"restoring net.ipv4.conf.all.src_valid_mark={old.strip()}",
                                   SRC_VALID_MARK_PATH, old, "1\n"), lasting=True)
            SRC_VALID_MARK_PATH.write_text("1\n")
        except OSError as exc:
            raise NetConfigError(f"{self.ifname}: {what} failed: {_describe(exc)}") from exc

    # -- close -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Undo everything apply() added, newest first. Idempotent.

        Things that are already gone are logged at debug level, not raised. Any other failure is
        logged, the remaining steps still run, and one NetConfigError sums them up at the end.
        """
        undo, self._undo = self._undo, []
        self.full_tunnel = None
        self._applied = False
        self.routes = {}
        if not undo:
            return
        failures: list[str] = []
        with IPRoute() as ipr:  # one netlink socket for all of them
            for change, journaled in reversed(undo):
                failure = undo_change(change, ipr)  # "already gone" is no failure
                if journaled and self.state is not None and failure is None:
                    self.state.forget(change)  # a failed one stays for the next start
                if failure is not None:
                    failures.append(failure)
        if failures:
            raise NetConfigError(f"{self.ifname}: cleanup incomplete: " + "; ".join(failures))
