"""iperf3 across the test network: one TCP run, client in namespace B, server in namespace A.

The one place iperf3 is driven: the demo, the tests and the benchmark all measure through
`iperf3()`. What a caller wants watched while the transfer runs (CPU time of the tunnel
processes, pings under load) it passes in as context managers, entered just around the client.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import attrs

from fz_trio.lab.testnet import TestNet, wait_for

__all__ = ["DEFAULT_PORT", "IperfResult", "iperf3"]

DEFAULT_PORT = 5201


@attrs.frozen
class IperfResult:
    mbits: float  # received, as iperf3 reports it
    retransmits: int  # of the sending side
    bytes_received: int
    seconds: float  # as measured by iperf3


def iperf3(net: TestNet, *, seconds: int, reverse: bool = False, streams: int = 1,
           address: str | None = None, port: int = DEFAULT_PORT, bitrate: str | None = None,
           during: Sequence[AbstractContextManager[object]] = ()) -> IperfResult:
    """One iperf3 TCP test from namespace B to a fresh server bound to `address` in A (the
    tunnel address by default), or A -> B with `reverse`. `bitrate` (iperf3's -b, e.g. "1G",
    per stream) caps the rate; None sends as fast as TCP goes.

    `during` is entered in order just before the client starts and left in reverse order just
    after it ends, so what it samples covers the transfer and little else.
    """
    address = net.tunnel_a4 if address is None else address
    server = net.popen(net.ns_a, "iperf3", "-s", "-1", "-B", address, "-p", str(port),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # A client started before the server listens fails at once; -1 makes the server exit
        # after one test, so each run starts from a clean server.
        wait_for(lambda: f":{port} " in net.run(net.ns_a, "ss", "-ltnH").stdout, 10.0,
                 what="iperf3 server to listen")
        argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds),
                "-P", str(streams), "--connect-timeout", "5000", "--json"]
        if reverse:
            argv.append("-R")
        if bitrate is not None:
            argv += ["-b", bitrate]
        with contextlib.ExitStack() as stack:
            for watcher in during:
                stack.enter_context(watcher)
            result = net.run(net.ns_b, *argv, check=False, timeout=seconds + 60)
        return _parse(result, seconds)
    finally:
        server.kill()
        server.wait()


def _parse(result: subprocess.CompletedProcess[str], seconds: int) -> IperfResult:
    try:
        report: dict[str, Any] = json.loads(result.stdout or "{}")
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
    )
