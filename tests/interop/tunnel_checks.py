"""Checks shared by the namespace tests: an intact TCP transfer through a tunnel, and the stats
fz-trio logs when it stops."""

from __future__ import annotations

import json
import sys

from fz_trio.lab.scenario import Side
from fz_trio.lab.testnet import TestNet

TRANSFER_BYTES = 50 * 1024 * 1024


def nstat(net: TestNet, ns: str, *names: str) -> dict[str, int]:
    """The kernel's SNMP counters of namespace `ns` (absolute: each test has fresh ones)."""
    out = net.run(ns, "nstat", "-az", "--json", *names).stdout
    counters = json.loads(out)["kernel"]
    return {name: int(counters.get(name, 0)) for name in names}

# Serve one TCP connection on host:port in a namespace. "sink" reads to EOF and prints the SHA-256
# of what it read; "source" sends `size` seeded bytes and prints their SHA-256. The client roles
# "send"/"receive" are the same from the connecting side.
_TCP_PEER = r"""
import hashlib, random, socket, sys
role, host = sys.argv[1], sys.argv[2]
port, size, seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def chunks():
    rng = random.Random(seed)
    left = size
    while left:
        chunk = rng.randbytes(min(left, 1 << 20))
        left -= len(chunk)
        yield chunk
def sink(conn):
    h, n = hashlib.sha256(), 0
    while data := conn.recv(1 << 20):
        h.update(data)
        n += len(data)
    return f"{h.hexdigest()} {n}"
def source(conn):
    h = hashlib.sha256()
    for chunk in chunks():
        h.update(chunk)
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # wait for the peer to close: everything was read
    return f"{h.hexdigest()} {size}"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if role in ("sink", "source"):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port)); srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    print((sink if role == "sink" else source)(conn), flush=True)
else:
    conn = socket.create_connection((host, port), timeout=60)
    print((source if role == "send" else sink)(conn), flush=True)
"""


def transfer(net: TestNet, *, to_server: bool, port: int, size: int = TRANSFER_BYTES,
             host: str | None = None) -> tuple[str, str]:
    """Move `size` bytes over TCP between B (client) and A (server) through the tunnel;
    returns ("sha256 length" sent, "sha256 length" received)."""
    host = host or net.tunnel_a4
    script = net.tmpdir / "tcp_transfer.py"
    script.write_text(_TCP_PEER)
    server_role, client_role = ("sink", "send") if to_server else ("source", "receive")
    server = net.popen(net.ns_a, sys.executable, str(script), server_role, host, str(port),
                       str(size), "11", stdout=-1, stderr=-1, text=True)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    client = net.run(net.ns_b, sys.executable, str(script), client_role, host, str(port),
                     str(size), "11", timeout=120)
    server_out, server_err = server.communicate(timeout=60)
    assert server.returncode == 0, server_err
    client_result, server_result = client.stdout.strip(), server_out.strip()
    return (client_result, server_result) if to_server else (server_result, client_result)


def exit_stats(side: Side) -> dict[str, dict[str, object]]:
    """The JSON stats line fz-trio logs when it stops."""
    for line in reversed(side.log_tail(50000).splitlines()):
        if "stopped; stats: " in line:
            return json.loads(line.split("stopped; stats: ", 1)[1])
    raise AssertionError("no stats line in the log:\n" + side.log_tail())
