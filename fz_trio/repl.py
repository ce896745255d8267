"""The developer REPL: an async Python console with a live tunnel, or a simulated network.

    fz-trio repl wg0.conf     # as root: the tunnel comes up; poke at it; Ctrl-D takes it down
    fz-trio repl --sim        # no root: alice, bob and carol on the simulated network
                              # (fz_trio.lab.sim_repl)

Statements may `await` at top level, as in `python -m trio`. The console itself runs in a worker
thread (it blocks in input()); each statement is handed to the Trio thread and runs there, so it
sees the live objects on the loop that owns them, while the tunnel's tasks keep running between
(and during) statements. trio's own console (trio/_repl.py) works this way too, but it is a
private module with a fixed banner; this one is small enough to own.

Ctrl-C cancels the running statement (the tunnel is untouched); Ctrl-D or exit() leaves, which
in live mode brings the tunnel down and removes the interface.
"""

from __future__ import annotations

import ast
import code
import inspect
import logging
import os
import random
import signal
import socket
import sys
import traceback
import types
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from fz_trio import __version__
from fz_trio.app import Interface, run_interface, start_error_unwrapped
from fz_trio.config import Config
from fz_trio.core import Peer, Tunnel, encode_key, format_endpoint, ip
from fz_trio.datapath import icmp_echo_message

log = logging.getLogger(__name__)


# --- the console ----------------------------------------------------------------------------


class TrioConsole(code.InteractiveConsole):
    """An InteractiveConsole whose statements run on the Trio thread, with top-level await.

    `interact()` must run in a worker thread (`trio.to_thread.run_sync`)."""

    def __init__(self, namespace: dict[str, Any], *, line_editing: bool = False) -> None:
        super().__init__(locals=namespace, filename="<repl>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.running: trio.CancelScope | None = None  # the statement being run, for Ctrl-C
        self._lines = None if line_editing else _LineReader(sys.stdin.fileno())

    def raw_input(self, prompt: str = "") -> str:
        if self._lines is None:
            return input(prompt)  # readline on a terminal
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = self._lines.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def runcode(self, code_object: types.CodeType) -> None:
        error = trio.from_thread.run(self._run, code_object)
        if isinstance(error, SystemExit):
            raise error
        if error is not None:
            self._show(error)

    async def _run(self, code_object: types.CodeType) -> BaseException | None:
        # A module-level code object called as a function runs with our namespace as its
        # globals and locals; with a top-level await in it, the call returns a coroutine.
        function = types.FunctionType(code_object, self.locals)
        with trio.CancelScope() as scope:
            self.running = scope
            try:
                result = function()
                if inspect.iscoroutine(result):
                    await result
            except trio.Cancelled:
                raise
            except BaseException as error:  # the user's error: shown, and the console goes on
                return error
            finally:
                self.running = None
        return KeyboardInterrupt() if scope.cancelled_caught else None

    def _show(self, error: BaseException) -> None:
        if isinstance(error, KeyboardInterrupt):
            self.write("KeyboardInterrupt\n")
            return
        sys.last_type, sys.last_value, sys.last_traceback = (type(error), error,
                                                             error.__traceback__)
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code is TrioConsole._run.__code__:
            tb = tb.tb_next  # our own frame is noise
        self.write("".join(traceback.format_exception(type(error), error, tb)))


class _LineReader:
    """Lines from a file descriptor, read with os.read: without a buffered file object.

    input() on a pipe reads through sys.stdin and holds its lock while blocked; when SIGTERM
    ends the REPL, the console's thread is left blocked there and interpreter shutdown aborts
    ("could not acquire lock for <stdin>"). A bare os.read holds nothing.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def readline(self) -> str:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line.decode(errors="replace")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace") + "\n"


async def _interrupts(console: TrioConsole, signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        if console.running is not None:
            console.running.cancel()
        else:
            sys.stderr.write("\nKeyboardInterrupt (press Enter; Ctrl-D or exit() leaves)\n")
            sys.stderr.flush()


async def run_console(namespace: dict[str, Any], banner: str) -> int:
    """Run the console until Ctrl-D or exit(); the exit status."""
    line_editing = sys.stdin.isatty()
    if line_editing:
        try:
            import readline  # noqa: F401  - line editing and history
        except ImportError:
            line_editing = False
    console = TrioConsole(namespace, line_editing=line_editing)
    status = 0
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_interrupts, console, signals)
            try:
                # Abandoned on cancellation (SIGTERM in live mode): the thread is stuck in input().
                await trio.to_thread.run_sync(console.interact, banner, "",
                                              abandon_on_cancel=True)
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None
                                                                          else 1)
            finally:
                nursery.cancel_scope.cancel()
    return status


# --- what the console shows -----------------------------------------------------------------


@attrs.frozen
class PingResult:
    """The answer to `await ping(...)`: true when a reply came back."""

    address: str
    rtt: float | None  # seconds (simulated seconds in --sim mode)
    timeout: float

    def __bool__(self) -> bool:
        return self.rtt is not None

    def __repr__(self) -> str:
        if self.rtt is None:
            return f"no reply from {self.address} within {self.timeout:g} s"
        return f"reply from {self.address}: time={self.rtt * 1000:.2f} ms"


def describe_tunnel(tunnel: Tunnel, now: float, names: dict[bytes, str] | None = None) -> str:
    """Peers, their sessions and endpoints, and the counters: what `show()` prints."""
    names = names or {}
    own = tunnel.public_key
    lines = [f"interface key {encode_key(own) if own else '(none: no private key set)'}"]
    for key, peer in tunnel.peers.items():
        name = names.get(key, encode_key(key)[:8] + "…")
        networks = ", ".join(str(n) for n in tunnel.allowed_ips.networks_of(peer)) or "-"
        endpoint = format_endpoint(peer.endpoint) if peer.endpoint else "unknown"
        lines.append(f"peer {name}: endpoint {endpoint}, allowed ips {networks}")
        lines.append(f"  rx {peer.rx_bytes} B, tx {peer.tx_bytes} B, "
                     f"{len(peer.staged)} packet(s) staged{_timers(peer, now)}")
        for role in ("current", "previous", "next"):
            session = getattr(peer, role)
            if session is not None:
                lines.append(f"  {role:8} session: {now - session.created:7.2f} s old, sent "
                             f"{session.send_counter}, "
                             f"{'initiator' if session.is_initiator else 'responder'}")
        if peer.pending is not None:
            lines.append(f"  handshake in progress (attempt {peer.handshake_attempts + 1})")
    counters = tunnel.counters.as_dict()
    del counters["drops"]
    drops = tunnel.counters.drops
    lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in counters.items() if v))
    lines.append("drops: " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"))
    return "\n".join(lines)


def _timers(peer: Peer, now: float) -> str:
    armed = [(name, at) for name, at in (
        ("handshake retransmit", peer.retransmit_handshake_at),
        ("keepalive", peer.send_keepalive_at), ("new handshake", peer.new_handshake_at),
        ("persistent keepalive", peer.persistent_keepalive_at)) if at is not None]
    return "".join(f"; {name} in {at - now:.2f} s" for name, at in armed)


# --- live mode -------------------------------------------------------------------------------


async def icmp_ping(source: str, destination: str, *, timeout: float = 2.0) -> float | None:
    """One ICMP echo from `source` (our tunnel address) to `destination` over a raw socket, as
    ping(8) does it; the round-trip time in seconds, or None. Needs CAP_NET_RAW."""
    v6 = ":" in destination
    ident, seq = os.getpid() & 0xFFFF, random.randrange(1 << 16)
    payload = b"fz-trio repl ping"
    message = icmp_echo_message(source, destination, ident, seq, payload)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    reply_type = 129 if v6 else 0
    with trio.socket.socket(family, socket.SOCK_RAW, proto) as sock:
        await sock.bind((source, 0))
        started = trio.current_time()
        await sock.sendto(message, (destination, 0))
        with trio.move_on_after(timeout):
            while True:
                data, address = await sock.recvfrom(65535)
                # IPv4 raw sockets receive the IP header too; IPv6 ones do not.
                shape = None if v6 else ip.layout(data)
                icmp = data if shape is None else data[shape[1]:]
                if (len(icmp) >= 8 and icmp[0] == reply_type and address[0] == destination
                        and int.from_bytes(icmp[4:6], "big") == ident
                        and int.from_bytes(icmp[6:8], "big") == seq):
                    return trio.current_time() - started
    return None


def live_namespace(interface: Interface) -> dict[str, Any]:
    device = interface.device
    sources = {iface.version: str(iface.ip) for iface in interface.config.interface.addresses}

    async def ping(address: str, *, timeout: float = 2.0) -> PingResult:
        """Send an ICMP echo through the tunnel from our address and await the reply."""
        version = 6 if ":" in address else 4
        if version not in sources:
            raise ValueError(f"the interface has no IPv{version} address to ping from")
        return PingResult(address, await icmp_ping(sources[version], address, timeout=timeout),
                          timeout)

    def show() -> None:
        """Peers, sessions, timers and counters of the live tunnel."""
        print(describe_tunnel(device, trio.current_time()))

    return {"trio": trio, "interface": interface, "tunnel": device,
            "peers": list(device.peers.values()), "stats": interface.stats,
            "counters": device.counters, "config": interface.config, "ping": ping, "show": show}


async def run_live_repl(config: Config) -> int:
    """`fz-trio repl CONFIG`: bring the tunnel up, run the console, take it down at the end."""
    with start_error_unwrapped():
        status = await _run_console_with(config)
    log.info("interface %s removed", config.interface_name)
    return status


async def _run_console_with(config: Config) -> int:
    status = 0  # also when SIGTERM cancels everything
    async with trio.open_nursery() as nursery:
        interface = await nursery.start(run_interface, config)
        nursery.start_soon(_cancel_on_sigterm, nursery.cancel_scope)
        peers = len(interface.device.peers)
        banner = (
            f"fz-trio {__version__} REPL: {config.interface_name} is up "
            f"({peers} peer{'s' * (peers != 1)}, UDP port {interface.udp.port}).\n"
            "Names: tunnel, peers, interface, stats, counters, config, show(), "
            "await ping(address), trio.\n"
            "Top-level await works. Ctrl-D or exit() takes the tunnel down.")
        status = await run_console(live_namespace(interface), banner)
        nursery.cancel_scope.cancel()
    return status


async def _cancel_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("received SIGTERM, shutting down")
            scope.cancel()
            return
