"""The impairment relay (fz_trio/lab/impair.py): its pipes on a simulated clock, then the relay on
real loopback sockets, in-process and as the process the interop tests start."""

from __future__ import annotations

import collections
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from fz_trio.lab.impair import (
    Impairment,
    Pipe,
    Relay,
    RelayProcess,
    evolve,
    parse_address,
    relay_argv,
)
from fz_trio.lab.testnet import TestNetError

N = 20_000


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """`count` successes of `n` trials is within `sigmas` standard deviations of n*p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def payloads(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def run(pipe: Pipe, datagrams: list[bytes], *, spacing: float = 0.0
        ) -> list[tuple[float, bytes]]:
    """Push `datagrams` `spacing` seconds apart, then let simulated time run until the pipe is
    empty; every datagram sent with its time."""
    sent: list[tuple[float, bytes]] = []
    now = 0.0
    for i, data in enumerate(datagrams):
        now = i * spacing
        while (due := pipe.next_due()) is not None and due <= now:
            sent += [(due, d) for d in pipe.pop_due(due)]
        pipe.push(data, now)
        sent += [(now, d) for d in pipe.pop_due(now)]
    while (due := pipe.next_due()) is not None:
        now = max(now, due)
        sent += [(now, d) for d in pipe.pop_due(now)]
    assert pipe.in_flight == 0
    c = pipe.counters
    assert c.received + c.duplicated == c.forwarded + c.dropped
    return sent


def order(sent: list[tuple[float, bytes]]) -> list[int]:
    return [int.from_bytes(d, "big") for _, d in sent]


# -- the pipes, sans IO ------------------------------------------------------------------------
def test_no_impairment_is_a_wire() -> None:
    pipe = Pipe()
    sent = run(pipe, payloads(1000), spacing=0.001)
    assert order(sent) == list(range(1000))
    assert all(t == i * 0.001 for i, (t, _) in enumerate(sent))
    c = pipe.counters
    assert (c.received, c.forwarded, c.dropped, c.reordered) == (1000, 1000, 0, 0)
    assert c.bytes_forwarded == 4000


def test_loss_is_seeded_and_within_tolerance() -> None:
    def lost(seed: int, **extra: float) -> set[int]:
        pipe = Pipe(Impairment(loss=0.05, **extra), seed=seed, name="up")
        got = set(order(run(pipe, payloads(N), spacing=0.0001)))
        assert pipe.counters.dropped_loss == pipe.counters.dropped == N - len(got)
        return set(range(N)) - got

    first = lost(7)
    assert within(len(first), N, 0.05)
    assert lost(7) == first  # the same seed, the same datagrams
    assert lost(8) != first
    # Each kind of choice has its own generator: the loss pattern does not move when the other
    # impairments are switched on.
    assert lost(7, duplicate=0.3, reorder=0.3, jitter=5) == first


def test_directions_choose_independently() -> None:
    up = Pipe(Impairment(loss=0.5), seed=1, name="up")
    down = Pipe(Impairment(loss=0.5), seed=1, name="down")
    assert order(run(up, payloads(200))) != order(run(down, payloads(200)))


def test_duplication() -> None:
    pipe = Pipe(Impairment(duplicate=0.1), seed=3)
    got = order(run(pipe, payloads(N)))
    c = pipe.counters
    assert within(c.duplicated, N, 0.1)
    assert c.forwarded == len(got) == N + c.duplicated
    counts = collections.Counter(got)
    assert sorted(counts) == list(range(N)) and set(counts.values()) == {1, 2}
    assert sum(n == 2 for n in counts.values()) == c.duplicated
    assert got == sorted(got)  # nothing else asked for: a copy follows its original at once
    assert c.reordered == 0


def test_reordering_holds_a_datagram_until_the_next_passed() -> None:
    pipe = Pipe(Impairment(reorder=0.25), seed=4)
    got = order(run(pipe, payloads(N)))
    c = pipe.counters
    assert sorted(got) == list(range(N))  # each exactly once
    assert within(c.held, N, 0.25)
    # Pushed back to back, every held datagram is overtaken by the next one that is not held.
    assert c.reordered == c.held
    first_out_of_order = next(i for i, v in enumerate(got) if v != i)
    assert got[first_out_of_order + 1] == first_out_of_order  # swapped with its successor


def test_reorder_gap_and_timeout() -> None:
    pipe = Pipe(Impairment(reorder=1.0, reorder_gap=3, reorder_timeout=20))
    pipe.push(b"\0\0\0\0", 0.0)
    assert pipe.pop_due(0.0) == [] and pipe.next_due() == pytest.approx(0.02)
    # Alone, the held datagram goes out after its timeout, not overtaken: not reordered.
    assert pipe.pop_due(0.02) == [b"\0\0\0\0"]
    assert (pipe.counters.held, pipe.counters.reordered) == (1, 0)

    pipe = Pipe(Impairment(reorder_gap=3, reorder_timeout=1000))
    pipe.push(b"\0\0\0\0", 0.0)  # not held: reorder is 0
    pipe.impairment = evolve(pipe.impairment, {"reorder": 1.0})
    pipe.push(b"\0\0\0\1", 0.0)  # held for 3
    pipe.impairment = evolve(pipe.impairment, {"reorder": 0})
    for i in range(2, 6):
        pipe.push(i.to_bytes(4, "big"), 0.0)
    assert order([(0.0, d) for d in pipe.pop_due(0.0)]) == [0, 2, 3, 4, 1, 5]
    assert pipe.counters.reordered == 1


def test_delay_and_jitter() -> None:
    pipe = Pipe(Impairment(delay=50))
    sent = run(pipe, payloads(100), spacing=0.001)
    assert order(sent) == list(range(100))
    assert all(t == pytest.approx(i * 0.001 + 0.05) for i, (t, _) in enumerate(sent))

    pipe = Pipe(Impairment(delay=50, jitter=20), seed=5)
    sent = run(pipe, payloads(2000), spacing=0.001)
    delays = [t - i * 0.001 for (t, _), i in zip(sent, order(sent), strict=True)]
    assert all(0.030 - 1e-9 <= d <= 0.070 + 1e-9 for d in delays)
    assert sum(delays) / len(delays) == pytest.approx(0.050, abs=0.002)
    # 40 ms of spread over 1 ms spacing reorders many datagrams on its own.
    assert sorted(order(sent)) == list(range(2000))
    assert pipe.counters.reordered > 500 and pipe.counters.held == 0


def test_rate_limit_is_a_token_bucket_with_a_bounded_queue() -> None:
    datagrams = [bytes(1000)] * 200
    pipe = Pipe(Impairment(rate=100_000, burst=5000, queue=10**6))
    sent = run(pipe, datagrams)
    assert len(sent) == 200
    assert sent[4][0] == 0.0  # the burst goes at once
    # Then 100 datagrams/s: the remaining 195 kB take 1.95 s.
    assert sent[-1][0] == pytest.approx(1.95, abs=0.011)
    gaps = [b[0] - a[0] for a, b in zip(sent[5:], sent[6:], strict=False)]
    assert all(g == pytest.approx(0.01, abs=1e-6) for g in gaps)

    pipe = Pipe(Impairment(rate=100_000, burst=5000, queue=10_000))
    sent = run(pipe, datagrams)
    assert len(sent) == 15 and pipe.counters.dropped_queue == 185  # 5 at once, 10 queued


def test_blackout_drops_everything_also_in_flight() -> None:
    pipe = Pipe(Impairment(delay=10))
    pipe.push(b"early", 0.0)
    pipe.blackout = True
    pipe.push(b"during", 0.001)
    assert pipe.pop_due(0.02) == []  # "early" was on its way: lost with the link
    pipe.blackout = False
    pipe.push(b"after", 0.03)
    assert pipe.pop_due(0.04) == [b"after"]
    c = pipe.counters
    assert (c.received, c.dropped_blackout, c.forwarded) == (3, 2, 1)


def test_impairment_checks_its_values() -> None:
    with pytest.raises(ValueError, match="probability"):
        Impairment(loss=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        Impairment(delay=-1)
    with pytest.raises(ValueError, match="unknown impairment bogus"):
        evolve(Impairment(), {"bogus": "1"})
    assert evolve(Impairment(), {"reorder-gap": "2", "loss": "0.5"}) == Impairment(
        loss=0.5, reorder_gap=2)
    assert Impairment(loss=0.05, delay=50).describe() == "loss=0.05 delay=50"


@pytest.mark.parametrize("text, expected", [
    ("198.18.0.1:51820", ("198.18.0.1", 51820)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:7", ("::1", 7)),
    ("[fd00:18::2]:51820", ("fd00:18::2", 51820)),
])
def test_addresses_on_the_test_network(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8.8.8.8:53", "0.0.0.0:51820", "[::]:1", "10.0.0.1:1",
                                  "[fd00:64::1]:1", "localhost:53", "198.18.0.1", "::1:5",
                                  "198.18.0.1:70000"])
def test_other_addresses_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# -- the relay on loopback sockets -------------------------------------------------------------
class Echo:
    """A UDP server on loopback that answers every datagram and remembers who sent it."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.sources: list[int] = []
        self.received: list[bytes] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    async def serve(self) -> None:
        while True:
            data, addr = await self.sock.recvfrom(65536)
            self.sources.append(addr[1])
            self.received.append(data)
            await self.sock.sendto(data, addr)


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        server = Echo(sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve)
            yield server
            nursery.cancel_scope.cancel()


async def settled(relay: Relay, received: int) -> None:
    """Until the relay has read `received` datagrams from its client and nothing moves."""
    before = None
    with trio.move_on_after(5):
        while True:
            now = (relay.pipes["up"].counters.received, relay.pipes["down"].counters.received,
                   relay.pipes["up"].in_flight, relay.pipes["down"].in_flight)
            if now[0] >= received and now == before and now[2:] == (0, 0):
                return
            before = now
            await trio.sleep(0.03)


async def exchange(relay: Relay, count: int) -> list[bytes]:
    """Send `count` numbered datagrams to the relay from a fresh socket, 10 a millisecond (no
    socket buffer on the way overflows), until all is quiet again; what came back."""
    expected = relay.pipes["up"].counters.received + count
    sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    got: list[bytes] = []
    with sock:
        await sock.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            async def receive() -> None:
                while True:
                    got.append((await sock.recvfrom(65536))[0])
            nursery.start_soon(receive)
            for i in range(count):
                await sock.sendto(i.to_bytes(4, "big"), relay.bound_address)
                if i % 10 == 9:
                    await trio.sleep(0.001)
            await settled(relay, expected)
            nursery.cancel_scope.cancel()
    return got


async def start_relay(nursery: trio.Nursery, echo: Echo, **kw: object) -> Relay:
    relay = Relay(("127.0.0.1", 0), echo.address, **kw)  # type: ignore[arg-type]
    await nursery.start(relay.run)
    return relay


async def test_relay_forwards_both_ways_and_counts(echo: Echo) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo)
        got = await exchange(relay, 500)
        assert sorted(got) == payloads(500)
        assert set(echo.sources) == {relay.source_port}
        stats = relay.stats()
        for d in ("up", "down"):
            assert stats[d]["received"] == stats[d]["forwarded"] == 500
            assert stats[d]["dropped"] == 0
        assert stats["client"].startswith("127.0.0.1:")
        nursery.cancel_scope.cancel()


async def test_relay_loss_and_duplication_are_the_pipes_choices(echo: Echo) -> None:
    imp = Impairment(loss=0.2, duplicate=0.1)
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo, up=imp, seed=9)
        await exchange(relay, 2000)
        nursery.cancel_scope.cancel()
    # What the server got is exactly what a Pipe with the same seed chooses.
    expected = Pipe(imp, seed=9, name="up")
    got, want = order([(0, d) for d in echo.received]), order(run(expected, payloads(2000)))
    assert len(got) == len(want), (len(got), len(want), relay.stats())
    assert got == want
    up = relay.stats()["up"]
    assert up["dropped_loss"] == expected.counters.dropped_loss
    assert up["duplicated"] == expected.counters.duplicated
    assert within(up["dropped_loss"], 2000, 0.2) and within(up["duplicated"], 1600, 0.1)
    assert relay.stats()["down"]["forwarded"] == len(echo.received)


async def test_relay_reorders(echo: Echo) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo, up=Impairment(reorder=0.25), seed=2)
        await exchange(relay, 1000)
        nursery.cancel_scope.cancel()
    seen = order([(0, d) for d in echo.received])
    assert sorted(seen) == list(range(1000))
    overtaken = sum(v < max(seen[:i], default=-1) for i, v in enumerate(seen))
    up = relay.stats()["up"]
    assert within(up["held"], 1000, 0.25)
    assert overtaken == up["reordered"] > 150


async def test_relay_delay_and_jitter(echo: Echo) -> None:
    imp = Impairment(delay=40, jitter=10)
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo, up=imp, down=imp)
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            rtts = []
            for i in range(12):
                start = trio.current_time()
                await sock.sendto(i.to_bytes(4, "big"), relay.bound_address)
                await sock.recvfrom(100)
                rtts.append(trio.current_time() - start)
        nursery.cancel_scope.cancel()
    assert min(rtts) >= 0.060  # two ways of at least 30 ms
    assert max(rtts) < 0.140  # two ways of at most 50 ms, and some slack for a busy machine
    assert 0.070 < sum(rtts) / len(rtts) < 0.100


async def test_relay_rate_limit(echo: Echo) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo, up=Impairment(rate=200_000, burst=3000))
        start = trio.current_time()
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            for _ in range(100):
                await sock.sendto(bytes(1000), relay.bound_address)
            for _ in range(100):
                await sock.recvfrom(2000)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert 0.45 < elapsed < 1.0  # 97 kB beyond the burst at 200 kB/s


async def test_relay_blackout_and_rebind(echo: Echo) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo)
        first_port = relay.source_port
        assert len(await exchange(relay, 10)) == 10
        relay.set_blackout(True)
        assert await exchange(relay, 10) == []
        relay.set_blackout(False, ["up"])
        relay.set_blackout(True, ["down"])
        assert await exchange(relay, 10) == []  # the server hears, its replies are lost
        assert len(echo.received) == 20
        relay.set_blackout(False)
        new_port = await relay.rebind()
        assert new_port != first_port
        assert len(await exchange(relay, 10)) == 10  # replies reach the client on the new socket
        assert set(echo.sources[:20]) == {first_port}
        assert set(echo.sources[20:]) == {new_port}  # the server sees the client roam
        relay.set_blackout(True, seconds=0.2)  # a timed one ends by itself
        await trio.sleep(0.3)
        assert len(await exchange(relay, 10)) == 10
        stats = relay.stats()
        assert stats["up"]["dropped_blackout"] == 10 and stats["down"]["dropped_blackout"] == 10
        assert stats["rebinds"] == 1 and stats["source_port"] == new_port
        nursery.cancel_scope.cancel()


async def test_relay_survives_rebinding_under_load(echo: Echo) -> None:
    # A rebind while the old socket's receiver is already woken for a datagram must not pull the
    # socket from under it (it once did: EBADF, and the relay was gone).
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo)

        async def rebind_often() -> None:
            for _ in range(100):
                await relay.rebind()
                await trio.sleep(0.002)

        nursery.start_soon(rebind_often)
        got = await exchange(relay, 3000)
        assert relay.rebinds == 100
        assert len(got) > 2000  # replies on their way to a socket just replaced are lost
        assert len(await exchange(relay, 10)) == 10
        nursery.cancel_scope.cancel()


async def test_relay_ignores_strangers(echo: Echo) -> None:
    async with trio.open_nursery() as nursery:
        relay = await start_relay(nursery, echo)
        await exchange(relay, 1)
        stranger = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        with stranger:
            await stranger.bind(("127.0.0.1", 0))
            # Not the server: a datagram to the relay's forward socket is not passed on.
            await stranger.sendto(b"spoof", ("127.0.0.1", relay.source_port))
            await trio.sleep(0.1)
        assert relay.stats()["ignored"] == 1 and relay.stats()["down"]["received"] == 1
        nursery.cancel_scope.cancel()


def test_relay_refuses_other_addresses() -> None:
    with pytest.raises(ValueError, match="underlay"):
        Relay(("127.0.0.1", 0), ("8.8.8.8", 53))
    with pytest.raises(ValueError, match="port"):
        Relay(("127.0.0.1", 0), ("127.0.0.1", 0))


# -- the relay as a process --------------------------------------------------------------------
@pytest.fixture
def udp_echo() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A UDP echo server on loopback in its own process; yields it and its port."""
    code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.bind(('127.0.0.1',0)); print(s.getsockname()[1], flush=True)\n"
            "while True:\n d,a=s.recvfrom(65536); s.sendto(d,a); print(a[1], flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE,
                            bufsize=0)
    try:
        assert proc.stdout is not None
        yield proc, int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def spawn(*args: str, **settings: object) -> RelayProcess:
    argv = relay_argv(*args, **settings)  # type: ignore[arg-type]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    return RelayProcess(proc)


def ask(port: int, count: int = 1, timeout: float = 1.0) -> int:
    """Send `count` datagrams to a relay on 127.0.0.1:port; how many came back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        for i in range(count):
            sock.sendto(i.to_bytes(4, "big"), ("127.0.0.1", port))
        got = 0
        try:
            for _ in range(count):
                sock.recvfrom(100)
                got += 1
        except TimeoutError:
            pass
        return got


def test_process_control_channel(udp_echo: tuple[subprocess.Popen[bytes], int]) -> None:
    _, echo_port = udp_echo
    relay = spawn("127.0.0.1:0", f"127.0.0.1:{echo_port}", both=Impairment(delay=5), seed=3)
    try:
        port = int(relay.listen.rsplit(":", 1)[1])
        assert relay.ready["impairment"] == {"up": "delay=5", "down": "delay=5"}
        assert ask(port, 5) == 5
        stats = relay.stats()
        assert stats["up"]["forwarded"] == stats["down"]["forwarded"] == 5
        assert relay.blackout(True)["blackout"] == {"up": True, "down": True}
        assert ask(port, 3, timeout=0.3) == 0
        assert relay.blackout(False, "up")["blackout"] == {"up": False, "down": True}
        relay.blackout(False)
        old = relay.source_port
        assert relay.rebind() != old
        assert ask(port) == 1
        reply = relay.set("down", loss=1)
        assert reply["impairment"]["down"]["loss"] == 1.0
        assert ask(port, 3, timeout=0.3) == 0
        relay.set(loss=0)
        assert ask(port) == 1
        with pytest.raises(TestNetError, match="unknown command"):
            relay.command("frobnicate")
        with pytest.raises(TestNetError, match="unknown impairment"):
            relay.command("set up wobble=1")
        final = relay.close()
        assert final is not None and final["event"] == "exit"
        assert final["up"]["received"] == 13 and final["rebinds"] == 1
        assert relay.proc.returncode == 0
    finally:
        relay.proc.kill()
        relay.close()


def test_process_signals_and_schedule(udp_echo: tuple[subprocess.Popen[bytes], int]) -> None:
    _, echo_port = udp_echo
    relay = spawn("127.0.0.1:0", f"127.0.0.1:{echo_port}", blackouts=[(0.0, 0.6)])
    try:
        port = int(relay.listen.rsplit(":", 1)[1])
        assert ask(port, timeout=0.2) == 0  # the scheduled blackout
        old = relay.source_port
        relay.proc.send_signal(signal.SIGUSR1)
        relay.proc.send_signal(signal.SIGUSR2)  # toggled on while the schedule had it on
        stats = relay.stats()
        for _ in range(50):
            if stats["rebinds"] == 1:
                break
            stats = relay.stats()
        assert stats["source_port"] != old and stats["rebinds"] == 1
        relay.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.6)
        assert ask(port) == 1
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.stdout is not None
        final = json.loads(relay.proc.stdout.read().decode().strip().splitlines()[-1])
        assert final["event"] == "exit" and final["up"]["dropped_blackout"] == 1
        assert relay.proc.wait(5) == 0
    finally:
        relay.proc.kill()
        relay.close()


def test_process_refuses_addresses_off_the_test_network() -> None:
    cp = subprocess.run(relay_argv("127.0.0.1:0", "8.8.8.8:53"), capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode == 2 and "8.8.8.8 is not on the test network" in cp.stderr
    assert cp.stdout == ""
