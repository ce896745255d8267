"""The IO shell: a Trio nursery that moves bytes between the TUN device, UDP and the core.

Tasks, all children of one nursery (cancelling it is the shutdown path):
- one TUN reader per queue fd: waits for readability, drains up to a batch of packets, hands
  them to the core;
- one UDP reader per socket: likewise for datagrams;
- the timer task: sleeps until the core's next deadline (`poll_timeout`), which the readers
  pull earlier whenever the core's answer changes.
After each batch the shell flushes what the core produced: datagrams to UDP, packets to TUN.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable

import attrs
import trio

from fz_trio.config import Config
from fz_trio.core.tunnel import Tunnel
from fz_trio.shell.netconfig import InterfaceNetwork
from fz_trio.shell.tun import TunDevice, open_tun
from fz_trio.shell.udp import UdpSockets, open_udp

log = logging.getLogger(__name__)

BATCH = 100  # packets per tick; see docs/architecture.md
DEFAULT_MTU = 1420
_RECV_SIZE = 65535


class ResolveError(Exception):
    pass


async def resolve_endpoint(host: str, port: int) -> tuple[str, int]:
    """An IP literal stays as it is; a DNS name is resolved once, at start, as wg-quick does."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise ResolveError(f"cannot resolve endpoint {host}:{port}: {e}") from e
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4, like wg
    return infos[0][4][0], port


@attrs.define
class TunnelShell:
    """A running tunnel: the core plus the fds it is wired to. Live objects for the REPL."""

    config: Config
    tunnel: Tunnel
    tun: TunDevice
    udp: UdpSockets
    network: InterfaceNetwork
    _timer_scope: trio.CancelScope | None = None
    _started: trio.Event = attrs.Factory(trio.Event)

    def now(self) -> float:
        return trio.current_time()

    def _refresh_wall_offset(self) -> None:
        self.tunnel.wall_offset = time.time() - trio.current_time()

    # --- flushing the core's output ---------------------------------------------------------

    async def flush(self) -> None:
        for datagram, endpoint in self.tunnel.take_transmits():
            sock = self.udp.for_host(endpoint[0])
            if sock is None:
                self.tunnel.counters.drop("no_socket_for_family")
                continue
            await _send_datagram(sock, datagram, endpoint, self.tunnel)
        packets = self.tunnel.take_tun_packets()
        if packets:
            fd = self.tun.fds[0]
            for packet in packets:
                await _write_tun(fd, packet, self.tunnel)
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer_scope is not None:
            deadline = self.tunnel.poll_timeout()
            self._timer_scope.deadline = math.inf if deadline is None else deadline

    # --- tasks ------------------------------------------------------------------------------

    async def _tun_reader(self, fd: int) -> None:
        read = os.read
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = self.now()
            for _ in range(BATCH):
                try:
                    packet = read(fd, _RECV_SIZE)
                except BlockingIOError:
                    break
                self.tunnel.send_packet(packet, now)
            await self.flush()

    async def _udp_reader(self, sock: socket.socket) -> None:
        recvfrom = sock.recvfrom
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = self.now()
            for _ in range(BATCH):
                try:
                    data, source = recvfrom(_RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as e:  # e.g. ICMP port unreachable reported on the socket
                    self.tunnel.counters.drop(f"udp_error_{e.errno}")
                    continue
                self.tunnel.receive_datagram(data, source, now)
            await self.flush()

    async def _timers(self) -> None:
        while True:
            with trio.CancelScope() as self._timer_scope:
                self._reschedule()
                await trio.sleep_forever()
            self._refresh_wall_offset()
            self.tunnel.handle_timeout(self.now())
            await self.flush()

    async def run(self, task_status: trio.TaskStatus[TunnelShell] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for fd in self.tun.fds:
                nursery.start_soon(self._tun_reader, fd)
            for sock in self.udp.all():
                nursery.start_soon(self._udp_reader, sock)
            nursery.start_soon(self._timers)
            self._refresh_wall_offset()
            self.tunnel.start(self.now())
            await self.flush()
            self._started.set()
            task_status.started(self)


async def _send_datagram(sock: socket.socket, datagram: bytes | bytearray,
                         endpoint: tuple[str, int], tunnel: Tunnel) -> None:
    while True:
        try:
            sock.sendto(datagram, endpoint)
            return
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)  # backpressure: the kernel queue is full
        except OSError as e:
            tunnel.counters.drop(f"udp_send_error_{e.errno}")
            return


async def _write_tun(fd: int, packet: bytes, tunnel: Tunnel) -> None:
    while True:
        try:
            os.write(fd, packet)
            return
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
        except OSError as e:  # the kernel refused this packet (e.g. EINVAL): count, go on
            tunnel.counters.drop(f"tun_write_error_{e.errno}")
            return


async def build_tunnel(config: Config, *, tun_queues: int = 1,
                       log_info: Callable[[str], None] = log.info) -> TunnelShell:
    """Create the device, sockets and routes for `config`; the caller must `close_tunnel` it."""
    iface = config.interface
    mtu = iface.mtu or DEFAULT_MTU
    endpoints = {}
    for peer in config.peers:
        if peer.endpoint is not None:
            endpoints[peer.public_key] = await resolve_endpoint(peer.endpoint.host, peer.endpoint.port)
    tun = open_tun(config.interface_name, queues=tun_queues)
    network: InterfaceNetwork | None = None
    udp: UdpSockets | None = None
    try:
        for fd in tun.fds:
            os.set_blocking(fd, False)
        network = InterfaceNetwork(config.interface_name)
        allowed = [net for peer in config.peers for net in peer.allowed_ips]
        full_tunnel = network.apply(addresses=list(iface.addresses), mtu=mtu, allowed_ips=allowed)
        udp = open_udp(iface.listen_port, fwmark=full_tunnel.fwmark if full_tunnel else None)
        tunnel = Tunnel(iface.private_key, mtu=mtu, wall_offset=time.time() - trio.current_time())
        for peer in config.peers:
            tunnel.add_peer(
                peer.public_key, preshared_key=peer.preshared_key, allowed_ips=peer.allowed_ips,
                endpoint=endpoints.get(peer.public_key),
                persistent_keepalive=peer.persistent_keepalive,
            )
        log_info(f"interface {config.interface_name} up: mtu {mtu}, udp port {udp.port}, "
                 f"{len(config.peers)} peer(s)"
                 + (f", full tunnel via table {full_tunnel.fwmark}" if full_tunnel else ""))
        return TunnelShell(config, tunnel, tun, udp, network)
    except BaseException:
        if udp is not None:
            udp.close()
        if network is not None:
            network.close()
        tun.close()
        raise


def close_tunnel(shell: TunnelShell) -> None:
    shell.udp.close()
    shell.network.close()
    shell.tun.close()


async def run_until_signalled(config: Config, *, tun_queues: int = 1) -> None:
    """`fz-trio up`: run the tunnel until SIGINT/SIGTERM, then tear everything down."""
    shell = await build_tunnel(config, tun_queues=tun_queues)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(shell.run)

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("received %s, shutting down", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
    finally:
        close_tunnel(shell)
        counters = shell.tunnel.counters.as_dict()
        log.info("stopped; counters: %s", counters)
