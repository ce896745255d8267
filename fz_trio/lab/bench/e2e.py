"""End to end: iperf3 TCP through each tunnel pair, with its cost and its latency under load.

Every job gets a fresh test network (two namespaces and a veth; nothing leaves them). Each run
is one iperf3 test in one direction with one stream count; while it runs, the CPU time of each
tunnel process is sampled and pings cross the same path, so a run records throughput, CPU per GB,
peak RSS and the RTT the transfer causes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import attrs

from fz_trio.lab.bench.pairs import DEFAULT_VARIANT, FZ, PAIRS, Job
from fz_trio.lab.bench.sampling import CpuSampler, peak_rss_mb
from fz_trio.lab.iperf import iperf3
from fz_trio.lab.scenario import TunnelPair
from fz_trio.lab.testnet import TestNet

__all__ = ["PING_INTERVAL", "LoadPings", "Proc", "Run", "SideStats", "percentile", "progress",
           "run_job"]

PING_INTERVAL = 0.05
# The first second of a transfer is TCP's ramp-up, not the steady load whose latency we want.
RAMP_UP_SECONDS = 1


@attrs.frozen
class Proc:
    role: str  # "client" or "server"
    implementation: str
    pid: int


@attrs.define
class SideStats:
    role: str
    implementation: str
    pid: int
    cpu_seconds: float
    cpu_s_per_gb: float | None
    peak_rss_mb: float | None


@attrs.define
class Run:
    pair: str
    variant: str
    client: str  # implementation, or "-" for raw veth
    server: str
    direction: str  # "up": client -> server; "down": server -> client
    streams: int
    mbits: float | None = None
    ratio: float | None = None  # to wggo-wggo, same direction and streams, same bench run
    retransmits: int | None = None
    bytes_received: int | None = None
    rtt_median_ms: float | None = None  # ping RTT through the tunnel under this load
    rtt_p90_ms: float | None = None
    sides: list[SideStats] = attrs.Factory(list)
    error: str | None = None

    @property
    def name(self) -> str:
        return self.pair if self.variant == DEFAULT_VARIANT else f"{self.pair} [{self.variant}]"

    def fz_sides(self) -> list[SideStats]:
        return [s for s in self.sides if s.implementation == FZ]

    @property
    def fz_cpu_s_per_gb(self) -> float | None:
        """CPU seconds of all fz-trio processes of the pair per GB received."""
        fz = self.fz_sides()
        if not fz or not self.bytes_received:
            return None
        return sum(s.cpu_seconds for s in fz) / (self.bytes_received / 1e9)

    def to_json(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["name"] = self.name
        d["fz_cpu_s_per_gb"] = self.fz_cpu_s_per_gb
        return d


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ping_rtts(output: str) -> list[float]:
    """The RTTs (ms) in ping's per-reply lines ("... time=1.23 ms")."""
    return [float(line.rsplit("time=", 1)[1].split()[0])
            for line in output.splitlines() if "time=" in line]


class LoadPings:
    """Pings from namespace B to `address` for as long as an iperf3 run of `seconds` lasts;
    `rtt_ms` after the exit, the ramp-up left out."""

    def __init__(self, net: TestNet, address: str, seconds: int) -> None:
        self.net = net
        self.address = address
        self.seconds = seconds
        self.rtt_ms: list[float] = []
        self._ping: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LoadPings:
        # -w ends ping on its own a second before iperf3 does, so waiting for it costs nothing.
        self._ping = self.net.popen(
            self.net.ns_b, "ping", "-n", "-i", str(PING_INTERVAL), "-w",
            str(max(1, self.seconds - 1)), self.address, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._ping is not None, "left before entered"
        output = self._ping.communicate(timeout=self.seconds + 10)[0] or b""
        rtts = _ping_rtts(output.decode(errors="replace"))
        self.rtt_ms = rtts[int(RAMP_UP_SECONDS / PING_INTERVAL):]


def progress(text: str) -> None:
    """Progress, on stderr: stdout carries the results."""
    print(text, file=sys.stderr, flush=True)


def run_job(job: Job, *, seconds: int, streams_list: Sequence[int],
            bitrate: str | None = None, say: Callable[[str], None] = progress) -> list[Run]:
    """All directions and stream counts of one pair, on its own fresh test network."""
    impls = PAIRS[job.pair]
    client_name, server_name = impls if impls is not None else ("-", "-")
    runs = [Run(job.pair, job.variant.label, client_name, server_name, direction, streams)
            for streams in streams_list for direction in ("up", "down")]
    name = runs[0].name
    try:
        with TestNet() as net:
            procs: list[Proc] = []
            pair: TunnelPair | None = None
            if impls is not None:
                client_impl, server_impl = impls
                pair = TunnelPair(net, server_impl=server_impl, client_impl=client_impl,
                                  extra_args=list(job.variant.fz_args))
                pair.start()
                for side, role in ((pair.client, "client"), (pair.server, "server")):
                    assert side.process is not None
                    procs.append(Proc(role, side.implementation, side.process.pid))
                say(f"  {name}: " + ", ".join(f"{p.role} {p.implementation} pid {p.pid}"
                                               for p in procs)
                    + f" (namespaces {net.ns_b} / {net.ns_a})")
            for run in runs:
                say(f"  {name:<24} {run.direction:<4} -P {run.streams} ...")
                try:
                    _measure(net, pair, procs, run, seconds, bitrate)
                except Exception as exc:  # noqa: BLE001 - recorded; the other runs still go
                    run.error = _describe(exc, pair)
                    say(f"    failed: {run.error}")
                    if pair is not None and _dead(pair):
                        break
    except Exception as exc:  # noqa: BLE001 - the pair could not be set up; recorded
        error = _describe(exc, None)
        say(f"  {name}: failed: {error}")
        for run in runs:
            run.error = run.error or error
    for run in runs:  # the pair died part way: say so on the runs that never ran
        if run.error is None and run.mbits is None:
            run.error = "not run: a tunnel process died earlier"
    return runs


def _measure(net: TestNet, pair: TunnelPair | None, procs: list[Proc], run: Run,
             seconds: int, bitrate: str | None = None) -> None:
    # No tunnel: iperf3 between the underlay addresses of the veth pair, the machine's ceiling.
    address = net.underlay_a if pair is None else net.tunnel_a4
    cpu = CpuSampler([p.pid for p in procs])
    pings = LoadPings(net, address, seconds)
    result = iperf3(net, seconds=seconds, reverse=run.direction == "down", streams=run.streams,
                    address=address, bitrate=bitrate, during=[cpu, pings])
    run.mbits = result.mbits
    run.retransmits = result.retransmits
    run.bytes_received = result.bytes_received
    run.rtt_median_ms = percentile(pings.rtt_ms, 0.5)
    run.rtt_p90_ms = percentile(pings.rtt_ms, 0.9)
    gb = result.bytes_received / 1e9
    run.sides = [
        SideStats(p.role, p.implementation, p.pid, cpu.used[p.pid],
                  cpu.used[p.pid] / gb if gb > 0 else None, peak_rss_mb(p.pid))
        for p in procs
    ]


def _dead(pair: TunnelPair) -> bool:
    return any(s.process is not None and s.process.poll() is not None
               for s in (pair.client, pair.server))


def _describe(exc: BaseException, pair: TunnelPair | None) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if pair is not None:
        for side in (pair.client, pair.server):
            if side.implementation == FZ and side.process is not None \
                    and side.process.poll() is not None:
                text += (f"\n{side.implementation} {side.ifname} exited with "
                         f"{side.process.returncode}:\n{side.log_tail(1500)}")
    return text
