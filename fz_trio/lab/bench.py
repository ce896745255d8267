"""Benchmarks: the sans-IO core alone (µs per packet) and iperf3 TCP end to end through tunnels.

    python -m fz_trio.lab.bench                  # core micro-benchmark, then every pair end to end
    python -m fz_trio.lab.bench core             # only the core micro-benchmark
    python -m fz_trio.lab.bench e2e --pairs wggo-wggo,fz-fz --seconds 5
    python -m fz_trio.lab.bench --fz-args=--no-offload --label no-offload
    python -m fz_trio.lab.bench --pairs wggo-wggo,fz-fz --variants "default;--tun-queues 1"

End to end, every pair runs on a fresh test network (fz_trio.lab.testnet: two namespaces and a veth;
nothing leaves them) and is measured in both directions — "up" is client (namespace B) to server
(namespace A), "down" is the reverse (iperf3 -R) — with each stream count. Pair names are
CLIENT-SERVER:

    veth       no tunnel: iperf3 between the underlay addresses (the ceiling of the machine)
    wggo-wggo  wireguard-go <-> wireguard-go (the yardstick: every ratio is against it)
    fz-wggo    fz-trio client, wireguard-go server
    wggo-fz    wireguard-go client, fz-trio server
    fz-fz      fz-trio <-> fz-trio

For each run we record Mbit/s received and TCP retransmits, and for each tunnel process (fz-trio and
wireguard-go alike) the CPU seconds it spent during the run (utime+stime from /proc/PID/stat, all
threads) per GB received, and its peak RSS (VmHWM) after the run. The table shows the fz-trio
figures; the JSON file has them all, plus the machine, the commit and the core micro-benchmark.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from fz_trio.core import generate_private_key
from fz_trio.datapath import Device, _pykernels, kernels, udp_packet
from fz_trio.lab.scenario import Implementation, TunnelPair
from fz_trio.lab.testnet import TestNet, netns_unavailable_reason, wait_for

__all__ = [
    "PAIRS",
    "CoreResult",
    "IperfResult",
    "Run",
    "SideStats",
    "core_bench",
    "format_core",
    "format_table",
    "iperf3_run",
    "machine_info",
    "main",
    "veth_iperf3",
]

FZ: Implementation = "fz-trio"
WGGO: Implementation = "wireguard-go"

# name -> (client implementation, server implementation); None = no tunnel, raw veth.
PAIRS: dict[str, tuple[Implementation, Implementation] | None] = {
    "veth": None,
    "wggo-wggo": (WGGO, WGGO),
    "fz-wggo": (FZ, WGGO),
    "wggo-fz": (WGGO, FZ),
    "fz-fz": (FZ, FZ),
}
BASELINE = "wggo-wggo"
DEFAULT_VARIANT = "default"
IPERF_PORT = 5201
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the core alone ---------------------------------------------------------------------------

@attrs.frozen
class CoreResult:
    packet_size: int
    batch_size: int
    batches: int
    packets: int
    encrypt_us_per_packet: float
    decrypt_us_per_packet: float
    encrypt_gbits: float  # implied Gbit/s of IP packets on one core
    decrypt_gbits: float
    api: str = "batch"  # which core API moved the packets
    kernels: str = "native"  # which twin of the data path kernels


def ipv4_packet(size: int, src: str = TestNet.tunnel_b4, dst: str = TestNet.tunnel_a4) -> bytes:
    """An IPv4/UDP packet of exactly `size` bytes."""
    if size < 28:
        raise ValueError("an IPv4/UDP packet has at least 28 bytes")
    return udp_packet(src, dst, bytes(size - 28), dport=5201)


def _core_pair(packet: bytes) -> tuple[Device, Device, tuple[str, int], float]:
    """A client and a server Tunnel in memory with a completed handshake (and confirmed session)."""
    wall = time.time()
    client = Device(generate_private_key())
    server = Device(generate_private_key())
    client_addr = (TestNet.underlay_b, 40000)
    server_addr = (TestNet.underlay_a, 51820)
    client.add_peer(server.public_key, allowed_ips=[f"{TestNet.tunnel_a4}/32"],
                    endpoint=server_addr)
    server.add_peer(client.public_key, allowed_ips=[f"{TestNet.tunnel_b4}/32"])
    now = 1.0
    client.send_packet(packet, now, wall)  # staged; starts the handshake
    delivered: list[bytes] = []
    for _ in range(10):
        moved = False
        for data, _dst in client.take_transmits():
            server.receive_datagram(data, client_addr, now, wall)
            moved = True
        for data, _dst in server.take_transmits():
            client.receive_datagram(data, server_addr, now, wall)
            moved = True
        delivered += server.take_tun_packets()
        client.take_tun_packets()
        if not moved:
            break
    if delivered != [packet]:
        raise RuntimeError(f"core handshake did not complete: server got {len(delivered)} packets")
    return client, server, client_addr, now


@contextlib.contextmanager
def kernels_twin(twin: str) -> Iterator[str]:
    """Run the Device on one twin of the data path kernels ("native" needs the extension)."""
    if twin == "native" and kernels.IMPLEMENTATION != "native":
        raise RuntimeError(f"no native kernels: {kernels.REASON}")
    module = _pykernels if twin == "python" else kernels._module
    names = ("seal_packets", "seal_segments", "open_run", "coalesce")
    saved = {name: getattr(kernels, name) for name in names}
    for name in names:
        setattr(kernels, name, getattr(module, name))
    try:
        yield twin
    finally:
        for name, value in saved.items():
            setattr(kernels, name, value)


def core_bench(*, batches: int = 1000, batch_size: int = 64, packet_size: int = 1400,
               warmup: int = 20, twin: str | None = None) -> CoreResult:
    with kernels_twin(twin or kernels.IMPLEMENTATION):
        result = _core_bench(batches, batch_size, packet_size, warmup)
    return attrs.evolve(result, kernels=twin or kernels.IMPLEMENTATION)


def _core_bench(batches: int, batch_size: int, packet_size: int, warmup: int) -> CoreResult:
    """Time the core alone: encrypt through send_packets+take_batches on one Tunnel, decrypt the
    result through receive_batch (one call per GSO batch, as a UDP GRO read would deliver it)
    +take_tun_packets on its peer, `batch_size` packets at a time.

    Only the core's own work is timed — no syscalls, no threads. Each batch is encrypted then
    decrypted at once (the replay window forbids decrypting a datagram twice), and the two phases
    are timed separately with time.perf_counter.
    """
    if batches < 1 or batch_size < 1:
        raise ValueError("batches and batch_size must be positive")
    packet = ipv4_packet(packet_size)
    client, server, client_addr, now = _core_pair(packet)
    epoch = time.time() - now  # the wall clock at now == 0
    batch = [packet] * batch_size
    encrypt = decrypt = 0.0
    clock = time.perf_counter
    for i in range(warmup + batches):
        now += 1e-4
        t0 = clock()
        # The batch API, as the IO shell drives the core: a TUN batch in, GSO batches out;
        # each GSO batch in as one UDP GRO read, packets for TUN out.
        client.send_packets(batch, now, epoch + now)
        gso = client.take_batches()
        t1 = clock()
        for b in gso:
            server.receive_batch(b.buffer, b.used, b.segment_size, client_addr, now, epoch + now)
        plain = server.take_tun_packets()
        t2 = clock()
        sent = sum(b.count for b in gso)
        client.recycle(gso)
        server.take_transmits()  # nothing expected; never let it grow
        if sent != batch_size or len(plain) != batch_size:
            raise RuntimeError(f"core bench: batch {i}: {sent} encrypted, "
                               f"{len(plain)} decrypted, of {batch_size}")
        if i >= warmup:
            encrypt += t1 - t0
            decrypt += t2 - t1
    packets = batches * batch_size
    enc_us = encrypt / packets * 1e6
    dec_us = decrypt / packets * 1e6
    return CoreResult(
        packet_size=packet_size, batch_size=batch_size, batches=batches, packets=packets,
        encrypt_us_per_packet=enc_us, decrypt_us_per_packet=dec_us,
        encrypt_gbits=packet_size * 8 / (enc_us * 1e3),
        decrypt_gbits=packet_size * 8 / (dec_us * 1e3),
    )


def format_core(r: CoreResult) -> str:
    return (f"core ({r.kernels} kernels, {r.api} API, {r.packets} packets of {r.packet_size} B "
            f"in batches of {r.batch_size}, one core):\n"
            f"  encrypt  {'send_packets + take_batches':<36}"
            f"{r.encrypt_us_per_packet:7.2f} µs/packet = {r.encrypt_gbits:5.2f} Gbit/s\n"
            f"  decrypt  {'receive_batch + take_tun_packets':<36}"
            f"{r.decrypt_us_per_packet:7.2f} µs/packet = {r.decrypt_gbits:5.2f} Gbit/s")


# --- processes --------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads, living and dead) in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a process in MB (MiB), or None if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


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


# --- iperf3 -----------------------------------------------------------------------------------

@attrs.frozen
class IperfResult:
    mbits: float
    retransmits: int
    bytes_received: int
    seconds: float  # as measured by iperf3
    cpu_seconds: dict[int, float]  # pid -> CPU seconds during the run
    rtt_ms: list[float] = attrs.Factory(list)  # pings through the path while iperf3 ran


PING_INTERVAL = 0.05


def _ping_rtts(output: str) -> list[float]:
    """The RTTs (ms) in ping's per-reply lines ("... time=1.23 ms")."""
    return [float(line.rsplit("time=", 1)[1].split()[0])
            for line in output.splitlines() if "time=" in line]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def iperf3_run(net: TestNet, server_addr: str, *, seconds: int, reverse: bool = False,
               streams: int = 1, pids: Sequence[int] = (), port: int = IPERF_PORT) -> IperfResult:
    """One iperf3 TCP test: a fresh server bound to `server_addr` in namespace A, the client in B
    (B -> A, or A -> B with `reverse`). CPU time of `pids` is sampled just around the client run."""
    server = net.popen(net.ns_a, "iperf3", "-s", "-1", "-B", server_addr, "-p", str(port),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f":{port} " in net.run(net.ns_a, "ss", "-ltnH").stdout, 10.0,
                 what="iperf3 server to listen")
        argv = ["iperf3", "-c", server_addr, "-p", str(port), "-t", str(seconds),
                "-P", str(streams), "--connect-timeout", "5000", "--json"]
        if reverse:
            argv.append("-R")
        before = {pid: cpu_seconds(pid) for pid in pids}
        # Latency under load: pings from the client side through the same path while the
        # transfer runs (the first second, its ramp-up, is left out).
        ping = net.popen(net.ns_b, "ping", "-n", "-i", str(PING_INTERVAL), "-w",
                         str(max(1, seconds - 1)), server_addr, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
        try:
            result = net.run(net.ns_b, *argv, check=False, timeout=seconds + 60)
        finally:
            output = ping.communicate(timeout=seconds + 10)[0]
            ping_out = output if isinstance(output, str) else ""
        after = {pid: cpu_seconds(pid) for pid in pids}
        try:
            report = json.loads(result.stdout or "{}")
        except json.JSONDecodeError:
            report = {"error": f"unparsable output: {result.stdout[-500:]!r}"}
        if result.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 failed: {report.get('error', result.stderr.strip())}")
        end = report["end"]
        received = end["sum_received"]
        return IperfResult(
            mbits=float(received["bits_per_second"]) / 1e6,
            retransmits=int(end["sum_sent"].get("retransmits", 0)),
            bytes_received=int(received["bytes"]),
            seconds=float(received.get("seconds", seconds)),
            cpu_seconds={pid: after[pid] - before[pid] for pid in pids},
            rtt_ms=_ping_rtts(ping_out)[int(1 / PING_INTERVAL):],
        )
    finally:
        server.kill()
        server.wait()


def veth_iperf3(net: TestNet, *, seconds: int, reverse: bool = False,
                streams: int = 1) -> IperfResult:
    """iperf3 with no tunnel at all: between the underlay addresses of the veth pair."""
    return iperf3_run(net, net.underlay_a, seconds=seconds, reverse=reverse, streams=streams)


# --- end to end -------------------------------------------------------------------------------

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


@attrs.frozen
class Variant:
    label: str
    fz_args: tuple[str, ...]


@attrs.frozen
class Job:
    pair: str
    variant: Variant


def parse_variants(text: str | None, base: Variant) -> list[Variant]:
    """"default;--tun-queues 1" -> [base, base + --tun-queues 1]; labels are the args as given."""
    if not text:
        return [base]
    out: list[Variant] = []
    for item in text.split(";"):
        item = item.strip()
        if item in ("", DEFAULT_VARIANT):
            out.append(base)
        else:
            label = item if base.label == DEFAULT_VARIANT else f"{base.label} {item}"
            out.append(Variant(label, base.fz_args + tuple(shlex.split(item))))
    return out


def plan(pairs: Sequence[str], base: Variant, variants: Sequence[Variant]) -> list[Job]:
    """Pairs in the order given; fz-fz once per variant, other fz pairs with the base args."""
    jobs: list[Job] = []
    for pair in pairs:
        if pair == "fz-fz":
            jobs += [Job(pair, v) for v in variants]
        elif PAIRS[pair] is not None and FZ in PAIRS[pair]:  # type: ignore[operator]
            jobs.append(Job(pair, base))
        else:
            jobs.append(Job(pair, Variant(DEFAULT_VARIANT, ())))
    return jobs


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_job(job: Job, *, seconds: int, streams_list: Sequence[int],
            say: Callable[[str], None] = _say) -> list[Run]:
    """All directions and stream counts of one pair, on its own fresh test network."""
    impls = PAIRS[job.pair]
    client_impl, server_impl = impls if impls is not None else ("-", "-")
    runs = [Run(job.pair, job.variant.label, client_impl, server_impl, direction, streams)
            for streams in streams_list for direction in ("up", "down")]
    name = runs[0].name
    try:
        with TestNet() as net:
            procs: list[Proc] = []
            pair: TunnelPair | None = None
            if impls is not None:
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
                    _measure(net, pair, procs, run, seconds)
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
             seconds: int) -> None:
    reverse = run.direction == "down"
    if pair is None:
        result = veth_iperf3(net, seconds=seconds, reverse=reverse, streams=run.streams)
    else:
        result = iperf3_run(net, net.tunnel_a4, seconds=seconds, reverse=reverse,
                            streams=run.streams, pids=[p.pid for p in procs])
    run.mbits = result.mbits
    run.retransmits = result.retransmits
    run.bytes_received = result.bytes_received
    run.rtt_median_ms = percentile(result.rtt_ms, 0.5)
    run.rtt_p90_ms = percentile(result.rtt_ms, 0.9)
    gb = result.bytes_received / 1e9
    run.sides = [
        SideStats(p.role, p.implementation, p.pid, result.cpu_seconds[p.pid],
                  result.cpu_seconds[p.pid] / gb if gb > 0 else None, peak_rss_mb(p.pid))
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


def add_ratios(runs: Sequence[Run]) -> None:
    base = {(r.direction, r.streams): r.mbits for r in runs
            if r.pair == BASELINE and r.variant == DEFAULT_VARIANT and r.mbits}
    for r in runs:
        b = base.get((r.direction, r.streams))
        r.ratio = r.mbits / b if (b and r.mbits is not None) else None


# --- output -----------------------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _per_side(run: Run, attr: str, spec: str, implementation: str = FZ) -> str:
    """"client/server" figures of the ends running `implementation`, "-" for the others."""
    sides = [s for s in run.sides if s.implementation == implementation]
    if not sides:
        return "-"
    by_role = {s.role: getattr(s, attr) for s in sides}
    return "/".join(_fmt(by_role.get(role), spec) for role in ("client", "server"))


def format_table(runs: Sequence[Run]) -> str:
    header = ("pair", "dir", "P", "Mbit/s", "ratio", "retr", "RTT ms p50/p90", "fz CPU s/GB c/s",
              "fz RSS MB c/s", "wggo CPU s/GB c/s")
    rows = [header]
    errors: list[str] = []
    for r in runs:
        if r.error is not None:
            rows.append((r.name, r.direction, str(r.streams), "FAILED", "-", "-", "-", "-", "-",
                         "-"))
            errors.append(f"{r.name} {r.direction} -P {r.streams}: {_short(r.error)}")
            continue
        rows.append((r.name, r.direction, str(r.streams), _fmt(r.mbits, ".0f"),
                     _fmt(r.ratio, ".2f"), _fmt(r.retransmits, "d"),
                     f"{_fmt(r.rtt_median_ms, '.1f')}/{_fmt(r.rtt_p90_ms, '.1f')}",
                     _per_side(r, "cpu_s_per_gb", ".2f"), _per_side(r, "peak_rss_mb", ".0f"),
                     _per_side(r, "cpu_s_per_gb", ".2f", WGGO)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if errors:
        lines += ["", "failures:"] + [f"  {e}" for e in errors]
    return "\n".join(lines)


def _short(error: str) -> str:
    """The first line of an error and, when it goes on (a log tail), its last line."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def _first_line(argv: list[str]) -> str | None:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = (cp.stdout or cp.stderr).strip()
    return out.splitlines()[0] if out else None


def machine_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    root = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "wireguard_go": (_first_line(["wireguard-go", "--version"])
                         if shutil.which("wireguard-go") else None),
        "iperf3": _first_line(["iperf3", "--version"]) if shutil.which("iperf3") else None,
        "fz_trio_commit": (commit + ("-dirty" if dirty else "")) if commit else None,
        "clk_tck": CLK_TCK,
    }


def _format_machine(info: dict[str, Any]) -> str:
    return (f"machine: {info['nproc']} CPUs ({info['cpu_model']}), kernel {info['kernel']}, "
            f"Python {info['python']}, {info['wireguard_go'] or 'no wireguard-go'}, "
            f"fz_trio {info['fz_trio_commit']}")


# --- command line -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fz_trio.lab.bench",
        description="Benchmark fz-trio: the sans-IO core alone, and iperf3 TCP end to end through "
                    "tunnels in throw-away network namespaces (needs root, wireguard-go, iperf3).",
        epilog="Pairs are CLIENT-SERVER: " + ", ".join(PAIRS) + ". Options whose value starts "
               "with '-' are best given as --fz-args=--no-offload.",
    )
    p.add_argument("what", nargs="?", choices=("all", "core", "e2e"), default="all",
                   help="all (default): core then end to end; core: only the core "
                        "micro-benchmark; e2e: only end to end")
    p.add_argument("--seconds", type=int, default=10, help="iperf3 seconds per run (default 10)")
    p.add_argument("--streams", default="1,4",
                   help="comma-separated iperf3 stream counts, -P (default 1,4)")
    p.add_argument("--pairs", default=",".join(PAIRS),
                   help=f"comma-separated subset of {','.join(PAIRS)} (default: all)")
    p.add_argument("--fz-args", default="",
                   help="extra arguments for every `fz-trio up`, e.g. --fz-args='--tun-queues 2'")
    p.add_argument("--label", default=None,
                   help="name of this --fz-args configuration in the table and JSON "
                        "(default: the args themselves, or 'default')")
    p.add_argument("--variants", default=None,
                   help="run fz-fz once per ';'-separated variant of extra args added to "
                        "--fz-args, e.g. 'default;--tun-queues 1'")
    p.add_argument("--json", dest="json_path", default=None,
                   help="write results as JSON here (default bench-results.json; "
                        "`core` writes JSON only when this is given)")
    p.add_argument("--core-batches", type=int, default=1000,
                   help="core micro-benchmark batches (default 1000)")
    p.add_argument("--batch-size", type=int, default=64, help="core batch size (default 64)")
    p.add_argument("--packet-size", type=int, default=1400,
                   help="core IP packet size in bytes (default 1400)")
    return p


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """Let `--fz-args --no-offload` work: argparse would take the value for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--fz-args", "--variants"):
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        streams = [int(s) for s in args.streams.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--streams: not a list of integers: {args.streams!r}")
    if not streams or min(streams) < 1:
        parser.error("--streams: need positive stream counts")
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        parser.error(f"--pairs: unknown {unknown}; choose from {','.join(PAIRS)}")
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    fz_args = tuple(shlex.split(args.fz_args))
    base = Variant(args.label or (" ".join(fz_args) if fz_args else DEFAULT_VARIANT), fz_args)
    variants = parse_variants(args.variants, base)

    info = machine_info()
    results: dict[str, Any] = {
        "label": base.label,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "options": {"seconds": args.seconds, "streams": streams, "pairs": pairs,
                    "fz_args": list(fz_args), "variants": [attrs.asdict(v) for v in variants]},
        "core": None,
        "runs": [],
    }
    print(_format_machine(info), flush=True)

    if args.what in ("all", "core"):
        twins = ["python"] + (["native"] if kernels.IMPLEMENTATION == "native" else [])
        results["core"] = []
        for twin in twins:
            core = core_bench(batches=args.core_batches, batch_size=args.batch_size,
                              packet_size=args.packet_size, twin=twin)
            results["core"].append(attrs.asdict(core))
            print(format_core(core), flush=True)

    failed = False
    if args.what in ("all", "e2e"):
        reason = netns_unavailable_reason(need_wireguard=any(PAIRS[p] for p in pairs))
        if reason is None and shutil.which("iperf3") is None:
            reason = "needs iperf3 (apt-get install iperf3)"
        if reason:
            print(f"end-to-end benchmark skipped: {reason}", file=sys.stderr)
            return 1
        runs: list[Run] = []
        jobs = plan(pairs, base, variants)
        _say(f"end to end: {len(jobs)} pairs x {len(streams) * 2} runs of {args.seconds} s")
        for job in jobs:
            runs += run_job(job, seconds=args.seconds, streams_list=streams)
        add_ratios(runs)
        results["runs"] = [r.to_json() for r in runs]
        failed = any(r.error is not None for r in runs)
        print(f"\niperf3 TCP, {args.seconds} s per run; up = client->server, down = reverse; "
              f"ratio = Mbit/s / {BASELINE} (same dir, P); CPU = utime+stime of each tunnel "
              "process per GB received; RSS = VmHWM; c/s = client/server end", flush=True)
        print(format_table(runs), flush=True)
        summary = _summary(runs)
        if summary:
            print(summary, flush=True)

    json_path = args.json_path or (None if args.what == "core" else "bench-results.json")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {json_path}", flush=True)
    return 1 if failed else 0


def _summary(runs: Sequence[Run]) -> str:
    """Geometric mean of the ratio per tunnel pair, over its directions and stream counts."""
    lines = []
    names = list(dict.fromkeys(r.name for r in runs if r.pair not in ("veth", BASELINE)))
    for name in names:
        ratios = [r.ratio for r in runs if r.name == name and r.ratio]
        if ratios:
            lines.append(f"  {name:<24} {statistics.geometric_mean(ratios):.2f}")
    return ("\ngeometric mean of ratio to " + BASELINE + ":\n" + "\n".join(lines)) if lines else ""


def _cli() -> None:
    # SIGTERM unwinds like Ctrl-C, so every TestNet is destroyed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())


if __name__ == "__main__":
    _cli()
