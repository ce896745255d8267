"""A tiny in-memory pump between sans-IO `Device`s, for tests.

Every tunnel sits at an address; whatever a tunnel transmits is delivered to the tunnel at the
addressed endpoint after `latency` seconds of simulated time, and `run_until` fires each tunnel's
timers when its `poll_timeout()` is due. One optional `hook` sees every datagram and may drop,
duplicate, delay (reorder) or rewrite it. Packets a tunnel writes to TUN are collected per tunnel.

A full simulated network (loss models, NAT, many hosts) is a separate module; this one stays small.
Also here: deterministic randomness and IP packet builders shared by the core tests.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

import attrs

from fz_trio.datapath import Device

Endpoint = tuple[str, int]


@attrs.frozen
class Datagram:
    sent_at: float
    src: Endpoint
    dst: Endpoint
    data: bytes


# None: deliver unchanged. Otherwise deliver each (data, extra_delay): [] drops the datagram,
# two entries duplicate it, an extra delay lets later datagrams overtake it.
Hook = Callable[[Datagram], "list[tuple[bytes, float]] | None"]


class MemNet:
    def __init__(self, latency: float | Callable[[Datagram], float] = 0.0, now: float = 0.0,
                 wall_epoch: float = 1_700_000_000.0):
        self.now = now
        self.wall_epoch = wall_epoch  # the wall clock at now == 0
        self.latency = latency
        self.hook: Hook | None = None
        self.on_deliver: Callable[[Datagram], None] | None = None  # sees each arrival first
        self.nodes: dict[Endpoint, Device] = {}
        self.tun: dict[Device, list[bytes]] = {}
        self.wire: list[Datagram] = []  # every datagram transmitted, before the hook
        self.undeliverable: list[Datagram] = []
        self._queue: list[tuple[float, int, Endpoint, Endpoint, bytes]] = []
        self._seq = itertools.count()

    @property
    def wall(self) -> float:
        return self.wall_epoch + self.now

    # --- topology ---------------------------------------------------------------------------

    def add(self, address: Endpoint, tunnel: Device) -> Device:
        self.nodes[address] = tunnel
        self.tun.setdefault(tunnel, [])
        return tunnel

    def address_of(self, tunnel: Device) -> Endpoint:
        return next(a for a, t in self.nodes.items() if t is tunnel)

    def move(self, tunnel: Device, new_address: Endpoint) -> None:
        """The tunnel now sends from (and is reachable only at) `new_address`, like a NAT rebind."""
        del self.nodes[self.address_of(tunnel)]
        self.nodes[new_address] = tunnel

    # --- inputs -----------------------------------------------------------------------------

    def send(self, tunnel: Device, packet: bytes) -> None:
        """`tunnel` reads `packet` from its TUN now."""
        tunnel.send_packet(packet, self.now, self.wall)
        self.flush()

    def inject(self, tunnel: Device, data: bytes, source: Endpoint) -> None:
        """Hand `tunnel` a datagram from anywhere (an attacker, a replay) right now."""
        tunnel.receive_datagram(data, source, self.now, self.wall)
        self.flush()

    def flush(self) -> None:
        """Move every tunnel's transmits onto the wire and its TUN writes into `tun`."""
        for address, tunnel in list(self.nodes.items()):
            for data, dst in tunnel.take_transmits():
                dgram = Datagram(self.now, address, dst, bytes(data))
                self.wire.append(dgram)
                copies = self.hook(dgram) if self.hook is not None else None
                if copies is None:
                    copies = [(dgram.data, 0.0)]
                base = self.latency(dgram) if callable(self.latency) else self.latency
                for payload, extra in copies:
                    at = self.now + base + extra
                    heapq.heappush(self._queue, (at, next(self._seq), address, dst, payload))
            self.tun[tunnel].extend(bytes(p) for p in tunnel.take_tun_packets())

    # --- time -------------------------------------------------------------------------------

    def next_event(self) -> float | None:
        times = [t.poll_timeout() for t in self.nodes.values()]
        times = [t for t in times if t is not None]
        if self._queue:
            times.append(self._queue[0][0])
        return min(times) if times else None

    def run_until(self, end: float) -> None:
        """Deliver datagrams and fire timers in time order up to and including `end`."""
        self.flush()
        spins = 0
        while (at := self.next_event()) is not None and at <= end:
            spins = spins + 1 if at <= self.now else 0
            assert spins < 10_000, f"no progress at t={self.now}: a timer keeps firing"
            self.now = max(self.now, at)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, src, dst, data = heapq.heappop(self._queue)
                tunnel = self.nodes.get(dst)
                if tunnel is None:
                    self.undeliverable.append(Datagram(self.now, src, dst, data))
                    continue
                if self.on_deliver is not None:
                    self.on_deliver(Datagram(self.now, src, dst, data))
                tunnel.receive_datagram(data, src, self.now, self.wall)
                self.flush()
            for tunnel in list(self.nodes.values()):
                deadline = tunnel.poll_timeout()
                if deadline is not None and deadline <= self.now:
                    tunnel.handle_timeout(self.now, self.wall)
                    self.flush()
        self.now = max(self.now, end)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)


# --- helpers shared by the core tests ---------------------------------------------------------


def det_random(seed: int | str) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom."""
    rng = random.Random(seed)
    return rng.randbytes


def private_key(seed: int | str) -> bytes:
    key = bytearray(random.Random(f"key-{seed}").randbytes(32))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)
