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

For each run we record Mbit/s received and TCP retransmits, the ping RTT through the path under
that load, and for each tunnel process (fz-trio and wireguard-go alike) the CPU seconds it spent
during the run (utime+stime from /proc/PID/stat, all threads) per GB received, and its peak RSS
(VmHWM) after the run. The table shows the fz-trio figures; the JSON file has them all, plus the
machine, the commit and the core micro-benchmark. See docs/performance.md.

One module per job:

    core      the micro-benchmark of the core, on either twin of the data path kernels
    sampling  CPU seconds and peak RSS of a process, from /proc
    e2e       iperf3 (fz_trio.lab.iperf) through each pair, with CPU sampling and pings under load
    pairs     the pairs, the variants of fz-trio arguments, and the plan of jobs
    report    ratios, the text tables, the machine description and the JSON document
    cli       the command line (`__main__` runs it)
"""

from fz_trio.lab.bench.cli import _join_dash_values as _join_dash_values  # the tests call it
from fz_trio.lab.bench.cli import build_parser, main
from fz_trio.lab.bench.core import CoreResult, available_twins, core_bench, kernels_twin
from fz_trio.lab.bench.e2e import Run, SideStats, run_job
from fz_trio.lab.bench.pairs import (
    BASELINE,
    DEFAULT_VARIANT,
    PAIRS,
    Job,
    Variant,
    parse_variants,
    plan,
)
from fz_trio.lab.bench.report import add_ratios, format_core, format_table, machine_info
from fz_trio.lab.bench.sampling import cpu_seconds, peak_rss_mb

__all__ = [
    "BASELINE",
    "DEFAULT_VARIANT",
    "PAIRS",
    "CoreResult",
    "Job",
    "Run",
    "SideStats",
    "Variant",
    "add_ratios",
    "available_twins",
    "build_parser",
    "core_bench",
    "cpu_seconds",
    "format_core",
    "format_table",
    "kernels_twin",
    "machine_info",
    "main",
    "parse_variants",
    "peak_rss_mb",
    "plan",
    "run_job",
]
