"""The packet loops of a running interface: TUN, UDP and timers around one Device.

Tasks, all children of one nursery (cancelling it is the shutdown path):
- one TUN reader per queue fd: waits for readability, drains up to a tick of packets, hands
  them to the core and sends what it sealed (inline mode: all in one task; threads mode: a
  reader thread per fd hands batches over a channel to one task that does the rest);
- one UDP reader per socket: likewise for datagrams, and it writes the decrypted packets to
  TUN itself (inline) or hands them to a writer thread per fd (threads);
- the timer task: sleeps until the core's next deadline (`poll_timeout`), which the readers
  pull earlier whenever the core's answer changes;
- the handshake task: the handshake messages the UDP readers queued in the core (bounded,
  rate-limited per source under load), a few per turn, so that transport data always goes
  first and a handshake flood cannot starve it.
After each batch the loops flush what the core produced: datagrams to UDP, packets to TUN.
Opening and closing the devices, sockets and routes is `fz_trio.app`'s; these loops own only
what they start.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable

import attrs
import trio

from fz_trio.core import TYPE_TRANSPORT, ip
from fz_trio.datapath import MAX_SEGMENTS, Device
from fz_trio.shell.stats import IoStats
from fz_trio.shell.tun import TunDevice
from fz_trio.shell.tun_io import (
    DEFAULT_TUN_IO,
    READ_BATCH,
    READ_BATCH_BYTES,
    ItemWriter,
    ReaderHandoff,
    TunIo,
    Waker,
    read_tick,
    run_reader,
    run_writer,
    write_packet,
    write_pending,
)
from fz_trio.shell.tun_offload import TunOffload, WriteItem
from fz_trio.shell.udp import (
    SOCKET_BUFFER_BYTES,
    UNDER_LOAD_BUFFER_BYTES,
    BatchSender,
    UdpSockets,
    enable_gro,
    receive_segments,
    set_receive_buffer,
)

log = logging.getLogger(__name__)

# Bounded channels hold at most this many packets each way (the design card's 1000): items are
# batches, so the capacity in items is this divided by the largest batch.
CHANNEL_PACKETS = 1000
# ... and at most this many bytes: with TUN offloads one read is a 64 KB super-packet, and 1000
# reads would queue 64 MB (tens of milliseconds of delay at full speed). 512 KB is ~1.5 ms at
# 3 Gbit/s: what waits in our channels is bounded in time, not only in packets.
CHANNEL_BYTES = 512 * 1024
# Reads the loop takes from TUN per tick (with offloads a read is up to 64 KB, so the tick also
# ends at READ_BATCH_BYTES) before it sends what it sealed.
TICK_PACKETS = 100
INBOUND_TICK_PACKETS = 64  # decrypt at least this many before handing a batch to the writers
# Handshake messages handled per turn of the handshake task (a full key exchange is a few
# hundred microseconds of X25519): between turns every reader gets the loop.
HANDSHAKES_PER_TURN = 8
_LOAD_RECHECK = 2.0  # seconds: how soon the end of an under-load period is noticed for the log
_INBOUND_ITEM_MAX = INBOUND_TICK_PACKETS + MAX_SEGMENTS  # the last recvmsg may add up to 64


# What goes to a TUN writer: plain packets, or (vnet header, packet) items with offloads on.
WriterBatch = list[bytearray] | list[WriteItem]


@attrs.define
class PacketLoops:
    """The loops of one interface, over devices and sockets that `fz_trio.app` opened."""

    device: Device
    tun: TunDevice
    udp: UdpSockets
    sender: BatchSender
    stats: IoStats
    tun_io: TunIo = DEFAULT_TUN_IO
    offload: TunOffload | None = None
    _timer_scope: trio.CancelScope | None = None
    _udp_scope: trio.CancelScope | None = None
    _udp_readers_stopped: trio.Event | None = None
    _writers: list[trio.MemorySendChannel[WriterBatch]] = attrs.Factory(list)  # threads mode
    _tun_write_locks: list[trio.Lock] = attrs.Factory(list)  # inline mode, one per fd
    _handshakes_queued: trio.Event = attrs.Factory(trio.Event)
    _under_load_since: float | None = None
    _drops_at_load: int = 0

    def now(self) -> float:
        return trio.current_time()

    def _count_error_from_thread(self, where: str) -> Callable[[int], None]:
        """A callback for a worker thread that counts an errno, on the Trio thread."""
        error = self.stats.error

        def count(err: int) -> None:
            trio.from_thread.run_sync(error, where, err)
        return count

    # --- core output -> UDP ----------------------------------------------------------------

    async def flush_network(self) -> None:
        batches = self.device.take_batches()
        for batch in batches:
            sock = self.udp.for_host(batch.endpoint[0])
            if sock is None:
                self.stats.error("no_socket_for_family", count=batch.count)
                continue
            await self.sender.send(sock, batch)
        self.device.recycle(batches)
        self._reschedule()

    # --- core output -> TUN writer threads --------------------------------------------------

    async def deliver_to_tun(self) -> None:
        packets = self.device.take_tun_packets()
        if not packets:
            return
        offload = self.offload
        n = len(self.tun.fds)
        if n == 1:
            await self._to_tun(0, offload.items_for_writer(packets) if offload else packets)
            return
        # Pin each flow to one queue so that queues never reorder a flow.
        per_queue: list[list[bytearray]] = [[] for _ in range(n)]
        for packet in packets:
            per_queue[ip.flow_hash(packet) % n].append(packet)
        for queue, batch in enumerate(per_queue):
            if batch:
                await self._to_tun(queue, offload.items_for_writer(batch) if offload else batch)

    async def _to_tun(self, queue: int, batch: WriterBatch) -> None:
        if self.tun_io is TunIo.THREADS:  # the queue's writer thread
            await self._writers[queue].send(batch)
            return
        # inline: written here, by the UDP reader that decrypted them. A TUN write takes the
        # packet into the stack at once and hardly ever blocks; when it does, this reader waits
        # (the backpressure), one task per fd at a time (Trio allows one waiter per fd).
        fd = self.tun.fds[queue]
        pending = deque(batch)
        while True:
            try:
                if not write_pending(fd, pending, self._write_item, self._tun_write_error):
                    return
            except OSError as e:  # EBADF: counted like any refused write, as before
                self._tun_write_error(e.errno or 0)
                pending.popleft()
                continue
            async with self._tun_write_locks[queue]:
                await trio.lowlevel.wait_writable(fd)

    def _tun_read_error(self, err: int) -> None:
        self.stats.error("tun_read", err)

    def _tun_write_error(self, err: int) -> None:
        self.stats.error("tun_write", err)

    @property
    def _write_item(self) -> ItemWriter:
        return self.offload.write_item if self.offload else write_packet

    def _reschedule(self) -> None:
        """Pull the timer task's wake-up earlier when the core's next deadline moved earlier.
        A deadline that moved later (every packet pushes the keepalive timers back) is left:
        the timer task wakes at the old one, finds nothing due and sleeps again until the
        real one, which costs one wake-up instead of a deadline update per batch."""
        scope = self._timer_scope
        if scope is not None:
            deadline = self.device.poll_timeout()
            if deadline is not None and deadline < scope.deadline:
                scope.deadline = deadline

    # --- the loops ----------------------------------------------------------------------------

    def _seal_reads(self, batch: list[bytes], now: float, wall: float) -> int:
        """TUN reads to the Device (sealed into GSO batches); how many packets they carried."""
        if self.offload is None:
            self.device.send_packets(batch, now, wall)
            return len(batch)
        return self.device.send_reads(batch, now, wall)

    async def _tun_reader(self, fd: int) -> None:
        """Inline mode: TUN queue fd -> core (seal into GSO batches) -> one sendmsg per batch,
        a tick at a time. After a tick that did not empty the fd, a plain checkpoint lets the
        other tasks in and the reading goes on without a new wait for readability."""
        stats = self.stats
        while True:
            await trio.lowlevel.wait_readable(fd)
            while True:
                tick = read_tick(fd, self._tun_read_error, TICK_PACKETS, READ_BATCH_BYTES)
                if tick is None:
                    return
                batch, dry = tick
                if batch:
                    stats.tun_packets_read += self._seal_reads(batch, self.now(), time.time())
                    stats.tun_batches_read += 1
                    await self.flush_network()
                if dry:
                    break
                await trio.lowlevel.checkpoint()

    async def _outbound(self, receive: trio.MemoryReceiveChannel[list[bytes]],
                        handoff: ReaderHandoff) -> None:
        """Threads mode: the reader threads' batches -> core (encrypt into GSO batches) -> one
        sendmsg per batch."""
        stats = self.stats
        async for batch in receive:
            now, wall = self.now(), time.time()
            taken = 0
            while True:
                handoff.consumed()
                taken += self._seal_reads(batch, now, wall)
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
        """UDP (GRO) -> core (decrypt) -> TUN. A tick ends when the socket is empty (then the
        reader waits for it) or after INBOUND_TICK_PACKETS (then a checkpoint, and on)."""
        buffer = bytearray(65535)
        receive = self.device.receive_batch
        stats = self.stats
        dry = True
        while True:
            if dry:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint()
            now, wall = self.now(), time.time()
            received = datagrams = 0
            dry = False
            while received < INBOUND_TICK_PACKETS:
                try:
                    nbytes, segment, source = receive_segments(sock, buffer)
                except BlockingIOError:
                    dry = True
                    break
                except OSError as e:  # e.g. ICMP port unreachable reported on the socket
                    self.stats.error("udp_receive", e.errno)
                    continue
                stats.udp_receive_calls += 1
                receive(buffer, nbytes, segment, source, now, wall)
                count = -(-nbytes // segment) if segment else 1
                datagrams += count
                # Only data fills the tick: a GRO read of a handshake flood is dropped or
                # queued at once and counts as one, so that under a flood the socket is still
                # drained many reads per tick and its buffer never fills with the flood.
                received += count if buffer[0] == TYPE_TRANSPORT else 1
            stats.udp_datagrams_received += datagrams
            if self.device.handshakes_pending:
                self._handshakes_queued.set()
            await self.flush_network()
            await self.deliver_to_tun()

    async def _handshakes(self) -> None:
        """The queued handshake messages, HANDSHAKES_PER_TURN at a time, with a checkpoint
        between turns: the readers' data is never behind a backlog of handshakes."""
        device = self.device
        while True:
            if self._under_load_since is None:
                await self._handshakes_queued.wait()
            else:
                with trio.move_on_after(_LOAD_RECHECK):
                    await self._handshakes_queued.wait()
            self._handshakes_queued = trio.Event()
            while device.process_handshakes(self.now(), time.time(), HANDSHAKES_PER_TURN):
                await self.flush_network()
                await trio.sleep(0)
            await self.flush_network()
            self._follow_load()

    def _follow_load(self) -> None:
        """When the responder starts and stops being under load: a log line each time, and
        the larger socket buffer a flood needs (see UNDER_LOAD_BUFFER_BYTES)."""
        now = self.now()
        drops = self.device.counters.drops
        dropped = drops["handshake_rate_limited"] + drops["handshake_queue_full"]
        if self.device.under_load(now):
            if self._under_load_since is None:
                self._under_load_since, self._drops_at_load = now, dropped
                set_receive_buffer(self.udp, UNDER_LOAD_BUFFER_BYTES)
                log.warning("under load: handshake messages need a cookie and are rate-limited "
                            "per source")
        elif self._under_load_since is not None:
            log.warning("no longer under load after %.1f s; %d handshake messages dropped",
                        now - self._under_load_since, dropped - self._drops_at_load)
            self._under_load_since = None
            set_receive_buffer(self.udp, SOCKET_BUFFER_BYTES)

    async def _udp_readers(self) -> None:
        """One reader per socket of `self.udp`, started again on new sockets after
        `replace_udp` (a new listen port)."""
        while True:
            with trio.CancelScope() as self._udp_scope:
                async with trio.open_nursery() as nursery:
                    for sock in self.udp.all():
                        enable_gro(sock)
                        nursery.start_soon(self._inbound, sock)
            if self._udp_readers_stopped is not None:
                self._udp_readers_stopped.set()

    async def replace_udp(self, udp: UdpSockets) -> UdpSockets:
        """Carry on with the sockets `udp`; returns the old ones, whose readers have stopped
        (the caller closes them, after `trio.lowlevel.notify_closing`)."""
        old, self.udp = self.udp, udp
        if self._under_load_since is not None:  # the flood goes on at the new port too
            set_receive_buffer(udp, UNDER_LOAD_BUFFER_BYTES)
        if self._udp_scope is not None:
            self._udp_readers_stopped = stopped = trio.Event()
            self._udp_scope.cancel()
            await stopped.wait()
            self._udp_readers_stopped = None
        return old

    async def _timers(self) -> None:
        while True:
            deadline = self.device.poll_timeout()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline
                                  ) as self._timer_scope:
                await trio.sleep_forever()
            self.device.handle_timeout(self.now(), time.time())
            await self.flush_network()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        waker = Waker()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wake_when_cancelled, waker)
                if self.tun_io is TunIo.THREADS:
                    limiter = trio.CapacityLimiter(2 * len(self.tun.fds))
                    tun_items = max(1, min(CHANNEL_PACKETS // READ_BATCH,
                                           CHANNEL_BYTES // READ_BATCH_BYTES))
                    tun_send, tun_receive = trio.open_memory_channel[list[bytes]](tun_items)
                    handoff = ReaderHandoff(tun_send, tun_items, waker)
                    read_errors = self._count_error_from_thread("tun_read")
                    write_errors = self._count_error_from_thread("tun_write")
                    for fd in self.tun.fds:
                        writer_send, writer_receive = trio.open_memory_channel[WriterBatch](
                            max(1, min(CHANNEL_PACKETS // _INBOUND_ITEM_MAX,
                                       CHANNEL_BYTES // (_INBOUND_ITEM_MAX * self.device.mtu))))
                        self._writers.append(writer_send)
                        nursery.start_soon(run_reader, fd, waker, handoff, read_errors, limiter)
                        nursery.start_soon(run_writer, fd, waker, writer_receive, write_errors,
                                           limiter, self._write_item)
                    nursery.start_soon(self._outbound, tun_receive, handoff)
                else:
                    for fd in self.tun.fds:
                        self._tun_write_locks.append(trio.Lock())
                        nursery.start_soon(self._tun_reader, fd)
                nursery.start_soon(self._udp_readers)
                nursery.start_soon(self._timers)
                nursery.start_soon(self._handshakes)
                self.device.handshakes_inline = False
                self.device.start(self.now(), time.time())
                await self.flush_network()
                task_status.started()
        finally:
            waker.close()


async def _wake_when_cancelled(waker: Waker) -> None:
    try:
        await trio.sleep_forever()
    finally:
        waker.wake()
