"""One interface's life: bring it up, run it, take it down — in that order, and undone in reverse.

Up: resolve the peers' endpoints, open the TUN device (with the richest offloads the kernel
accepts), address and route it (netconfig, full-tunnel policy routing), open the UDP sockets,
build the Device and its peers. Run: the packet loops (`shell.runner`) until cancelled. Down:
close the sockets, remove what netconfig added, close the TUN device (which removes it), and
report the statistics. Cancellation is the shutdown path, so SIGINT/SIGTERM, a REPL's Ctrl-D
and a crashed task all take the same way down.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import trio

from fz_trio.config import Config
from fz_trio.core import Endpoint
from fz_trio.datapath import Device, kernels
from fz_trio.shell.netconfig import InterfaceNetwork, NetConfigError
from fz_trio.shell.runner import PacketLoops
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
from fz_trio.shell.udp import BatchSender, UdpError, UdpSockets, open_udp

log = logging.getLogger(__name__)

DEFAULT_MTU = 1420


class StartError(Exception):
    """The interface could not be brought up; the message says why (and nothing secret)."""


@attrs.frozen
class Options:
    """How to run an interface, beside its config: the command line's switches."""

    tun_queues: int = DEFAULT_TUN_QUEUES
    gso: bool = True  # UDP GSO sends (falls back by itself if the kernel refuses)
    tun_io: TunIo = DEFAULT_TUN_IO
    offload: bool = True  # TUN offloads (virtio_net_hdr, TSO/USO) when the kernel has them


@attrs.define
class Interface:
    """A running interface: its config and the live objects (for the REPL)."""

    config: Config
    device: Device
    tun: TunDevice
    udp: UdpSockets
    network: InterfaceNetwork
    loops: PacketLoops
    stats: InterfaceStats

    def report(self) -> dict[str, object]:
        """The statistics, and the TUN offload state, as the exit log line shows them."""
        offload = self.loops.offload
        tun: dict[str, object] = {"queues": len(self.tun.fds), "io": self.loops.tun_io.value,
                                  "offload": offload.mode.value if offload else "off"}
        if offload is not None:
            tun["coalescing"] = offload.coalescing
        return self.stats.as_dict() | {"tun": tun, "udp_gso": self.loops.sender.gso}


async def resolve_endpoint(host: str, port: int) -> Endpoint:
    """An IP literal stays as it is; a DNS name is resolved once, at start, as wg-quick does."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise StartError(f"cannot resolve endpoint {host}:{port}: {e}") from e
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4, like wg
    return str(infos[0][4][0]), port


@asynccontextmanager
async def interface_up(config: Config, options: Options = Options()
                       ) -> AsyncIterator[Interface]:
    """The interface of `config`, up for the body of the `async with`, taken down after it."""
    async with AsyncExitStack() as undo:
        try:
            interface = await _bring_up(config, options, undo)
        except (TunError, NetConfigError, UdpError) as e:
            raise StartError(str(e)) from e
        yield interface


async def _bring_up(config: Config, options: Options, undo: AsyncExitStack) -> Interface:
    iface = config.interface
    mtu = iface.mtu or DEFAULT_MTU
    endpoints = {}
    for peer in config.peers:
        if peer.endpoint is not None:
            endpoints[peer.public_key] = await resolve_endpoint(peer.endpoint.host,
                                                                peer.endpoint.port)
    if iface.dns_servers or iface.dns_search:
        log.warning("DNS is set for %s but not applied to the system resolver yet",
                    config.interface_name)
    tun, mode = _open_tun(config.interface_name, options)
    undo.callback(tun.close)
    network = InterfaceNetwork(config.interface_name)
    undo.callback(network.close)
    allowed = [net for peer in config.peers for net in peer.allowed_ips]
    full_tunnel = network.apply(addresses=list(iface.addresses), mtu=mtu, allowed_ips=allowed)
    udp = open_udp(iface.listen_port, fwmark=full_tunnel.fwmark if full_tunnel else None)
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
    if kernels.IMPLEMENTATION != "native":
        log.warning("data path kernels: the Python twin (%s), 2-4x slower per packet than "
                    "the native ones", kernels.REASON)
    log.info(f"interface {config.interface_name} up: mtu {mtu}, udp port {udp.port}, "
             f"{len(config.peers)} peer(s), {options.tun_queues} TUN queue(s) "
             f"({options.tun_io.value}), UDP GSO {'on' if options.gso else 'off'}, "
             f"TUN offload {mode.value if mode else 'off'}, "
             f"{kernels.IMPLEMENTATION} data path kernels"
             + (f", full tunnel via table {full_tunnel.fwmark}" if full_tunnel else ""))
    return Interface(config, device, tun, udp, network, loops, stats)


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
                        task_status: trio.TaskStatus[Interface] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    """Bring the interface up, run it until cancelled, take it down and log its statistics."""
    async with interface_up(config, options) as interface:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(interface.loops.run)
                task_status.started(interface)
        finally:
            log.info("stopped; stats: %s", json.dumps(interface.report()))


async def run_until_signalled(config: Config, options: Options = Options()) -> None:
    """`fz-trio up`: run the interface until SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_interface, config, options)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
