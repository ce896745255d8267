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

import json
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
from fz_trio.core.ip import flow_hash
from fz_trio.datapath import MAX_SEGMENTS, Device
from fz_trio.datapath import kernels as datapath_kernels
from fz_trio.shell.netconfig import InterfaceNetwork
from fz_trio.shell.tun import IFF_VNET_HDR, TunDevice, enable_offloads, open_tun
from fz_trio.shell.tun_io import (
    DEFAULT_TUN_IO,
    READ_BATCH,
    READ_BATCH_BYTES,
    ReaderHandoff,
    Waker,
    run_inline_reader,
    run_inline_writer,
    run_reader,
    run_writer,
    write_packet,
)
from fz_trio.shell.tun_offload import TunOffload
from fz_trio.shell.udp import BatchSender, UdpSockets, enable_gro, open_udp, receive_segments

log = logging.getLogger(__name__)

DEFAULT_MTU = 1420
DEFAULT_TUN_QUEUES = 1  # see docs/performance.md for the measurements behind it



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


# Bounded channels hold at most this many packets each way (the design card's 1000): items are
# batches, so the capacity in items is this divided by the largest batch.
CHANNEL_PACKETS = 1000
# ... and at most this many bytes: with TUN offloads one read is a 64 KB super-packet, and 1000
# reads would queue 64 MB (tens of milliseconds of delay at full speed). 512 KB is ~1.5 ms at
# 3 Gbit/s: what waits in our channels is bounded in time, not only in packets.
CHANNEL_BYTES = 512 * 1024
TICK_PACKETS = 100  # packets the loop takes from TUN per tick (two reader batches)
INBOUND_TICK_PACKETS = 64  # decrypt at least this many before handing a batch to the writers
_INBOUND_ITEM_MAX = INBOUND_TICK_PACKETS + MAX_SEGMENTS  # the last recvmsg may add up to 64


@attrs.define
class ShellStats:
    udp_datagrams_received: int = 0
    udp_receive_calls: int = 0
    tun_batches_read: int = 0
    tun_packets_read: int = 0


@attrs.define
class TunnelShell:
    """A running tunnel: the core plus the fds it is wired to. Live objects for the REPL."""

    config: Config
    tunnel: Device
    tun: TunDevice
    udp: UdpSockets
    network: InterfaceNetwork
    sender: BatchSender
    tun_io: str = DEFAULT_TUN_IO
    offload: TunOffload | None = None
    stats: ShellStats = attrs.Factory(ShellStats)
    _timer_scope: trio.CancelScope | None = None
    _writers: list[trio.MemorySendChannel[list[bytearray]]] = attrs.Factory(list)

    def now(self) -> float:
        return trio.current_time()

    def _count_error(self, where: str, from_thread: bool) -> Callable[[int], None]:
        """A callback that counts an errno (from a worker thread: on the Trio thread)."""
        drop = self.tunnel.counters.drop

        def count(err: int) -> None:
            if from_thread:
                trio.from_thread.run_sync(drop, f"{where}_error_{err}")
            else:
                drop(f"{where}_error_{err}")
        return count

    # --- core output -> UDP ----------------------------------------------------------------

    async def flush_network(self) -> None:
        batches = self.tunnel.take_batches()
        for batch in batches:
            sock = self.udp.for_host(batch.endpoint[0])
            if sock is None:
                self.tunnel.counters.drop("no_socket_for_family", batch.count)
                continue
            await self.sender.send(sock, batch)
        self.tunnel.recycle(batches)
        self._reschedule()

    # --- core output -> TUN writer threads --------------------------------------------------

    async def deliver_to_tun(self) -> None:
        packets = self.tunnel.take_tun_packets()
        if not packets:
            return
        writers = self._writers
        offload = self.offload
        if len(writers) == 1:
            await writers[0].send(offload.items_for_writer(packets) if offload else packets)
            return
        # Pin each flow to one writer queue so that queues never reorder a flow.
        per_queue: list[list[bytearray]] = [[] for _ in writers]
        n = len(writers)
        for packet in packets:
            per_queue[flow_hash(packet) % n].append(packet)
        for writer, batch in zip(writers, per_queue, strict=True):
            if batch:
                await writer.send(offload.items_for_writer(batch) if offload else batch)

    def _reschedule(self) -> None:
        if self._timer_scope is not None:
            deadline = self.tunnel.poll_timeout()
            self._timer_scope.deadline = math.inf if deadline is None else deadline

    # --- the loops ----------------------------------------------------------------------------

    async def _outbound(self, receive: trio.MemoryReceiveChannel[list[bytes]],
                        handoff: ReaderHandoff | None) -> None:
        """TUN batches -> core (encrypt into GSO batches) -> one sendmsg per batch."""
        send_packets = self.tunnel.send_packets
        send_reads = self.tunnel.send_reads
        stats = self.stats
        offload = self.offload
        async for batch in receive:
            now, wall = self.now(), time.time()
            taken = 0
            while True:
                if handoff is not None:
                    handoff.consumed()
                if offload is None:
                    send_packets(batch, now, wall)
                    taken += len(batch)
                else:
                    taken += send_reads(batch, now, wall)
                stats.tun_batches_read += 1
                if taken + READ_BATCH > TICK_PACKETS:
                    break
                try:
                    batch = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            stats.tun_packets_read += taken
            await self.flush_network()

    async def _inbound(self, sock: socket.socket) -> None:
        """UDP (GRO) -> core (decrypt) -> TUN writer threads."""
        buffer = bytearray(65535)
        receive = self.tunnel.receive_batch
        stats = self.stats
        while True:
            await trio.lowlevel.wait_readable(sock)
            now, wall = self.now(), time.time()
            received = 0
            while received < INBOUND_TICK_PACKETS:
                try:
                    nbytes, segment, source = receive_segments(sock, buffer)
                except BlockingIOError:
                    break
                except OSError as e:  # e.g. ICMP port unreachable reported on the socket
                    self.tunnel.counters.drop(f"udp_error_{e.errno}")
                    continue
                stats.udp_receive_calls += 1
                receive(buffer, nbytes, segment, source, now, wall)
                received += -(-nbytes // segment) if segment else 1
            stats.udp_datagrams_received += received
            await self.flush_network()
            await self.deliver_to_tun()

    async def _timers(self) -> None:
        while True:
            with trio.CancelScope() as self._timer_scope:
                self._reschedule()
                await trio.sleep_forever()
            self.tunnel.handle_timeout(self.now(), time.time())
            await self.flush_network()

    async def run(self,
                  task_status: trio.TaskStatus[TunnelShell] = trio.TASK_STATUS_IGNORED) -> None:
        waker = Waker()
        queues = len(self.tun.fds)
        limiter = trio.CapacityLimiter(2 * queues)
        tun_items = max(1, min(CHANNEL_PACKETS // READ_BATCH, CHANNEL_BYTES // READ_BATCH_BYTES))
        tun_send, tun_receive = trio.open_memory_channel[list[bytes]](tun_items)
        threads = self.tun_io == "threads"
        handoff = ReaderHandoff(tun_send, tun_items, waker) if threads else None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wake_when_cancelled, waker)
                read_errors = self._count_error("tun_read", threads)
                write_errors = self._count_error("tun_write", threads)
                for fd in self.tun.fds:
                    writer_send, writer_receive = trio.open_memory_channel[list[bytearray]](
                        max(1, min(CHANNEL_PACKETS // _INBOUND_ITEM_MAX,
                                   CHANNEL_BYTES // (_INBOUND_ITEM_MAX * DEFAULT_MTU))))
                    self._writers.append(writer_send)
                    write_item = self.offload.write_item if self.offload else write_packet
                    if handoff is not None:
                        nursery.start_soon(run_reader, fd, waker, handoff, read_errors, limiter)
                        nursery.start_soon(run_writer, fd, waker, writer_receive, write_errors,
                                           limiter, write_item)
                    else:
                        nursery.start_soon(run_inline_reader, fd, tun_send, read_errors)
                        nursery.start_soon(run_inline_writer, fd, writer_receive, write_errors,
                                           write_item)
                nursery.start_soon(self._outbound, tun_receive, handoff)
                for sock in self.udp.all():
                    enable_gro(sock)
                    nursery.start_soon(self._inbound, sock)
                nursery.start_soon(self._timers)
                self.tunnel.start(self.now(), time.time())
                await self.flush_network()
                task_status.started(self)
        finally:
            waker.close()


async def _wake_when_cancelled(waker: Waker) -> None:
    try:
        await trio.sleep_forever()
    finally:
        waker.wake()


async def build_tunnel(config: Config, *, tun_queues: int = DEFAULT_TUN_QUEUES, gso: bool = True,
                       tun_io: str = DEFAULT_TUN_IO, offload: bool = True,
                       log_info: Callable[[str], None] = log.info) -> TunnelShell:
    """Create the device, sockets and routes for `config`; the caller must `close_tunnel` it."""
    iface = config.interface
    mtu = iface.mtu or DEFAULT_MTU
    endpoints = {}
    for peer in config.peers:
        if peer.endpoint is not None:
            endpoints[peer.public_key] = await resolve_endpoint(peer.endpoint.host,
                                                                peer.endpoint.port)
    tun, offload_mode = _open_tun_with_offloads(config.interface_name, tun_queues, offload)
    network: InterfaceNetwork | None = None
    udp: UdpSockets | None = None
    try:
        for fd in tun.fds:
            os.set_blocking(fd, False)
        network = InterfaceNetwork(config.interface_name)
        allowed = [net for peer in config.peers for net in peer.allowed_ips]
        full_tunnel = network.apply(addresses=list(iface.addresses), mtu=mtu, allowed_ips=allowed)
        udp = open_udp(iface.listen_port, fwmark=full_tunnel.fwmark if full_tunnel else None)
        tunnel = Device(iface.private_key, mtu=mtu)
        for peer in config.peers:
            tunnel.add_peer(
                peer.public_key, preshared_key=peer.preshared_key, allowed_ips=peer.allowed_ips,
                endpoint=endpoints.get(peer.public_key),
                persistent_keepalive=peer.persistent_keepalive,
            )
        if datapath_kernels.IMPLEMENTATION != "native":
            log.warning("data path kernels: the Python twin (%s), 2-4x slower per packet than "
                        "the native ones", datapath_kernels.REASON)
        log_info(f"interface {config.interface_name} up: mtu {mtu}, udp port {udp.port}, "
                 f"{len(config.peers)} peer(s), {tun_queues} TUN queue(s) ({tun_io}), "
                 f"UDP GSO {'on' if gso else 'off'}, TUN offload {offload_mode or 'off'}, "
                 f"{datapath_kernels.IMPLEMENTATION} data path kernels"
                 + (f", full tunnel via table {full_tunnel.fwmark}" if full_tunnel else ""))
        sender = BatchSender(tunnel.counters, gso=gso)
        return TunnelShell(config, tunnel, tun, udp, network, sender, tun_io=tun_io,
                           offload=TunOffload(offload_mode) if offload_mode else None)
    except BaseException:
        if udp is not None:
            udp.close()
        if network is not None:
            network.close()
        tun.close()
        raise


def _open_tun_with_offloads(name: str, queues: int, offload: bool) -> tuple[TunDevice, str | None]:
    """Open the TUN device with a vnet header and the richest offloads the kernel accepts, falling
    back step by step (no USO, no TSO, and finally no vnet header at all)."""
    if offload:
        tun = open_tun(name, queues=queues, flags=IFF_VNET_HDR)
        try:
            mode = enable_offloads(tun)
        except BaseException:
            tun.close()
            raise
        if mode is not None:
            return tun, mode
        log.warning("the kernel accepts no TUN offloads; using plain TUN I/O")
        tun.close()  # not persistent: the device is gone, so the name is free again
    return open_tun(name, queues=queues), None


def close_tunnel(shell: TunnelShell) -> None:
    shell.udp.close()
    shell.network.close()
    shell.tun.close()


async def run_until_signalled(config: Config, *, tun_queues: int = DEFAULT_TUN_QUEUES,
                              gso: bool = True, tun_io: str = DEFAULT_TUN_IO,
                              offload: bool = True) -> None:
    """`fz-trio up`: run the tunnel until SIGINT/SIGTERM, then tear everything down."""
    shell = await build_tunnel(config, tun_queues=tun_queues, gso=gso, tun_io=tun_io,
                               offload=offload)
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
        io = attrs.asdict(shell.stats) | attrs.asdict(
            shell.sender, filter=lambda a, _: a.name != "counters")
        io["datapath"] = attrs.asdict(shell.tunnel.stats)
        if shell.offload is not None:
            io["offload"] = attrs.asdict(shell.offload)
        log.info("stopped; stats: %s", json.dumps({"counters": counters, "io": io}))
