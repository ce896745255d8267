"""One interface's life: bring it up, run it, take it down — in that order, and undone in reverse.

Up: resolve the peers' endpoints, open the TUN device (with the richest offloads the kernel
accepts), address and route it (netconfig, full-tunnel policy routing), open the UDP sockets,
build the Device and its peers, listen on the UAPI socket. Run: the packet loops
(`shell.runner`), the UAPI server (`wg`, `wg-quick`, `fz-trio show` change and read the running
interface through it) and the link watch (which follows the MTU and stops everything when the
interface is deleted) until cancelled. Down: close the sockets, remove what netconfig added,
close the TUN device (which removes it), and report the statistics. Cancellation is the
shutdown path, so SIGINT/SIGTERM, `ip link del`, `fz-trio down`, a REPL's Ctrl-D and a crashed
task all take the same way down.

`fz-trio up wg0.conf` starts from a config file; `fz-trio wg0` (the userspace launch contract
wg-quick relies on) from an empty one, configured afterwards over UAPI.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from functools import partial

import attrs
import trio

from fz_trio import __version__, live_config
from fz_trio.config import Config, ConfigError, InterfaceConfig, PeerConfig
from fz_trio.core import Endpoint, encode_hex_key
from fz_trio.datapath import Device, kernels
from fz_trio.shell.dns import DnsError, DnsMode, apply_dns, choose_mode
from fz_trio.shell.firewall import FirewallError, apply_anti_spoofing
from fz_trio.shell.hooks import HookError, run_hooks, run_hooks_async
from fz_trio.shell.host_state import HostState, StateError
from fz_trio.shell.link_watch import link_index, watch_link
from fz_trio.shell.netconfig import InterfaceNetwork, NetConfigError
from fz_trio.shell.peer_watch import PeerWatch, status_line
from fz_trio.shell.route_mtu import auto_mtu
from fz_trio.shell.runner import PacketLoops
from fz_trio.shell.sd_notify import Notifier
from fz_trio.shell.stats import InterfaceStats, IoStats
from fz_trio.shell.tun import (
    IFF_VNET_HDR,
    OffloadMode,
    TunDevice,
    TunError,
    enable_offloads,
    open_tun,
)
from fz_trio.shell.tun_io import DEFAULT_TUN_IO, DEFAULT_TUN_QUEUES, TunIo
from fz_trio.shell.tun_offload import TunOffload
from fz_trio.shell.uapi_server import UapiListener, UapiServerError, open_listener, serve
from fz_trio.shell.udp import BatchSender, UdpError, UdpSockets, open_udp, set_fwmark
from fz_trio.uapi import (
    EADDRINUSE,
    DeviceState,
    GetRequest,
    PeerState,
    Request,
    SetRequest,
    UapiError,
    format_errno,
    format_get,
    format_status,
)

log = logging.getLogger(__name__)

DEFAULT_MTU = 1420
RESOLVE_FIRST_RETRY = 1.0
RESOLVE_MAX_RETRY = 60.0
PEER_WATCH_INTERVAL = 1.0
STATUS_REFRESH = 15.0
HOOK_DOWN_TIMEOUT = 30.0  # a PreDown that hangs must not keep the interface up forever


class StartError(Exception):
    """The interface could not be brought up; the message says why (and nothing secret)."""


@attrs.frozen
class Options:
    """How to run an interface, beside its config: the command line's switches."""

    tun_queues: int = DEFAULT_TUN_QUEUES
    gso: bool = True  # UDP GSO sends (falls back by itself if the kernel refuses)
    tun_io: TunIo = DEFAULT_TUN_IO
    offload: bool = True  # TUN offloads (virtio_net_hdr, TSO/USO) when the kernel has them
    uapi: bool = True  # serve /var/run/wireguard/IFACE.sock
    # `fz-trio up` (not `fz-trio IFNAME`, configured by wg-quick): MTU chosen like wg-quick's.
    host_integration: bool = True
    dns_mode: DnsMode | None = None  # None: choose_mode picks one
    # Told while start-up waits (an endpoint that does not resolve yet): systemd's STATUS=.
    on_wait: Callable[[str], None] | None = attrs.field(default=None, eq=False)


def empty_config(interface_name: str) -> Config:
    """What `fz-trio IFNAME` starts from: no key, no addresses, no peers (wg-quick and `wg`
    configure the rest over UAPI and `ip`)."""
    interface = InterfaceConfig(private_key=None, addresses=(), listen_port=None, mtu=None,
                                dns_servers=(), dns_search=())
    return Config(interface_name, interface, ())


@attrs.define
class Interface:
    """A running interface: its config, the live objects (for the REPL), and what UAPI asks of
    it (`handle_uapi`)."""

    config: Config
    device: Device
    tun: TunDevice
    network: InterfaceNetwork
    loops: PacketLoops
    stats: InterfaceStats
    fwmark: int = 0
    uapi: UapiListener | None = None
    # Set by `fz-trio down` (the UAPI extension), SIGTERM and SIGINT: `run_interface` then
    # takes the interface down (PreDown first, while the loops still run).
    stop_requested: trio.Event = attrs.Factory(trio.Event)
    hooks_armed: bool = False  # PostUp ran: PostDown is due at the end
    _configuring: trio.Lock = attrs.Factory(trio.Lock)

    @property
    def name(self) -> str:
        return self.config.interface_name

    @property
    def udp(self) -> UdpSockets:
        return self.loops.udp

    def report(self) -> dict[str, object]:
        """The statistics, and the TUN offload state, as the exit log line shows them."""
        offload = self.loops.offload
        tun: dict[str, object] = {"queues": len(self.tun.fds), "io": self.loops.tun_io.value,
                                  "offload": offload.mode.value if offload else "off"}
        if offload is not None:
            tun["coalescing"] = offload.coalescing
        return self.stats.as_dict() | {"tun": tun, "udp_gso": self.loops.sender.gso}

    # --- UAPI -----------------------------------------------------------------------------

    async def handle_uapi(self, request: Request | UapiError) -> bytes:
        """The reply to one UAPI request (never raises for a bad one: an errno, counted)."""
        if isinstance(request, UapiError):
            return self._refuse(request)
        if isinstance(request, GetRequest):
            self.stats.io.uapi_gets += 1
            return format_get(self.state())
        if isinstance(request, SetRequest):
            async with self._configuring:
                try:
                    await self.configure(request)
                except UapiError as e:
                    return self._refuse(e)
            self.stats.io.uapi_sets += 1
            return format_errno(0)
        if request.op == "status":
            return format_status(self.status())
        log.info("%s: stop requested over UAPI", self.name)
        self.stop_requested.set()
        return format_errno(0)

    def _refuse(self, error: UapiError) -> bytes:
        log.warning("%s: UAPI request refused (errno %d): %s", self.name, error.errno,
                    error.message)
        self.stats.io.error("uapi", error.errno)
        return format_errno(error.errno)

    def state(self) -> DeviceState:
        """What `get` reports (what `wg show` and `wg showconf` print)."""
        device = self.device
        peers = []
        for key, peer in device.peers.items():
            wall = peer.last_handshake_wall
            seconds = int(wall) if wall is not None else 0
            nanos = int((wall - seconds) * 1e9) if wall is not None else 0
            psk = peer.preshared_key
            peers.append(PeerState(
                public_key=key, preshared_key=psk if any(psk) else None,
                endpoint=peer.endpoint, last_handshake=(seconds, nanos),
                tx_bytes=peer.tx_bytes, rx_bytes=peer.rx_bytes,
                persistent_keepalive=int(peer.persistent_keepalive or 0),
                allowed_ips=tuple(device.allowed_ips_of(key))))
        return DeviceState(private_key=device.private_key, listen_port=self.udp.port,
                           fwmark=self.fwmark, peers=tuple(peers))

    async def configure(self, request: SetRequest) -> None:
        """Apply a UAPI `set` at once, whole or not at all (UapiError: nothing changed). The
        sockets go first, since only they can fail: a new listen port binds new sockets before
        anything else changes; then the core takes the rest, which it cannot refuse once
        `live_config.check` passed."""
        live_config.check(self.device, request)
        fwmark = self.fwmark if request.fwmark is None else request.fwmark
        new_udp = None
        if request.listen_port is not None and request.listen_port != self.udp.port:
            try:
                new_udp = open_udp(request.listen_port, fwmark=fwmark or None)
            except UdpError as e:
                raise UapiError(EADDRINUSE, str(e)) from None
        elif fwmark != self.fwmark:
            try:
                set_fwmark(self.udp, fwmark)
            except OSError as e:
                set_fwmark(self.udp, self.fwmark)
                raise UapiError(EADDRINUSE, f"cannot set fwmark {fwmark}: {e.strerror}") from None
        self.fwmark = fwmark
        now, wall = trio.current_time(), time.time()
        live_config.apply_to_tunnel(self.device, request, now, wall)
        self.device.flush_outbox()
        if new_udp is not None:
            old = await self.loops.replace_udp(new_udp)
            old.close()
            log.info("%s: listening on UDP port %d now", self.name, new_udp.port)
        await self.loops.flush_network()

    def status(self) -> dict[str, object]:
        """fz-trio's own view, beyond `get`: data-path mode, kernels, offloads, drops, and each
        peer's sessions and timers (`fz-trio show`, the UAPI status extension)."""
        now = trio.current_time()

        def due(deadline: float | None) -> float | None:
            return None if deadline is None else round(deadline - now, 3)

        peers = {}
        for key, peer in self.device.peers.items():
            sessions = {}
            for role in ("current", "previous", "next"):
                session = getattr(peer, role)
                if session is not None:
                    sessions[role] = {"age": round(now - session.created, 3),
                                      "initiator": session.is_initiator,
                                      "sent": session.send_counter}
            peers[encode_hex_key(key)] = {
                "sessions": sessions, "staged": len(peer.staged),
                "handshake_in_flight": peer.pending is not None,
                "handshake_attempts": peer.handshake_attempts,
                "timers": {"retransmit_handshake": due(peer.retransmit_handshake_at),
                           "send_keepalive": due(peer.send_keepalive_at),
                           "new_handshake": due(peer.new_handshake_at),
                           "zero_key_material": due(peer.zero_key_material_at),
                           "persistent_keepalive": due(peer.persistent_keepalive_at)},
            }
        return {"interface": self.name, "version": __version__, "pid": os.getpid(),
                "kernels": kernels.IMPLEMENTATION, "kernels_reason": kernels.REASON,
                "mtu": self.device.mtu, "stats": self.report(), "peers": peers}

    def log_stats(self) -> None:
        """SIGUSR1: the statistics and each peer's state, in the log."""
        log.info("%s: %s; stats: %s", self.name,
                 status_line(self.device.peers, time.time()), json.dumps(self.report()))

    async def reload(self, load: Callable[[], Config]) -> None:
        """SIGHUP: read the config again and apply what changed, as `wg syncconf` would (peers
        whose lines did not change keep their sessions). A config that does not load, or a
        change the interface refuses, leaves the running config as it is."""
        log.info("%s: reloading the config", self.name)
        try:
            new = load()
        except Exception as e:  # noqa: BLE001 - whatever the loader raises, the old config stays
            self.stats.io.error("reload")
            log.error("%s: reload failed, the running config stays: %s", self.name, e)
            return
        try:
            moved = {peer.public_key: peer.endpoint for peer in new.peers
                     if peer.endpoint is not None}
            old = {peer.public_key: peer.endpoint for peer in self.config.peers}
            endpoints = {key: await resolve_endpoint(setting.host, setting.port)
                         for key, setting in moved.items() if old.get(key) != setting}
            allowed = [net for peer in new.peers for net in peer.allowed_ips]
            if self.network.full_tunnel_changes(allowed):
                raise StartError("AllowedIPs gained or lost a /0: the full tunnel's rules "
                                 "change at the next start only")
            request = live_config.reload_request(self.config, new, endpoints)
            async with self._configuring:
                await self.configure(request)
                self.network.set_routes(allowed)  # the kernel's routes follow the new prefixes
        except (ConfigError, StartError, UapiError, NetConfigError) as e:
            self.stats.io.error("reload")
            log.error("%s: reload failed, the running config stays: %s", self.name, e)
            return
        for name in live_config.needs_restart(self.config, new):
            log.warning("%s: the config's %s changed; that is applied at the next start only",
                        self.name, name)
        live = attrs.evolve(self.config.interface, private_key=new.interface.private_key,
                            listen_port=new.interface.listen_port)
        self.config = attrs.evolve(self.config, interface=live, peers=new.peers)
        log.info("%s: reloaded: %d peer change(s)", self.name, len(request.peers))

    def set_mtu(self, mtu: int) -> None:
        """The link's MTU changed (wg-quick sets it after we start): pad to the new one."""
        if mtu != self.device.mtu:
            log.info("%s: mtu %d", self.name, mtu)
            self.device.mtu = mtu


async def resolve_endpoint(host: str, port: int) -> Endpoint:
    """An IP literal stays as it is; a DNS name is resolved once, as wg-quick does."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise StartError(f"cannot resolve endpoint {host}:{port}: {e}") from e
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4, like wg
    return str(infos[0][4][0]), port


async def resolve_endpoints(peers: Sequence[PeerConfig],
                            on_wait: Callable[[str], None] | None = None
                            ) -> dict[bytes, Endpoint]:
    """Every peer's endpoint, resolved; a name that does not resolve yet (booting before the
    network, a resolver not up) is tried again with backoff, for as long as it takes: the
    interface is of no use without its peers, and a service manager should not see it fail
    for a network that comes up a minute later. Before any host change, so the queries do not
    go into a tunnel that is not there yet."""
    endpoints = {}
    for peer in peers:
        if peer.endpoint is None:
            continue
        delay = RESOLVE_FIRST_RETRY
        while True:
            try:
                endpoints[peer.public_key] = await resolve_endpoint(peer.endpoint.host,
                                                                    peer.endpoint.port)
                break
            except StartError as e:
                log.warning("%s; trying again in %g s", e, delay)
                if on_wait is not None:
                    on_wait(f"waiting for endpoint {peer.endpoint.host} to resolve")
            await trio.sleep(delay)
            delay = min(delay * 2, RESOLVE_MAX_RETRY)
    return endpoints


@asynccontextmanager
async def interface_up(config: Config, options: Options = Options()
                       ) -> AsyncIterator[Interface]:
    """The interface of `config`, up for the body of the `async with`, taken down after it."""
    async with AsyncExitStack() as undo:
        try:
            interface = await _bring_up(config, options, undo)
        except (TunError, NetConfigError, UdpError, UapiServerError, StateError, DnsError,
                HookError, FirewallError) as e:
            raise StartError(str(e)) from e
        yield interface


async def _bring_up(config: Config, options: Options, undo: AsyncExitStack) -> Interface:
    """Up in wg-quick's order (PreUp, the interface, its addresses, MTU, routes, firewall, DNS,
    PostUp); `undo` takes it down in the reverse one (PreDown, ..., PostDown). Every host
    change outside the TUN device is written to the journal before it is made."""
    iface, name = config.interface, config.interface_name
    # The journal first: a dead fz-trio's rules and resolv.conf are undone before anything
    # else (its DNS might be why a name does not resolve), and a live one is refused here.
    # (`fz-trio IFNAME` changes nothing that outlives its device: wg-quick does the rest.)
    state = HostState(name) if options.host_integration else None
    if state is not None:
        state.claim()
        undo.callback(state.release)
    built: list[Interface] = []

    def post_down() -> None:
        if built and built[0].hooks_armed:  # only after a PostUp, as wg-quick's down
            run_hooks("PostDown", iface.post_down, name, check=False)

    undo.callback(post_down)
    if state is not None:
        undo.callback(_undo_host_changes, state)
    endpoints = await resolve_endpoints(config.peers, options.on_wait)
    await run_hooks_async("PreUp", iface.pre_up, name, check=True)
    # The UAPI socket before the device: it claims the name (a wireguard-go for it stops us
    # here), and it goes last, so its disappearing means the interface is gone.
    uapi = open_listener(name) if options.uapi else None
    if uapi is not None:
        undo.callback(uapi.close)
    tun, mode = _open_tun(name, options)
    undo.callback(tun.close)
    # Measured before any full-tunnel rule exists, which would send the lookup into the tunnel.
    mtu = iface.mtu or (auto_mtu([ipaddress.ip_address(host) for host, _ in endpoints.values()])
                        if options.host_integration else DEFAULT_MTU)
    network = InterfaceNetwork(name, state)
    undo.callback(network.close)
    allowed = [net for peer in config.peers for net in peer.allowed_ips]
    full_tunnel = network.apply(addresses=list(iface.addresses), mtu=mtu, allowed_ips=allowed,
                                table=iface.table, fwmark=iface.fwmark)
    fwmark = full_tunnel.fwmark if full_tunnel else (iface.fwmark or 0)
    if full_tunnel is not None and state is not None and not apply_anti_spoofing(
            state, name, list(iface.addresses), full_tunnel.fwmark, full_tunnel.families):
        log.warning("%s: no anti-spoofing rules: nft is not installed (apt-get install "
                    "nftables)", name)
    udp = open_udp(iface.listen_port, fwmark=fwmark or None)
    undo.callback(udp.close)
    device = Device(iface.private_key, mtu=mtu)
    for peer in config.peers:
        device.add_peer(
            peer.public_key, preshared_key=peer.preshared_key, allowed_ips=peer.allowed_ips,
            endpoint=endpoints.get(peer.public_key),
            persistent_keepalive=peer.persistent_keepalive,
        )
    io = IoStats()
    stats = InterfaceStats(device.counters, device.stats, io)
    offload = TunOffload(mode, io) if mode is not None else None
    loops = PacketLoops(device, tun, udp, BatchSender(io, gso=options.gso), io,
                        tun_io=options.tun_io, offload=offload)
    undo.callback(lambda: loops.udp.close())  # the ones a listen-port change swapped in
    if state is not None and (iface.dns_servers or iface.dns_search):
        dns_mode, _ = choose_mode(options.dns_mode)
        apply_dns(state, name, iface.dns_servers, iface.dns_search, mode=dns_mode,
                  full_tunnel=full_tunnel is not None)
    if kernels.IMPLEMENTATION != "native":
        log.warning("data path kernels: the Python twin (%s), 2-4x slower per packet than "
                    "the native ones", kernels.REASON)
    log.info(f"interface {name} up: mtu {mtu}, udp port {udp.port}, "
             f"{len(config.peers)} peer(s), {options.tun_queues} TUN queue(s) "
             f"({options.tun_io.value}), UDP GSO {'on' if options.gso else 'off'}, "
             f"TUN offload {mode.value if mode else 'off'}, "
             f"{kernels.IMPLEMENTATION} data path kernels"
             + (f", full tunnel via table {full_tunnel.table}" if full_tunnel else ""))
    built.append(Interface(config, device, tun, network, loops, stats, fwmark, uapi))
    return built[0]


def _undo_host_changes(state: HostState) -> None:
    failures = state.undo_all()
    if failures:
        log.warning("%s: %d host change(s) could not be undone; they stay in %s for the next "
                    "start or `fz-trio down %s`", state.ifname, len(failures), state.path,
                    state.ifname)


def _open_tun(name: str, options: Options) -> tuple[TunDevice, OffloadMode | None]:
    """The TUN device with a vnet header and the richest offloads the kernel accepts, falling
    back step by step (no USO, no TSO, and finally no vnet header at all)."""
    if options.offload:
        tun = open_tun(name, queues=options.tun_queues, flags=IFF_VNET_HDR, nonblocking=True)
        try:
            mode = enable_offloads(tun)
        except BaseException:
            tun.close()
            raise
        if mode is not None:
            return tun, mode
        log.warning("the kernel accepts no TUN offloads; using plain TUN I/O")
        tun.close()  # not persistent: the device is gone, so the name is free again
    return open_tun(name, queues=options.tun_queues, nonblocking=True), None


async def run_interface(config: Config, options: Options = Options(), *,
                        on_status: Callable[[str], None] | None = None,
                        task_status: trio.TaskStatus[Interface] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Bring the interface up, run it until cancelled, its link is deleted or UAPI asks it to
    stop; take it down and log its statistics."""
    async with interface_up(config, options) as interface:
        try:
            # The loops outlive the other tasks: PreDown runs while traffic still flows, as
            # under wg-quick (a hook may say goodbye through the tunnel).
            async with trio.open_nursery() as loops:
                await loops.start(interface.loops.run)
                async with trio.open_nursery() as nursery:
                    index = link_index(interface.tun.name)
                    if index is not None:
                        nursery.start_soon(_stop_when_deleted, interface, index,
                                           nursery.cancel_scope)
                    if interface.uapi is not None:
                        nursery.start_soon(partial(
                            serve, interface.uapi, interface.handle_uapi,
                            on_error=lambda what: interface.stats.io.error(f"uapi_{what}")))
                    nursery.start_soon(_stop_when_asked, interface, nursery.cancel_scope)
                    nursery.start_soon(_watch_peers, interface, on_status)
                    # After the loops start: a PostUp may already use the tunnel.
                    try:
                        await run_hooks_async("PostUp", interface.config.interface.post_up,
                                              interface.name, check=True)
                    except HookError as e:
                        raise StartError(str(e)) from e
                    interface.hooks_armed = True
                    task_status.started(interface)
                with trio.move_on_after(HOOK_DOWN_TIMEOUT):
                    await run_hooks_async("PreDown", interface.config.interface.pre_down,
                                          interface.name, check=False)
                loops.cancel_scope.cancel()
        finally:
            log.info("stopped; stats: %s", json.dumps(interface.report()))


async def _stop_when_deleted(interface: Interface, index: int, scope: trio.CancelScope) -> None:
    await watch_link(index, interface.set_mtu)
    log.info("%s: the interface was deleted; stopping", interface.name)
    scope.cancel()


async def _watch_peers(interface: Interface, on_status: Callable[[str], None] | None) -> None:
    """The log lines about each peer a person can act on, and the status line for systemd."""
    watch = PeerWatch(interface.name, interface.device.public_key)
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
    last_status, last_sent = "", float("-inf")
    while True:
        now = trio.current_time()
        for event in watch.observe(interface.device.peers, now):
            log.log(levels[event.level], "%s", event.message)
        status = status_line(interface.device.peers, time.time())
        # The "N s ago" part ticks every second: told when the rest changes, else now and then.
        changed = status.split(",")[0] != last_status.split(",")[0]
        if on_status is not None and (changed or now - last_sent >= STATUS_REFRESH):
            on_status(status)
            last_status, last_sent = status, now
        await trio.sleep(PEER_WATCH_INTERVAL)


async def _stop_when_asked(interface: Interface, scope: trio.CancelScope) -> None:
    await interface.stop_requested.wait()
    scope.cancel()


async def run_until_signalled(config: Config, options: Options = Options(),
                              on_ready: Callable[[], None] | None = None, *,
                              reload: Callable[[], Config] | None = None,
                              notifier: Notifier | None = None) -> None:
    """`fz-trio up` and `fz-trio IFNAME`: run the interface until SIGINT or SIGTERM (or until
    it stops by itself: link deleted, `fz-trio down`); `on_ready` once it is up. SIGHUP
    re-reads the config (`reload`) and applies the difference live; SIGUSR1 logs the stats.
    Signals are heard while the interface is still coming up, too: an endpoint that does not
    resolve yet must not make it deaf to SIGTERM. `notifier` tells systemd (sd_notify)."""
    notifier = notifier or Notifier(None)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                   signal.SIGUSR1) as signals, start_error_unwrapped():
        try:
            async with trio.open_nursery() as nursery:
                running: list[Interface] = []
                nursery.start_soon(_handle_signals, signals, running, reload,
                                   nursery.cancel_scope, notifier)
                interface = await nursery.start(_run_then_cancel, config, options,
                                                nursery.cancel_scope, notifier.status)
                running.append(interface)
                notifier.ready()
                if on_ready is not None:
                    on_ready()
        finally:
            notifier.stopping()


async def _handle_signals(signals: AsyncIterator[int], running: list[Interface],
                          reload: Callable[[], Config] | None, scope: trio.CancelScope,
                          notifier: Notifier) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum in (signal.SIGINT, signal.SIGTERM):
            notifier.stopping()
            if running and not running[0].stop_requested.is_set():
                log.info("received %s, shutting down", name)
                running[0].stop_requested.set()  # the orderly way: PreDown, then the rest
                continue
            log.info("received %s, shutting down now", name)
            scope.cancel()
            return
        if not running:
            log.info("received %s while starting: ignored", name)
        elif signum == signal.SIGUSR1:
            running[0].log_stats()
        elif reload is None:
            log.info("received SIGHUP: there is no config file to reload (configure this "
                     "interface with wg)")
        else:
            notifier.reloading()
            await running[0].reload(reload)
            notifier.ready()


@contextmanager
def start_error_unwrapped() -> Iterator[None]:
    """Around a nursery that starts an interface: its StartError comes out as itself, not in
    the exception group Trio wraps a task's error in, so callers can print it as one line."""
    try:
        yield
    except BaseExceptionGroup as group:
        start_errors, rest = group.split(StartError)
        leaves = _leaves(start_errors) if start_errors is not None else []
        if rest is None and len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _run_then_cancel(config: Config, options: Options, scope: trio.CancelScope,
                           on_status: Callable[[str], None] | None, *,
                           task_status: trio.TaskStatus[Interface] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    await run_interface(config, options, on_status=on_status, task_status=task_status)
    scope.cancel()  # it stopped by itself: the signal wait ends too
