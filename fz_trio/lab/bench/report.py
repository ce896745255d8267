"""The benchmark's report: the machine it ran on, ratios to the baseline, the text tables and the
JSON document."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from fz_trio.lab.bench.core import CoreResult
from fz_trio.lab.bench.e2e import Run
from fz_trio.lab.bench.pairs import BASELINE, DEFAULT_VARIANT, FZ, WGGO, Variant
from fz_trio.lab.bench.sampling import CLK_TCK

__all__ = [
    "add_ratios",
    "document",
    "format_core",
    "format_e2e",
    "format_machine",
    "format_summary",
    "format_table",
    "machine_info",
]


# --- the core alone ---------------------------------------------------------------------------

def format_core(r: CoreResult) -> str:
    return (f"core ({r.kernels} kernels, {r.api} API, {r.packets} packets of {r.packet_size} B "
            f"in batches of {r.batch_size}, one core):\n"
            f"  encrypt  {'send_packets + take_batches':<36}"
            f"{r.encrypt_us_per_packet:7.2f} µs/packet = {r.encrypt_gbits:5.2f} Gbit/s\n"
            f"  decrypt  {'receive_batch + take_tun_packets':<36}"
            f"{r.decrypt_us_per_packet:7.2f} µs/packet = {r.decrypt_gbits:5.2f} Gbit/s")


# --- end to end -------------------------------------------------------------------------------

def add_ratios(runs: Sequence[Run]) -> None:
    """Each run's Mbit/s over the baseline's in the same direction and stream count."""
    base = {(r.direction, r.streams): r.mbits for r in runs
            if r.pair == BASELINE and r.variant == DEFAULT_VARIANT and r.mbits}
    for r in runs:
        b = base.get((r.direction, r.streams))
        r.ratio = r.mbits / b if (b and r.mbits is not None) else None


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
        # Names and directions read left to right; figures line up on their last digit.
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


def format_summary(runs: Sequence[Run]) -> str:
    """Geometric mean of the ratio per tunnel pair, over its directions and stream counts."""
    lines = []
    names = list(dict.fromkeys(r.name for r in runs if r.pair not in ("veth", BASELINE)))
    for name in names:
        ratios = [r.ratio for r in runs if r.name == name and r.ratio]
        if ratios:
            lines.append(f"  {name:<24} {statistics.geometric_mean(ratios):.2f}")
    return ("\ngeometric mean of ratio to " + BASELINE + ":\n" + "\n".join(lines)) if lines else ""


def format_e2e(runs: Sequence[Run], seconds: int) -> str:
    """The legend, the table and, when there is a baseline, the summary."""
    legend = (f"\niperf3 TCP, {seconds} s per run; up = client->server, down = reverse; "
              f"ratio = Mbit/s / {BASELINE} (same dir, P); CPU = utime+stime of each tunnel "
              "process per GB received; RSS = VmHWM; c/s = client/server end")
    parts = [legend, format_table(runs)]
    summary = format_summary(runs)
    if summary:
        parts.append(summary)
    return "\n".join(parts)


# --- the machine and the JSON document --------------------------------------------------------

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
    here = str(Path(__file__).resolve().parent)  # any directory of the checkout names its commit
    commit = _first_line(["git", "-C", here, "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"])
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


def format_machine(info: dict[str, Any]) -> str:
    return (f"machine: {info['nproc']} CPUs ({info['cpu_model']}), kernel {info['kernel']}, "
            f"Python {info['python']}, {info['wireguard_go'] or 'no wireguard-go'}, "
            f"fz_trio {info['fz_trio_commit']}")


def document(*, label: str, started: str, machine: dict[str, Any], seconds: int,
             streams: Sequence[int], pairs: Sequence[str], fz_args: Sequence[str],
             variants: Sequence[Variant], core: Sequence[CoreResult] | None,
             runs: Sequence[Run], bitrate: str | None = None) -> dict[str, Any]:
    """The JSON document of one bench run: everything measured and what it was measured on."""
    return {
        "label": label,
        "started": started,
        "machine": machine,
        "options": {"seconds": seconds, "streams": list(streams), "pairs": list(pairs),
                    "fz_args": list(fz_args), "variants": [attrs.asdict(v) for v in variants],
                    "bitrate": bitrate},
        "core": None if core is None else [attrs.asdict(c) for c in core],
        "runs": [r.to_json() for r in runs],
    }
