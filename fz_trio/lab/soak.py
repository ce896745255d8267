"""Soak: fz-trio against wireguard-go for a long while, traffic both ways, and what drifts.

    python -m fz_trio.lab.soak [--minutes 10] [--sample 30] [--bitrate 0] [--output FILE]
    nox -s soak -- --minutes 10

The test network's namespace A runs wireguard-go (the server), B runs fz-trio (`fz-trio up`),
and iperf3 sends TCP both ways at once (`--bidir`) through the tunnel for the whole time. Every
`--sample` seconds the soak reads, as a user would (`fz-trio show --json`, `wg show`, /proc):
fz-trio's resident memory and open fds, its handshakes and drops by reason, and the latest
handshake wireguard-go saw. At the end: throughput over time (iperf3's own intervals), the
rekeys (sessions renewed every REKEY_AFTER_TIME, 120 s, so ~5 in 10 minutes), drops by reason,
and memory and fds at start and end. One JSON object goes to `--output` (and stdout), a table to
stderr. Root, wireguard-go and iperf3 needed, as for the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fz_trio.lab.scenario import TunnelPair
from fz_trio.lab.testnet import TestNet, fz_trio_command, wait_for

__all__ = ["main", "soak"]

IPERF_PORT = 5301


def _proc_figures(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def _fz_status(net: TestNet, ifname: str) -> dict[str, Any]:
    out = net.run(net.ns_b, *fz_trio_command(), "show", ifname, "--json", timeout=10).stdout
    status: dict[str, Any] = json.loads(out.splitlines()[0])
    return status


def _sample(net: TestNet, pair: TunnelPair, started: float) -> dict[str, Any]:
    assert pair.client.process is not None
    status = _fz_status(net, pair.client.ifname)
    protocol = (status.get("fz_trio") or {}).get("stats", {}).get("protocol", {})
    server_dump = net.run(net.ns_a, "wg", "show", pair.server.ifname, "latest-handshakes",
                          timeout=10).stdout.split()
    return {"t": round(time.monotonic() - started, 1),
            **_proc_figures(pair.client.process.pid),
            "handshakes_completed": protocol.get("handshakes_completed"),
            "handshake_initiations_sent": protocol.get("handshake_initiations_sent"),
            "drops": protocol.get("drops", {}),
            "wireguard_go_latest_handshake": int(server_dump[1]) if len(server_dump) > 1 else 0}


def soak(*, minutes: float, sample_every: float, bitrate: str) -> dict[str, Any]:
    seconds = max(10, int(minutes * 60))
    with TestNet() as net:
        pair = TunnelPair(net, server_impl="wireguard-go", client_impl="fz-trio")
        pair.start()
        server = net.popen(net.ns_a, "iperf3", "-s", "-1", "-B", net.tunnel_a4, "-p",
                           str(IPERF_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: f":{IPERF_PORT} " in net.run(net.ns_a, "ss", "-ltnH").stdout, 10.0,
                 what="iperf3 server to listen")
        argv = ["iperf3", "-c", net.tunnel_a4, "-p", str(IPERF_PORT), "-t", str(seconds),
                "--bidir", "-i", str(int(sample_every)), "-b", bitrate, "--json",
                "--connect-timeout", "5000"]
        # iperf3's JSON goes to a file: it is written at the end, and a long run's would fill
        # a pipe nobody reads until iperf3 exits.
        output = net.tmpdir / "iperf3-soak.json"
        started = time.monotonic()
        errors = output.with_suffix(".err")
        with open(output, "wb") as sink, open(errors, "wb") as complaints:
            client = net.popen(net.ns_b, *argv, stdout=sink, stderr=complaints)
        samples = [_sample(net, pair, started)]
        while True:
            try:
                client.wait(timeout=sample_every)
                break
            except subprocess.TimeoutExpired:
                samples.append(_sample(net, pair, started))
            if time.monotonic() > started + seconds + 90:
                client.kill()
        samples.append(_sample(net, pair, started))
        server.wait(10)
        alive = pair.client.process is not None and pair.client.process.poll() is None
        text = output.read_text(errors="replace")
        try:
            result = json.loads(text)
        except ValueError:
            result = {"error": (text + errors.read_text(errors="replace"))[-2000:]
                      or f"iperf3 exited with {client.returncode}"}
    return _report(result, samples, seconds, alive)


def _report(iperf: dict[str, Any], samples: list[dict[str, Any]], seconds: int,
            alive: bool) -> dict[str, Any]:
    intervals = []
    for interval in iperf.get("intervals", []):
        up = down = 0.0
        for stream in interval.get("streams", []):
            if stream.get("sender"):
                up += stream["bits_per_second"]
            else:
                down += stream["bits_per_second"]
        start = interval.get("sum", {}).get("start", 0)
        intervals.append({"t": round(start), "up_mbits": round(up / 1e6),
                          "down_mbits": round(down / 1e6)})
    first, last = samples[0], samples[-1]
    rekeys = (last["handshakes_completed"] or 0) - (first["handshakes_completed"] or 0)
    return {"seconds": seconds, "fz_trio_alive_at_end": alive, "iperf_error": iperf.get("error"),
            "intervals": intervals, "rekeys": rekeys,
            "drops": last["drops"],
            "start": {k: first[k] for k in ("rss_kib", "fds", "threads")},
            "end": {k: last[k] for k in ("rss_kib", "fds", "threads")},
            "samples": samples}


def _table(report: dict[str, Any]) -> str:
    lines = [f"soak: {report['seconds']} s, fz-trio (client) vs wireguard-go (server), "
             "iperf3 --bidir", "   t s   up Mbit/s   down Mbit/s"]
    for i in report["intervals"]:
        lines.append(f"{i['t']:6d} {i['up_mbits']:11d} {i['down_mbits']:13d}")
    lines.append(f"rekeys (handshakes completed by fz-trio): {report['rekeys']}")
    lines.append(f"drops: {json.dumps(report['drops'])}")
    lines.append(f"memory/fds/threads at start: {report['start']}, at end: {report['end']}")
    if report.get("iperf_error"):
        lines.append(f"iperf3 error: {report['iperf_error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fz_trio.lab.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--bitrate", default="0",
                        help="iperf3 -b per direction (0: as fast as it goes)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    report = soak(minutes=args.minutes, sample_every=args.sample, bitrate=args.bitrate)
    text = json.dumps(report)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    print(_table(report), file=sys.stderr)
    ok = report["fz_trio_alive_at_end"] and not report.get("iperf_error")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
