"""The Device: the protocol core and the data path together — a whole WireGuard interface, no IO.

The core (`Tunnel`) decides which peer, which session, which counters and which endpoint; the
Device cuts what arrives into runs and hands each run to one kernel call (`kernels`): seal a run
of packets or the segments of a TSO/USO super-packet into GSO slots, open the run of datagrams of
one UDP GRO read that belongs to one session. Inputs and outputs:

    device.send_packets(ip_packets, now, wall)      # from TUN (send_packet: one)
    device.send_reads(vnet_reads, now, wall)        # from a TUN opened with IFF_VNET_HDR
    device.receive_batch(buf, n, size, src, now, wall)  # a UDP GRO read (receive_datagram: one)
    device.process_handshakes(now, wall, limit)     # the queued ones, with handshakes_inline off
    device.handle_timeout(now, wall)                # when now >= device.poll_timeout()
    device.flush_outbox()                           # after a live configuration change
    device.take_batches() / recycle(batches)       # GSO batches for UDP (take_transmits: each)
    device.take_tun_packets()                      # plaintext packets for TUN

Every input ends by sealing what the core itself asked to send (keepalives, staged packets) and
queueing its handshake messages, so the outputs are complete after each call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from fz_trio.core import (
    TRANSPORT_MIN_LEN,
    TYPE_TRANSPORT,
    Endpoint,
    Peer,
    SendGrant,
    Session,
    Transmit,
    Tunnel,
    ip,
    padded_length,
)
from fz_trio.datapath import kernels
from fz_trio.datapath.gso import MAX_BATCH_BYTES, Batch, GsoBatcher
from fz_trio.datapath.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    VNET_HDR,
    VNET_HDR_LEN,
    OffloadError,
    Segments,
    plain_packet,
)
from fz_trio.datapath.replay import new_window

Buffer = bytes | bytearray | memoryview

TRANSPORT_OVERHEAD = TRANSPORT_MIN_LEN  # header + tag: what a transport message adds
# A transport message must fit one UDP datagram and one GSO buffer.
MAX_PLAINTEXT = MAX_BATCH_BYTES - TRANSPORT_OVERHEAD
# Inner source addresses remembered per peer and family as already checked against AllowedIPs.
_KNOWN_SOURCES = 8
_TRANSPORT_TYPE = bytes([TYPE_TRANSPORT, 0, 0, 0])


@attrs.define
class DataPathStats:
    """What the data path did (beside the core's counters): for the stats and the REPL."""

    kernels: str = kernels.IMPLEMENTATION
    super_packets_read: int = 0
    segments_from_super_packets: int = 0
    seal_calls: int = 0
    open_calls: int = 0


class Device(Tunnel):
    """A Tunnel with its data path: takes and gives bytes in runs."""

    def __init__(self, private_key: bytes | None, **kwargs: Any) -> None:
        super().__init__(private_key, **kwargs)
        self.stats = DataPathStats()
        self._batcher = GsoBatcher()
        self._tun_packets: list[bytearray] = []
        # peer -> [IPv4 sources, IPv6 sources] (addresses back to back) its AllowedIPs hold.
        self._sources: dict[Peer, list[bytes]] = {}
        self._sources_version = self.routes_version

    # --- from TUN -----------------------------------------------------------------------------

    def send_packet(self, packet: Buffer, now: float, wall: float) -> None:
        self.send_packets((packet,), now, wall)

    def send_packets(self, packets: Iterable[Buffer], now: float, wall: float) -> None:
        """IP packets read from TUN: routed by destination; consecutive packets to one peer are
        sealed as one run."""
        self._route_and_seal(packets, now, wall)
        self.flush_outbox()

    def send_reads(self, reads: Iterable[Buffer], now: float, wall: float) -> int:
        """TUN reads that start with a virtio_net_hdr: plain packets (a partial checksum is
        completed) and TSO/USO super-packets, each super-packet sealed in runs of its segments.
        Returns how many packets the reads carried; a malformed read is a counted drop."""
        plain: list[Buffer] = []
        count = 0
        for read in reads:
            if len(read) <= VNET_HDR_LEN:
                self.counters.drop("tun_malformed_offload")
                continue
            if read[1] == GSO_NONE and not read[0] & F_NEEDS_CSUM:
                plain.append(memoryview(read)[VNET_HDR_LEN:])
                continue
            try:
                # The header's fields as a tuple: a VnetHeader object costs more than the plan.
                flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = (
                    VNET_HDR.unpack_from(read))
                gso_type &= ~GSO_ECN
                if gso_type == GSO_NONE:  # plain, with a partial checksum (the ACKs, mostly)
                    plain.append(plain_packet(memoryview(read)[VNET_HDR_LEN:], flags, csum_start,
                                              csum_offset))
                    continue
                # A super-packet: hdr_len and the checksum offsets are the kernel's hints; the
                # plan reads the headers themselves.
                segments = Segments.plan(memoryview(read)[VNET_HDR_LEN:], gso_size, gso_type)
            except OffloadError:
                self.counters.drop("tun_malformed_offload")
                continue
            if plain:  # keep the order of the reads
                count += len(plain)
                self._route_and_seal(plain, now, wall)
                plain = []
            self.stats.super_packets_read += 1
            self.stats.segments_from_super_packets += segments.count
            count += segments.count
            self._send_segments(segments, now, wall)
        if plain:
            count += len(plain)
            self._route_and_seal(plain, now, wall)
        self.flush_outbox()
        return count

    def send_segments(self, segments: Segments, now: float, wall: float) -> None:
        """The segments of a TUN super-packet: routed once, built and sealed in runs."""
        self._send_segments(segments, now, wall)
        self.flush_outbox()

    def _route_and_seal(self, packets: Iterable[Buffer], now: float, wall: float) -> None:
        run: list[Buffer] = []
        run_peer: Peer | None = None
        last_destination: bytes | None = None
        peer: Peer | None = None
        for packet in packets:
            destination = ip.destination(packet)
            if destination != last_destination or destination is None:
                peer = self.route(destination)
                last_destination = destination
            if peer is None:
                self.counters.drop("no_route" if len(packet) >= 20 else "tun_not_ip")
                continue
            if peer is not run_peer:
                if run_peer is not None:
                    self._send_run(run_peer, run, now, wall)
                run, run_peer = [], peer
            run.append(packet)
        if run_peer is not None:
            self._send_run(run_peer, run, now, wall)

    def _send_run(self, peer: Peer, packets: Sequence[Buffer], now: float, wall: float) -> None:
        if any(len(p) > MAX_PLAINTEXT for p in packets):
            self.counters.drop("packet_too_big", sum(len(p) > MAX_PLAINTEXT for p in packets))
            packets = [p for p in packets if len(p) <= MAX_PLAINTEXT]
            if not packets:
                return
        grant = self.grant_or_stage(peer, len(packets), lambda i: packets[i:], now, wall,
                                    data=any(map(len, packets)))
        if grant is not None:
            self._seal(peer, grant, packets[:grant.count])

    def _seal(self, peer: Peer, grant: SendGrant, packets: Sequence[Buffer]) -> None:
        """Seal `packets` under `grant`: runs of equal padded length into equal GSO slots."""
        mtu = self.mtu
        reserve, reserve_run = self._batcher.reserve, self._batcher.reserve_run
        seal = kernels.seal_packets
        key, receiver, endpoint = grant.key, grant.receiver_index, grant.endpoint
        counter = grant.counter
        n = len(packets)
        sent = 0
        i = 0
        while i < n:
            padded = padded_length(len(packets[i]), mtu)
            j = i + 1
            while j < n and padded_length(len(packets[j]), mtu) == padded:
                j += 1
            slot = padded + TRANSPORT_OVERHEAD
            while i < j:
                if j - i == 1:  # may close a batch of longer slots
                    buffer, offset = reserve(endpoint, slot)
                    fit = 1
                else:
                    buffer, offset, fit = reserve_run(endpoint, slot, j - i)
                seal(packets, i, fit, buffer, offset, slot, padded, key, receiver, counter)
                self.stats.seal_calls += 1
                i += fit
                counter += fit
                sent += fit * slot
        peer.count_sent(sent)

    def _send_segments(self, segments: Segments, now: float, wall: float) -> None:
        peer = self.route(segments.destination)
        count = segments.count
        if peer is None:
            self.counters.drop("no_route", count)
            return
        if segments.full_length > MAX_PLAINTEXT:
            self.counters.drop("packet_too_big", count)
            return
        grant = self.grant_or_stage(peer, count, lambda i: segments.packets()[i:], now, wall)
        if grant is None:
            return
        count = grant.count
        mtu = self.mtu
        seal = kernels.seal_segments
        key, receiver, endpoint = grant.key, grant.receiver_index, grant.endpoint
        packet, size = segments.packet, segments.size
        full = min(segments.full_count, count)
        padded = padded_length(segments.full_length, mtu)
        slot = padded + TRANSPORT_OVERHEAD
        sent = 0
        i = 0
        while i < full:
            buffer, offset, fit = self._batcher.reserve_run(endpoint, slot, full - i)
            seal(packet, size, i, fit, buffer, offset, slot, padded, key, receiver,
                 grant.counter + i)
            i += fit
            sent += fit * slot
        if full < count:  # a shorter last segment
            padded = padded_length(segments.length(full), mtu)
            slot = padded + TRANSPORT_OVERHEAD
            buffer, offset = self._batcher.reserve(endpoint, slot)
            seal(packet, size, full, 1, buffer, offset, slot, padded, key, receiver,
                 grant.counter + full)
            sent += slot
        self.stats.seal_calls += 1
        peer.count_sent(sent)

    # --- from UDP -----------------------------------------------------------------------------

    def receive_datagram(self, data: Buffer, source: Endpoint, now: float, wall: float) -> None:
        """One UDP datagram from `source`."""
        self.receive_batch(data, len(data), len(data), source, now, wall)

    def receive_batch(self, buffer: Buffer, nbytes: int, size: int, source: Endpoint,
                      now: float, wall: float) -> None:
        """The datagrams of one UDP GRO read, all from `source`: back to back in
        `buffer[:nbytes]`, each `size` bytes but the last. Each run of transport messages for
        one session is opened by one kernel call; anything else goes to the core."""
        if nbytes <= 0 or size <= 0:
            self.counters.drop("malformed")  # an empty datagram
            return
        view = memoryview(buffer)
        start = 0
        if size % 16 and view[:4] != _TRANSPORT_TYPE:
            # No transport message is `size` long (theirs are 32 + 16k bytes), so every full
            # datagram of this read is a handshake message (or junk): one call for all, which
            # under a flood of them costs per read, not per datagram. A short last one may be
            # anything and goes through the loop below.
            start = nbytes - nbytes % size
            self.receive_handshakes(view, 0, start, size, source, now, wall)
        while start < nbytes:
            end = min(start + size, nbytes)
            if end - start < TRANSPORT_MIN_LEN or view[start:start + 4] != _TRANSPORT_TYPE:
                self.receive_handshake(view[start:end], source, now, wall)
                start += size
                continue
            receiver = int.from_bytes(view[start + 4:start + 8], "little")
            entry = self.receiving_session(receiver)
            if entry is None:
                self.counters.drop("unknown_index")
                start += size
                continue
            start = self._open_run(view, start, nbytes, size, receiver, entry[0], entry[1],
                                   source, now, wall)
        self.flush_outbox()

    def _open_run(self, view: memoryview, start: int, nbytes: int, size: int, receiver: int,
                  peer: Peer, session: Session, source: Endpoint, now: float, wall: float) -> int:
        if session.receive_state is None:
            session.receive_state = new_window()
        known = self._known_sources(peer)
        (next_start, packets, unchecked, datagram_bytes, plain_bytes, expired, forged,
         not_ip) = kernels.open_run(view, start, nbytes, size, receiver, session.receiving_key,
                                    session.receive_state,
                                    session.receive_limit(now, self.timers), known[0], known[1])
        self.stats.open_calls += 1
        counters = self.counters
        if expired:
            counters.drop("session_expired", expired)
        if forged:
            counters.drop("replay_or_forged", forged)
        if not_ip:
            counters.drop("inner_not_ip", not_ip)
        if unchecked:
            packets = self._check_sources(peer, packets, unchecked, known)
        if packets:
            self._tun_packets.extend(packets)
            counters.packets_to_tun += len(packets)
        self.session_received(peer, session, datagram_bytes, plain_bytes, source, now, wall)
        return max(next_start, start + size)

    def _known_sources(self, peer: Peer) -> list[bytes]:
        if self._sources_version != self.routes_version:
            self._sources.clear()
            self._sources_version = self.routes_version
        known = self._sources.get(peer)
        if known is None:
            known = self._sources[peer] = [b"", b""]
        return known

    def _check_sources(self, peer: Peer, packets: list[bytearray], unchecked: list[int],
                       known: list[bytes]) -> list[bytearray]:
        """Cryptokey routing for inner sources not yet known to be the peer's: drop (counted)
        the packets whose source the peer may not use, remember the ones it may."""
        refused: set[int] = set()
        for i in unchecked:
            address = ip.source(packets[i])
            if not self.source_allowed(peer, address):
                refused.add(i)
                continue
            assert address is not None
            family = 0 if len(address) == 4 else 1
            width = len(address)
            if address not in _addresses(known[family], width):
                kept = known[family][-(_KNOWN_SOURCES - 1) * width:] if known[family] else b""
                known[family] = kept + address
        if not refused:
            return packets
        self.counters.drop("source_not_allowed", len(refused))
        return [p for k, p in enumerate(packets) if k not in refused]

    def process_handshakes(self, now: float, wall: float, limit: int) -> int:
        """Queued handshake messages (see `Tunnel.process_handshakes`), then what they made
        the core send: responses, cookie replies, the packets staged for a new session."""
        left = super().process_handshakes(now, wall, limit)
        self.flush_outbox()
        return left

    # --- timers -------------------------------------------------------------------------------

    def start(self, now: float, wall: float) -> None:
        super().start(now, wall)
        self.flush_outbox()

    def handle_timeout(self, now: float, wall: float) -> None:
        super().handle_timeout(now, wall)
        self.flush_outbox()

    def flush_outbox(self) -> None:
        """Seal and queue what the core wants sent (granted already): every input does this at
        its end; a caller that changed the configuration live (a keepalive turned on, a peer
        added) does it too."""
        while self.outbox:
            outbox = self.take_outbox()
            for datagram, endpoint in outbox.transmits:
                self._batcher.append((datagram, endpoint))
            for peer, grant, packets in outbox.sealable:
                self._seal(peer, grant, packets)

    # --- outputs ------------------------------------------------------------------------------

    def take_batches(self) -> list[Batch]:
        """Datagrams grouped for UDP GSO (one `sendmsg` each); hand them back with `recycle`."""
        batches = self._batcher.take()
        self.counters.packets_to_network += sum(b.count for b in batches)
        return batches

    def recycle(self, batches: list[Batch]) -> None:
        self._batcher.recycle(batches)

    def take_transmits(self) -> list[Transmit]:
        """Each datagram separately, as bytes (tests, the simulator)."""
        batches = self.take_batches()
        out: list[Transmit] = [(bytes(d), b.endpoint) for b in batches for d in b.datagrams()]
        self.recycle(batches)
        return out

    def take_tun_packets(self) -> list[bytearray]:
        out, self._tun_packets = self._tun_packets, []
        return out


def _addresses(packed: bytes, width: int) -> list[bytes]:
    return [packed[i:i + width] for i in range(0, len(packed), width)]
