"""A userspace UDP impairment relay for the test network (docs/impairment.md).

This kernel has no sch_netem, so loss, delay and the rest are made here: the relay listens on one
address, forwards every datagram it receives there to the real WireGuard endpoint, and forwards
the endpoint's replies back to whoever sent last (one client, as a NAT with one mapping):

    client --> listen socket [up pipe]   --> forward socket --> server
    client <-- listen socket [down pipe] <-- forward socket <-- server

Each direction (a `Pipe`) applies its own `Impairment`, in this order: blackout, loss,
duplication, reordering (a datagram held back until the next one(s) passed it), delay with
jitter (which reorders by itself too), a token-bucket rate limit with a bounded queue. Every
random choice comes from `random.Random` instances seeded from `--seed`, one per direction and
kind, so the same seed makes the same choices and turning one impairment on does not change the
choices of another. `Pipe` is plain Python driven by `now` (unit-testable without sockets or
clocks); `Relay` moves bytes with Trio.

Run it as a process in a namespace (`python -m fz_trio.lab.impair --help`); it prints one JSON
line `{"event": "ready", ...}` once its sockets are bound, then reads commands on stdin, one per
line, each answered by one JSON line on stdout: `stats`, `blackout on|off|SECONDS [up|down]`,
`rebind [PORT]` (a new forward socket, so the server sees the client roam, as after a NAT
rebinding), `set up|down|both KEY=VALUE...`, `quit`. SIGUSR1 rebinds, SIGUSR2 toggles the
blackout, SIGTERM/SIGINT end it (a last `{"event": "exit", ...}` line with the counters).
`RelayProcess` is the caller's side of that protocol.

Lab code: the product never imports it. It only ever binds and sends to addresses of the test
network's underlay (198.18.0.0/15, fd00:18::/64) or loopback; anything else is refused before a
socket exists, and datagrams from elsewhere are ignored.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import ipaddress
import itertools
import json
import logging
import math
import random
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from fz_trio.lab.testnet import TestNet, TestNetError, expect_line

__all__ = [
    "ALLOWED_NETWORKS",
    "Counters",
    "Impairment",
    "Pipe",
    "Relay",
    "RelayProcess",
    "format_address",
    "main",
    "parse_address",
    "relay_argv",
]

log = logging.getLogger("fz_trio.lab.impair")

# The test network's underlay (docs/testing.md) and loopback: the only places the relay talks to.
ALLOWED_NETWORKS = tuple(ipaddress.ip_network(n) for n in
                         ("198.18.0.0/15", "fd00:18::/64", "127.0.0.0/8", "::1/128"))

Direction = Literal["up", "down"]
DIRECTIONS: tuple[Direction, Direction] = ("up", "down")
Address = tuple[str, int]


# -- addresses -----------------------------------------------------------------------------------
def allowed(host: str) -> bool:
    """Whether `host` (an IP address literal) is on the test network's underlay or loopback."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in ALLOWED_NETWORKS)


def parse_address(text: str) -> Address:
    """`HOST:PORT` or `[V6HOST]:PORT` with an IP literal on the underlay or loopback."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port_text}")
    try:
        port = int(port_text)
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address and a port, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    if not allowed(host):
        raise ValueError(f"{host} is not on the test network's underlay "
                         "(198.18.0.0/15, fd00:18::/64) or loopback: refused")
    return host, port


def format_address(addr: tuple[Any, ...]) -> str:
    host, port = str(addr[0]), int(addr[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# -- the impairments, sans IO --------------------------------------------------------------------
def _probability(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} is a probability in [0, 1], not {value}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value}")


@attrs.frozen
class Impairment:
    """What one direction does to its datagrams. Times in milliseconds, sizes in bytes."""

    loss: float = attrs.field(default=0.0, converter=float, validator=_probability)
    reorder: float = attrs.field(default=0.0, converter=float, validator=_probability)
    # A held datagram goes out after this many later ones passed it, or after the timeout.
    reorder_gap: int = attrs.field(default=1, converter=int, validator=_non_negative)
    reorder_timeout: float = attrs.field(default=50.0, converter=float, validator=_non_negative)
    duplicate: float = attrs.field(default=0.0, converter=float, validator=_probability)
    delay: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    jitter: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    rate: float = attrs.field(default=0.0, converter=float, validator=_non_negative)  # B/s; 0: none
    burst: int = attrs.field(default=0, converter=int, validator=_non_negative)  # 0: automatic
    queue: int = attrs.field(default=256 * 1024, converter=int, validator=_non_negative)

    def effective_burst(self) -> float:
        return float(self.burst) if self.burst else max(3000.0, self.rate * 0.005)

    def describe(self) -> str:
        default = Impairment()
        parts = [f"{f.name}={getattr(self, f.name):g}" for f in attrs.fields(Impairment)
                 if getattr(self, f.name) != getattr(default, f.name)]
        return " ".join(parts) or "none"


IMPAIRMENT_KEYS = tuple(f.name for f in attrs.fields(Impairment))


def evolve(imp: Impairment, changes: Mapping[str, str | float]) -> Impairment:
    """`imp` with `changes` (keys as in Impairment, `-` for `_` allowed) applied; ValueError."""
    fixed = {key.replace("-", "_"): value for key, value in changes.items()}
    unknown = sorted(set(fixed) - set(IMPAIRMENT_KEYS))
    if unknown:
        raise ValueError(f"unknown impairment {', '.join(unknown)}; "
                         f"known: {', '.join(IMPAIRMENT_KEYS)}")
    try:
        return attrs.evolve(imp, **fixed)
    except TypeError as exc:  # attrs' converters raise it for e.g. int("x")
        raise ValueError(str(exc)) from None


@attrs.define
class Counters:
    """What a pipe did. received + duplicated == forwarded + dropped + in flight."""

    received: int = 0
    forwarded: int = 0
    bytes_forwarded: int = 0
    dropped_loss: int = 0
    dropped_blackout: int = 0
    dropped_queue: int = 0  # the rate limiter's queue was full
    duplicated: int = 0  # extra copies made
    held: int = 0  # datagrams the reorder stage held back
    reordered: int = 0  # datagrams sent after one received later than them (held or jittered)

    @property
    def dropped(self) -> int:
        return self.dropped_loss + self.dropped_blackout + self.dropped_queue

    def as_dict(self) -> dict[str, int]:
        return {**attrs.asdict(self), "dropped": self.dropped}


@attrs.define
class _Held:
    remaining: int
    deadline: float
    seq: int
    data: bytes


# Bytes of rounding error forgiven when tokens are counted in floats: next_due() promises
# enough tokens at a time that pop_due() must then find.
_TOKEN_SLACK = 1e-6


class Pipe:
    """One direction of the relay, driven by `push(data, now)` and `pop_due(now)` (seconds).

    `pop_due` returns the datagrams to send now, in order; `next_due()` says when to call it
    again (None: nothing is waiting).
    """

    def __init__(self, impairment: Impairment | None = None, *, seed: int | str = 0,
                 name: str = "pipe") -> None:
        self.impairment = impairment or Impairment()
        self.counters = Counters()
        self.blackout = False
        # One generator per kind of choice: the loss pattern of a seed stays the same whatever
        # else is switched on.
        self._rng = {kind: random.Random(f"{seed}/{name}/{kind}")
                     for kind in ("loss", "duplicate", "reorder", "delay")}
        self._seq = 0
        self._order = itertools.count()
        self._held: list[_Held] = []
        self._delayed: list[tuple[float, int, int, bytes]] = []  # heap: (due, order, seq, data)
        self._fifo: deque[tuple[int, bytes]] = deque()  # waiting for the rate limiter's tokens
        self._fifo_bytes = 0
        self._tokens = 0.0
        self._tokens_at: float | None = None
        self._max_sent = -1

    @property
    def in_flight(self) -> int:
        return len(self._held) + len(self._delayed) + len(self._fifo)

    def push(self, data: bytes, now: float) -> None:
        imp, counters = self.impairment, self.counters
        counters.received += 1
        seq = self._seq
        self._seq += 1
        if self.blackout:
            counters.dropped_blackout += 1
            return
        if imp.loss and self._rng["loss"].random() < imp.loss:
            counters.dropped_loss += 1
            return
        copies = 1
        if imp.duplicate and self._rng["duplicate"].random() < imp.duplicate:
            counters.duplicated += 1
            copies = 2
        for _ in range(copies):
            if imp.reorder and self._rng["reorder"].random() < imp.reorder:
                counters.held += 1
                self._held.append(_Held(imp.reorder_gap, now + imp.reorder_timeout / 1000,
                                        seq, data))
                continue
            self._delay(seq, data, now)
            if self._held:
                released = []
                for held in self._held:
                    held.remaining -= 1
                    if held.remaining <= 0:
                        released.append(held)
                if released:
                    self._held = [h for h in self._held if h.remaining > 0]
                    for held in released:
                        self._delay(held.seq, held.data, now)

    def _delay(self, seq: int, data: bytes, now: float) -> None:
        imp = self.impairment
        delay = imp.delay
        if imp.jitter:
            delay += self._rng["delay"].uniform(-imp.jitter, imp.jitter)
        heapq.heappush(self._delayed, (now + max(0.0, delay) / 1000, next(self._order), seq, data))

    def pop_due(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        imp = self.impairment
        if self._held:
            expired = [h for h in self._held if h.deadline <= now]
            if expired:
                self._held = [h for h in self._held if h.deadline > now]
                for held in expired:
                    self._delay(held.seq, held.data, now)
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, seq, data = heapq.heappop(delayed)
            if imp.rate > 0 or self._fifo:
                if self._fifo_bytes + len(data) > imp.queue:
                    self.counters.dropped_queue += 1
                    continue
                self._fifo.append((seq, data))
                self._fifo_bytes += len(data)
            else:
                self._emit(seq, data, out)
        if self._fifo:
            self._drain(now, out)
        return out

    def _drain(self, now: float, out: list[bytes]) -> None:
        imp = self.impairment
        if imp.rate <= 0:  # the limit was switched off at run time
            while self._fifo:
                seq, data = self._fifo.popleft()
                self._emit(seq, data, out)
            self._fifo_bytes = 0
            return
        burst = imp.effective_burst()
        if self._tokens_at is None:
            self._tokens = burst
        else:
            self._tokens = min(burst, self._tokens + (now - self._tokens_at) * imp.rate)
        self._tokens_at = now
        while self._fifo:
            seq, data = self._fifo[0]
            if self._tokens < min(len(data), burst) - _TOKEN_SLACK:
                break
            self._fifo.popleft()
            self._fifo_bytes -= len(data)
            self._tokens -= len(data)
            self._emit(seq, data, out)

    def _emit(self, seq: int, data: bytes, out: list[bytes]) -> None:
        counters = self.counters
        if self.blackout:  # a blackout also loses what was on its way
            counters.dropped_blackout += 1
            return
        counters.forwarded += 1
        counters.bytes_forwarded += len(data)
        if seq < self._max_sent:
            counters.reordered += 1
        else:
            self._max_sent = seq
        out.append(data)

    def next_due(self) -> float | None:
        due = math.inf
        if self._held:
            due = min(h.deadline for h in self._held)
        if self._delayed:
            due = min(due, self._delayed[0][0])
        if self._fifo:
            imp = self.impairment
            at = self._tokens_at if self._tokens_at is not None else -math.inf
            if imp.rate <= 0:
                return at
            need = min(len(self._fifo[0][1]), imp.effective_burst()) - self._tokens
            due = min(due, at + max(0.0, need) / imp.rate)
        return None if due == math.inf else due


# -- the relay -----------------------------------------------------------------------------------
def _bigger_buffers(sock: socket.socket) -> None:
    # Datagrams lost in our own socket buffers would be loss nobody asked for.
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        for option in (force, plain):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
                break
            except OSError:
                continue


class Relay:
    """The relay itself: `await relay.run()` until cancelled. One client at a time: replies go
    to whoever sent to the listen socket last."""

    def __init__(self, listen: Address, forward: Address, *, up: Impairment | None = None,
                 down: Impairment | None = None, seed: int = 0,
                 blackouts: Sequence[tuple[float, float]] = ()) -> None:
        for host, _ in (listen, forward):
            if not allowed(host):
                raise ValueError(f"{host} is not on the test network's underlay or loopback")
        if forward[1] == 0:
            raise ValueError("the forward address needs a port")
        self.listen_address = listen
        self.forward_address = forward
        self.pipes: dict[Direction, Pipe] = {
            "up": Pipe(up, seed=seed, name="up"), "down": Pipe(down, seed=seed, name="down")}
        self.blackouts = sorted(blackouts)
        self.client: tuple[Any, ...] | None = None
        self.ignored = 0  # datagrams from outside the test network, or from a stranger
        self.send_errors = 0
        self.rebinds = 0
        self._listen_sock: trio.socket.SocketType | None = None
        self._forward_sock: trio.socket.SocketType | None = None
        self._source_port = 0
        self._forward_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._wake: dict[Direction, trio.Event] = {d: trio.Event() for d in DIRECTIONS}
        self._timer: trio.CancelScope | None = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def bound_address(self) -> Address:
        assert self._listen_sock is not None
        host, port = self._listen_sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def source_port(self) -> int:
        """The port of the socket towards the server (0 before run())."""
        return self._source_port

    def stats(self) -> dict[str, Any]:
        return {
            "up": self.pipes["up"].counters.as_dict(),
            "down": self.pipes["down"].counters.as_dict(),
            "in_flight": {d: self.pipes[d].in_flight for d in DIRECTIONS},
            "blackout": {d: self.pipes[d].blackout for d in DIRECTIONS},
            "impairment": {d: attrs.asdict(self.pipes[d].impairment) for d in DIRECTIONS},
            "client": None if self.client is None else format_address(self.client),
            "source_port": self.source_port,
            "ignored": self.ignored,
            "send_errors": self.send_errors,
            "rebinds": self.rebinds,
        }

    def set_blackout(self, on: bool, directions: Sequence[Direction] = DIRECTIONS,
                     seconds: float | None = None) -> None:
        """Drop everything (in `directions`) from now on, or stop; with `seconds`, switch it
        off again after that long (a later call replaces that timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for d in directions:
            self.pipes[d].blackout = on
        log.info("blackout %s %s%s", "on" if on else "off", "/".join(directions),
                 f" for {seconds:g} s" if seconds is not None else "")
        if seconds is not None and on:
            assert self._nursery is not None
            scope = trio.CancelScope()
            self._timer = scope
            self._nursery.start_soon(self._blackout_timer, scope, seconds, tuple(directions))

    async def _blackout_timer(self, scope: trio.CancelScope, seconds: float,
                              directions: Sequence[Direction]) -> None:
        with scope:
            await trio.sleep(seconds)
            self._timer = None
            self.set_blackout(False, directions)

    def set_impairment(self, directions: Sequence[Direction], changes: Mapping[str, str]) -> None:
        new = {d: evolve(self.pipes[d].impairment, changes) for d in directions}
        for d, imp in new.items():
            self.pipes[d].impairment = imp
            self._wake[d].set()

    async def rebind(self, port: int = 0) -> int:
        """Replace the socket towards the server by a new one (a new source port, `port` if
        not 0), as a NAT that forgot its mapping; returns the new port."""
        assert self._nursery is not None
        old_scope = self._forward_scope
        old_port = self.source_port
        sock = await self._open_forward(port)
        new_port = int(sock.getsockname()[1])
        if new_port == old_port:  # only possible with an explicit port: the kernel refuses it
            sock.close()
            raise ValueError(f"port {port} is the current one")
        self._forward_sock, self._source_port = sock, new_port
        self._forward_scope = trio.CancelScope()
        self._nursery.start_soon(self._receive_forward, sock, self._forward_scope)
        # The old socket's receiver closes it as it leaves: closing it here could pull it from
        # under a receiver that is already woken for it (EBADF).
        if old_scope is not None:
            old_scope.cancel()
        self.rebinds += 1
        log.info("rebound: source port %d -> %d", old_port, new_port)
        return new_port

    # -- running -------------------------------------------------------------------------------
    async def _open_forward(self, port: int = 0) -> trio.socket.SocketType:
        host = self.forward_address[0]
        sock = trio.socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            _bigger_buffers(sock)  # type: ignore[arg-type]
            await sock.bind(("::" if ":" in host else "0.0.0.0", port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listen = trio.socket.socket(_family(self.listen_address[0]), socket.SOCK_DGRAM)
        with listen:
            _bigger_buffers(listen)  # type: ignore[arg-type]
            await listen.bind(self.listen_address)
            self._listen_sock = listen
            self._forward_sock = await self._open_forward()
            self._source_port = int(self._forward_sock.getsockname()[1])
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._forward_scope = trio.CancelScope()
                    nursery.start_soon(self._receive_forward, self._forward_sock,
                                       self._forward_scope)
                    nursery.start_soon(self._receive_listen)
                    for d in DIRECTIONS:
                        nursery.start_soon(self._pump, d)
                    if self.blackouts:
                        if self.blackouts[0][0] <= 0:  # in force before the first datagram
                            self.set_blackout(True)
                        nursery.start_soon(self._blackout_schedule)
                    task_status.started()
            finally:
                self._nursery = None
                if self._forward_sock is not None:
                    self._forward_sock.close()

    async def _blackout_schedule(self) -> None:
        start = trio.current_time()
        for begin, length in self.blackouts:
            await trio.sleep_until(start + begin)
            self.set_blackout(True)
            await trio.sleep_until(start + begin + length)
            self.set_blackout(False)

    async def _receive_listen(self) -> None:
        assert self._listen_sock is not None
        sock, pipe = self._listen_sock, self.pipes["up"]
        while True:
            data, addr = await sock.recvfrom(65536)
            if not allowed(addr[0]):
                self.ignored += 1
                continue
            if self.client != addr:
                log.info("client %s", format_address(addr))
                self.client = addr
            pipe.push(data, trio.current_time())
            await self._flush("up")

    async def _receive_forward(self, sock: trio.socket.SocketType,
                               scope: trio.CancelScope) -> None:
        pipe = self.pipes["down"]
        forward = ipaddress.ip_address(self.forward_address[0])
        with scope, sock:
            while True:
                data, addr = await sock.recvfrom(65536)
                if ipaddress.ip_address(addr[0]) != forward or addr[1] != self.forward_address[1]:
                    self.ignored += 1
                    continue
                pipe.push(data, trio.current_time())
                await self._flush("down")

    async def _flush(self, direction: Direction) -> None:
        pipe = self.pipes[direction]
        due = pipe.pop_due(trio.current_time())
        dest: tuple[Any, ...] | None
        for data in due:
            # Looked up for each datagram: a rebind may come while we wait to send.
            if direction == "up":
                sock, dest = self._forward_sock, self.forward_address
            else:
                sock, dest = self._listen_sock, self.client
            if sock is None or dest is None:
                self.send_errors += 1
                continue
            try:
                await sock.sendto(data, dest)
            except (OSError, trio.ClosedResourceError) as exc:  # e.g. ENOBUFS: a link loses it
                self.send_errors += 1
                log.debug("send to %s failed: %s", format_address(dest), exc)
        if pipe.next_due() is not None:
            self._wake[direction].set()

    async def _pump(self, direction: Direction) -> None:
        pipe = self.pipes[direction]
        while True:
            await self._flush(direction)
            due = pipe.next_due()
            wake = self._wake[direction] = trio.Event()
            with trio.move_on_at(math.inf if due is None else due):
                await wake.wait()


# -- the process: command line and control channel -----------------------------------------------
def _emit(obj: Mapping[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # nobody listens any more
        pass


def _directions(word: str) -> tuple[Direction, ...]:
    if word == "both":
        return DIRECTIONS
    if word in DIRECTIONS:
        return (word,)
    raise ValueError(f"direction is up, down or both, not {word!r}")


async def command(relay: Relay, line: str) -> dict[str, Any]:
    """Carry out one control line; the reply to print. ValueError for a bad one."""
    words = line.split()
    if not words:
        raise ValueError("empty command")
    verb, args = words[0], words[1:]
    if verb == "stats" and not args:
        return {"ok": "stats", **relay.stats()}
    if verb == "blackout" and 1 <= len(args) <= 2:
        directions = _directions(args[1]) if len(args) == 2 else DIRECTIONS
        if args[0] in ("on", "off"):
            relay.set_blackout(args[0] == "on", directions)
        else:
            seconds = float(args[0])
            if not seconds > 0:
                raise ValueError("a blackout lasts more than 0 seconds")
            relay.set_blackout(True, directions, seconds)
        return {"ok": "blackout", "blackout": relay.stats()["blackout"], "wall": time.time()}
    if verb == "rebind" and len(args) <= 1:
        old = relay.source_port
        port = await relay.rebind(int(args[0]) if args else 0)
        return {"ok": "rebind", "old_port": old, "source_port": port}
    if verb == "set" and len(args) >= 2:
        changes: dict[str, str] = {}
        for arg in args[1:]:
            key, sep, value = arg.partition("=")
            if not sep:
                raise ValueError(f"expected KEY=VALUE, got {arg!r}")
            changes[key] = value
        relay.set_impairment(_directions(args[0]), changes)
        return {"ok": "set", "impairment": relay.stats()["impairment"]}
    if verb == "quit" and not args:
        return {"ok": "quit"}
    raise ValueError(f"unknown command {line.strip()!r}; commands: stats, blackout on|off|SECONDS "
                     "[up|down], rebind [PORT], set up|down|both KEY=VALUE..., quit")


async def _control(relay: Relay, cancel: trio.CancelScope) -> None:
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:  # stdin closed (or /dev/null): run on, signals still work
            return
        if not line.strip():
            continue
        try:
            reply = await command(relay, line)
        except (ValueError, OSError) as exc:
            reply = {"error": str(exc)}
        _emit(reply)
        if reply.get("ok") == "quit":
            cancel.cancel()
            return


async def _signals(relay: Relay, cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM,
                                   signal.SIGINT) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                await relay.rebind()
            elif signum == signal.SIGUSR2:
                relay.set_blackout(not relay.pipes["up"].blackout)
            else:
                cancel.cancel()
                return


async def _serve(relay: Relay, *, control: bool) -> None:
    with trio.CancelScope() as cancel:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            nursery.start_soon(_signals, relay, cancel)
            _emit({"event": "ready", "listen": format_address(relay.bound_address),
                   "forward": format_address(relay.forward_address),
                   "source_port": relay.source_port,
                   "impairment": {d: relay.pipes[d].impairment.describe() for d in DIRECTIONS}})
            if control:
                nursery.start_soon(_control, relay, cancel)
    _emit({"event": "exit", **relay.stats()})


def _rate(text: str) -> float:
    units = {"k": 1e3, "m": 1e6, "g": 1e9}
    text = text.strip().lower().removesuffix("b/s").removesuffix("/s")
    factor = units.get(text[-1:], 1.0)
    return float(text[:-1] if text[-1:] in units else text) * factor


def _address_argument(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _blackout_window(text: str) -> tuple[float, float]:
    start, sep, length = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected START:SECONDS, got {text!r}")
    return float(start), float(length)


_OPTIONS: tuple[tuple[str, Callable[[str], float], str], ...] = (
    ("loss", float, "probability a datagram is dropped"),
    ("reorder", float, "probability a datagram is held back until the next one(s) passed it"),
    ("reorder-gap", int, "how many later datagrams pass a held one (default 1)"),
    ("reorder-timeout", float, "ms a held datagram waits at most for those (default 50)"),
    ("duplicate", float, "probability a datagram is sent twice"),
    ("delay", float, "ms each datagram is delayed"),
    ("jitter", float, "ms of uniform jitter around the delay (delay ± jitter)"),
    ("rate", _rate, "rate limit in bytes/s (k, M, G suffixes; default none)"),
    ("burst", int, "token bucket size in bytes (default max(3000, 5 ms of rate))"),
    ("queue", int, "bytes that may wait for the rate limit; more are dropped (default 256 KiB)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fz_trio.lab.impair",
        description="A UDP relay that impairs what it forwards, for the test network. 'up' is "
                    "client -> server (--listen -> --forward), 'down' the replies. An option "
                    "without up-/down- sets both directions. Commands on stdin: stats, "
                    "blackout on|off|SECONDS [up|down], rebind [PORT], "
                    "set up|down|both KEY=VALUE..., quit. SIGUSR1 rebinds, SIGUSR2 toggles "
                    "the blackout.")
    parser.add_argument("--listen", required=True, type=_address_argument,
                        help="HOST:PORT the client sends to (port 0: any)")
    parser.add_argument("--forward", required=True, type=_address_argument,
                        help="HOST:PORT of the real server")
    parser.add_argument("--seed", type=int, default=0, help="seeds every random choice")
    parser.add_argument("--blackout", type=_blackout_window, action="append", default=[],
                        metavar="START:SECONDS",
                        help="drop everything for SECONDS from START seconds after ready "
                             "(repeatable)")
    parser.add_argument("--no-control", action="store_true", help="do not read stdin")
    parser.add_argument("-v", "--verbose", action="store_true", help="log events on stderr")
    for name, kind, text in _OPTIONS:
        for prefix in ("", "up-", "down-"):
            parser.add_argument(f"--{prefix}{name}", type=kind, default=None,
                                metavar=name.split("-")[0].upper(),
                                help=text if not prefix else argparse.SUPPRESS)
    return parser


def _impairments(ns: argparse.Namespace) -> dict[Direction, Impairment]:
    result: dict[Direction, Impairment] = {}
    for d in DIRECTIONS:
        values: dict[str, float] = {}
        for name, _, _ in _OPTIONS:
            attr = name.replace("-", "_")
            for value in (getattr(ns, attr), getattr(ns, f"{d}_{attr}")):
                if value is not None:
                    values[attr] = value
        result[d] = evolve(Impairment(), values)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="impair: %(message)s", stream=sys.stderr)
    try:
        imps = _impairments(ns)
        relay = Relay(ns.listen, ns.forward, up=imps["up"], down=imps["down"], seed=ns.seed,
                      blackouts=ns.blackout)
    except ValueError as exc:
        parser.error(str(exc))
    trio.run(functools.partial(_serve, relay, control=not ns.no_control))
    return 0


# -- the caller's side ---------------------------------------------------------------------------
def relay_argv(listen: str, forward: str, *, up: Impairment | None = None,
               down: Impairment | None = None, both: Impairment | None = None, seed: int = 0,
               blackouts: Sequence[tuple[float, float]] = (), verbose: bool = True) -> list[str]:
    """The command line that runs a relay with these settings."""
    argv = [sys.executable, "-u", "-m", "fz_trio.lab.impair", "--listen", listen,
            "--forward", forward, "--seed", str(seed)]
    default = Impairment()
    for prefix, imp in (("", both), ("up-", up), ("down-", down)):
        if imp is None:
            continue
        for f in attrs.fields(Impairment):
            value = getattr(imp, f.name)
            if value != getattr(default, f.name):
                argv += [f"--{prefix}{f.name.replace('_', '-')}", f"{value:g}"
                         if isinstance(value, float) else str(value)]
    for start, length in blackouts:
        argv += ["--blackout", f"{start:g}:{length:g}"]
    if verbose:
        argv.append("-v")
    return argv


class RelayProcess:
    """A running relay process started with stdin and stdout pipes (bufsize=0); reads its ready
    line. TestNet.destroy() (or close()) ends it."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float = 10.0,
                 log_path: Path | None = None) -> None:
        self.proc = proc
        self.log_path = log_path
        self.ready = self._read(timeout)
        if self.ready.get("event") != "ready":
            raise TestNetError(f"relay did not start: {self.ready}")
        self.listen: str = self.ready["listen"]
        self.source_port: int = self.ready["source_port"]

    @classmethod
    def start(cls, net: TestNet, ns: str, listen: str, forward: str, **settings: Any
              ) -> RelayProcess:
        """A relay in namespace `ns` of TestNet `net` (its stderr goes to a log in net.tmpdir);
        `settings` as for relay_argv."""
        log_path = net.tmpdir / f"impair-{ns}-{listen.replace(':', '_')}.log"
        with open(log_path, "ab") as log_file:
            proc = net.popen(ns, *relay_argv(listen, forward, **settings), env=net.python_env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                             bufsize=0)
        return cls(proc, log_path=log_path)

    def _read(self, timeout: float) -> dict[str, Any]:
        line = expect_line(self.proc, timeout)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def command(self, line: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send one control line, return its reply; TestNetError for an error reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if "error" in reply:
            raise TestNetError(f"relay refused {line!r}: {reply['error']}")
        return reply

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def blackout(self, on: bool | float, direction: str = "both") -> dict[str, Any]:
        """True/False switches it on/off; a number of seconds switches it on for that long."""
        what = ("on" if on else "off") if isinstance(on, bool) else f"{float(on):g}"
        return self.command(f"blackout {what} {direction}")

    def rebind(self, port: int = 0) -> int:
        self.source_port = int(self.command(f"rebind {port}" if port else "rebind")
                               ["source_port"])
        return self.source_port

    def set(self, direction: str = "both", **changes: float) -> dict[str, Any]:
        pairs = " ".join(f"{key}={value:g}" for key, value in changes.items())
        return self.command(f"set {direction} {pairs}")

    def close(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """Ask it to quit (kill it if it does not), close the pipes; its last counters (None if
        it was gone already or did not say)."""
        final = None
        if self.proc.poll() is None:
            try:
                self.command("quit", timeout)
                final = self._read(timeout)
            except (TestNetError, OSError, ValueError):
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return final


if __name__ == "__main__":
    sys.exit(main())
