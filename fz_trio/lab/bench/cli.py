"""The command line of the benchmark: `python -m fz_trio.lab.bench [all|core|e2e] [options]`."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fz_trio.lab.bench import report
from fz_trio.lab.bench.core import CoreResult, available_twins, core_bench
from fz_trio.lab.bench.e2e import Run, progress, run_job
from fz_trio.lab.bench.pairs import DEFAULT_VARIANT, PAIRS, Variant, parse_variants, plan
from fz_trio.lab.testnet import netns_unavailable_reason

__all__ = ["build_parser", "main", "run"]


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
    p.add_argument("--bitrate", default=None,
                   help="cap each iperf3 stream at this rate (iperf3 -b, e.g. 1G): at a load "
                        "the machine can carry, CPU s/GB compares without contention "
                        "(default: as fast as TCP goes)")
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

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = report.machine_info()
    print(report.format_machine(info), flush=True)

    core: list[CoreResult] | None = None
    if args.what in ("all", "core"):
        core = []
        for twin in available_twins():
            result = core_bench(batches=args.core_batches, batch_size=args.batch_size,
                                packet_size=args.packet_size, twin=twin)
            core.append(result)
            print(report.format_core(result), flush=True)

    runs: list[Run] = []
    if args.what in ("all", "e2e"):
        reason = netns_unavailable_reason(need_wireguard=any(PAIRS[p] for p in pairs))
        if reason is None and shutil.which("iperf3") is None:
            reason = "needs iperf3 (apt-get install iperf3)"
        if reason:
            print(f"end-to-end benchmark skipped: {reason}", file=sys.stderr)
            return 1
        jobs = plan(pairs, base, variants)
        progress(f"end to end: {len(jobs)} pairs x {len(streams) * 2} runs of {args.seconds} s")
        for job in jobs:
            runs += run_job(job, seconds=args.seconds, streams_list=streams,
                            bitrate=args.bitrate)
        report.add_ratios(runs)
        print(report.format_e2e(runs, args.seconds), flush=True)

    json_path = args.json_path or (None if args.what == "core" else "bench-results.json")
    if json_path:
        results = report.document(
            label=base.label, started=started, machine=info, seconds=args.seconds,
            streams=streams, pairs=pairs, fz_args=fz_args, variants=variants, core=core,
            runs=runs, bitrate=args.bitrate)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {json_path}", flush=True)
    return 1 if any(r.error is not None for r in runs) else 0


def run() -> None:
    """`python -m fz_trio.lab.bench`: main() with the process's arguments, as its exit status."""
    # SIGTERM unwinds like Ctrl-C, so every TestNet is destroyed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
