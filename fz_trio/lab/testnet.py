"""The test network: two network namespaces joined by a veth pair (docs/testing.md).

    netns fzt-a-<suffix>                         netns fzt-b-<suffix>
    va 198.18.0.1/30, fd00:18::1/64  <--veth-->  vb 198.18.0.2/30, fd00:18::2/64

`add_spoke()` joins further namespaces to A, each by a veth of its own. The WireGuard ends are
wireguard-go (`start_wireguard_go`) or fz-trio launched as `fz-trio IFNAME` (`start_fz_trio`), both
configured with `wg` and `ip` only (`configure_wg`).

Used by the pytest fixtures, `fz-trio demo` and the benchmark. Nothing here touches the host's own
network namespace: the veth pair is created inside namespace A and its peer end is born in B, and
every command runs under `ip netns exec`. Only the addresses above (and, for spokes, others
inside 198.18.0.0/15) and the tunnel addresses (100.64.0.0/10, fd00::/8) are ever configured.

Cleanup is the point of this module: destroy() kills every process we started and every process
still living in our namespaces, then deletes the namespaces (which removes the veths and any TUN
devices in them). It is idempotent, safe after a failed create(), and registered with atexit as a
last resort.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from fz_trio.core import as_network, encode_key

__all__ = [
    "NS_PREFIX",
    "TestNet",
    "TestNetError",
    "WgPeer",
    "created_namespaces",
    "expect_line",
    "fz_trio_command",
    "list_namespaces",
    "netns_unavailable_reason",
    "wait_for",
]

NS_PREFIX = "fzt-"
_UNDERLAY = ipaddress.ip_network("198.18.0.0/15")
WG_SOCKET_DIR = Path("/var/run/wireguard")  # compiled into wireguard-go and wg(8); not per-netns
DEFAULT_TIMEOUT = 30.0
KILL_GRACE = 2.0

# Every namespace any TestNet in this process created, so a test session can check that none leaked
# without judging namespaces that belong to other (parallel) runs.
_created_namespaces: set[str] = set()
_live: set[TestNet] = set()

T = TypeVar("T")


class TestNetError(Exception):
    """Building or using the test network failed; the message carries the command and its stderr."""

    __test__ = False  # not a pytest test class, despite the name


def created_namespaces() -> frozenset[str]:
    """Names of all namespaces created by TestNet instances in this process (live or destroyed)."""
    return frozenset(_created_namespaces)


def list_namespaces() -> set[str]:
    """Names of all network namespaces `ip netns` knows about."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    # Lines look like "fzt-a-1234 (id: 3)" or just "fzt-a-1234".
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netns_unavailable_reason(*, need_wireguard: bool = True) -> str | None:
    """Why the test network cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    try:
        subprocess.run(["ip", "netns", "list"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` does not work here: {exc}"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (modprobe tun)"
    if need_wireguard:
        for tool in ("wireguard-go", "wg"):
            if shutil.which(tool) is None:
                return f"needs `{tool}` (apt-get install wireguard-go wireguard-tools)"
    return None


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, *, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy and return it; else TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            desc = what or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {desc}")
        time.sleep(interval)


@attrs.frozen
class WgPeer:
    """One [Peer] for start_wireguard_go(); keys are raw 32-byte values."""

    public_key: bytes
    allowed_ips: list[str]
    endpoint: str | None = None
    preshared_key: bytes | None = None
    persistent_keepalive: int | None = None


class TestNet:
    """Two namespaces joined by a veth pair. Context manager, or create()/destroy() explicitly."""

    __test__ = False  # not a pytest test class, despite the name

    underlay_a = "198.18.0.1"
    underlay_b = "198.18.0.2"
    underlay_prefixlen = 30
    underlay6_a = "fd00:18::1"
    underlay6_b = "fd00:18::2"
    underlay6_prefixlen = 64
    tunnel_a4 = "100.64.0.1"
    tunnel_b4 = "100.64.0.2"
    tunnel_a6 = "fd00:64::1"
    tunnel_b6 = "fd00:64::2"
    veth_a = "va"
    veth_b = "vb"

    def __init__(self, suffix: str | None = None) -> None:
        self.suffix = suffix or secrets.token_hex(3)
        self.ns_a = f"{NS_PREFIX}a-{self.suffix}"
        self.ns_b = f"{NS_PREFIX}b-{self.suffix}"
        self._namespaces: list[str] = []  # the ones we actually created, in order
        self._procs: list[subprocess.Popen[bytes]] = []
        self._wg_ifnames: set[str] = set()
        self._tmpdir: Path | None = None
        self.created = False

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> TestNet:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def create(self) -> TestNet:
        """Build both namespaces and the veth link; on any failure, tear down what was built."""
        if self.created:
            raise TestNetError("TestNet.create() called twice")
        _live.add(self)
        try:
            for ns in (self.ns_a, self.ns_b):
                self._add_namespace(ns)
            # Created inside A with its peer born in B: the host namespace never sees either end.
            self.run(
                self.ns_a,
                "ip",
                "link",
                "add",
                self.veth_a,
                "type",
                "veth",
                "peer",
                "name",
                self.veth_b,
                "netns",
                self.ns_b,
            )
            for ns, dev, v4, v6 in (
                (self.ns_a, self.veth_a, self.underlay_a, self.underlay6_a),
                (self.ns_b, self.veth_b, self.underlay_b, self.underlay6_b),
            ):
                self.run(ns, "ip", "addr", "add", f"{v4}/{self.underlay_prefixlen}", "dev", dev)
                self.run(
                    ns, "ip", "addr", "add", f"{v6}/{self.underlay6_prefixlen}", "dev", dev, "nodad"
                )
                self.run(ns, "ip", "link", "set", dev, "up")
            self.created = True
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_namespace(self, ns: str) -> None:
        _host(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _created_namespaces.add(ns)
        # No DAD: addresses added later (TUN, veth) are usable at once, not after ~1 s.
        self.run(
            ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        )
        self.run(ns, "ip", "link", "set", "lo", "up")

    def add_spoke(self, tag: str, *, hub_address: str, address: str, prefixlen: int = 24) -> str:
        """One more namespace, `fzt-<tag>-<suffix>`, joined to A by a veth pair of its own.

        A is the hub: its end is `va<tag>` with `hub_address`, the spoke's end is `v<tag>` with
        `address` (both /`prefixlen`, inside 198.18.0.0/15). Destroyed with the rest; returns
        the namespace's name.
        """
        if not self.created:
            raise TestNetError("add_spoke() needs a created TestNet")
        if not (tag.isascii() and tag.isalnum() and len(tag) <= 8) or tag in ("a", "b"):
            raise TestNetError(f"a spoke's tag is up to 8 letters or digits, not a or b: {tag!r}")
        for addr in (hub_address, address):
            if ipaddress.ip_address(addr) not in _UNDERLAY:
                raise TestNetError(f"underlay address {addr} is outside {_UNDERLAY}")
        ns = f"{NS_PREFIX}{tag}-{self.suffix}"
        self._add_namespace(ns)
        hub_dev, spoke_dev = f"va{tag}", f"v{tag}"
        self.run(self.ns_a, "ip", "link", "add", hub_dev, "type", "veth", "peer", "name",
                 spoke_dev, "netns", ns)
        for where, dev, addr in ((self.ns_a, hub_dev, hub_address), (ns, spoke_dev, address)):
            self.run(where, "ip", "addr", "add", f"{addr}/{prefixlen}", "dev", dev)
            self.run(where, "ip", "link", "set", dev, "up")
        return ns

    def destroy(self) -> None:
        """Kill our processes and delete our namespaces; idempotent, every step runs regardless."""
        errors: list[str] = []
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            # Anything still running in the namespace (started by a test with its own Popen, say)
            # would keep sockets and the wireguard-go UAPI socket alive after the netns is gone.
            _kill_netns_pids(ns)
            _remove_journals(ns)
            try:
                _host(["ip", "netns", "delete", ns])
            except TestNetError as exc:
                if ns in list_namespaces():
                    errors.append(str(exc))
        self._namespaces.clear()
        for ifname in self._wg_ifnames:
            # wireguard-go removes its socket on SIGTERM, not on SIGKILL.
            (WG_SOCKET_DIR / f"{ifname}.sock").unlink(missing_ok=True)
        self._wg_ifnames.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.created = False
        _live.discard(self)
        if errors:
            raise TestNetError("TestNet.destroy() incomplete: " + "; ".join(errors))

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.ns_a, self.ns_b)

    @property
    def tmpdir(self) -> Path:
        """A private directory for keys and logs, removed by destroy()."""
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"fzt-{self.suffix}-"))
        return self._tmpdir

    # -- running things --------------------------------------------------------------------------
    def _check_ns(self, ns: str) -> None:
        # Refuse anything else, above all the host namespace: tests must not touch real networking.
        if ns not in self._namespaces:
            raise TestNetError(
                f"namespace {ns!r} does not belong to this TestNet {self.namespaces}"
            )

    def _argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        self._check_ns(ns)
        if not argv:
            raise TestNetError("no command given")
        return ["ip", "netns", "exec", ns, *map(str, argv)]

    def run(
        self,
        ns: str,
        *argv: str,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `ns` (`ip netns exec ns argv...`), capture text output.

        `env` adds to (not replaces) the current environment. With check=True a non-zero exit
        raises TestNetError carrying the command, exit code and stderr.
        """
        cmd = self._argv(ns, argv)
        try:
            cp = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=_merge_env(env),
            )
        except subprocess.TimeoutExpired as exc:
            raise TestNetError(f"timed out after {timeout:g}s: {' '.join(cmd)}") from exc
        if check and cp.returncode != 0:
            raise TestNetError(
                f"command failed (exit {cp.returncode}) in {ns}: {' '.join(argv)}\n"
                f"stderr: {cp.stderr.strip()}\nstdout: {cp.stdout.strip()}"
            )
        return cp

    def popen(self, ns: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside `ns`; destroy() terminates it (SIGTERM, SIGKILL after a grace).

        Keyword arguments go to subprocess.Popen, except that `env` adds to the current
        environment. The process gets its own session so that its children die with it.
        """
        cmd = self._argv(ns, argv)
        env = kw.pop("env", None)
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[bytes] = subprocess.Popen(cmd, env=_merge_env(env), **kw)
        self._procs.append(proc)
        return proc

    def python_env(self) -> dict[str, str]:
        """Extra environment for a Python child that must import this very fz_trio checkout."""
        root = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}

    def run_python(
        self, ns: str, code: str, *, check: bool = True, timeout: float = DEFAULT_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet inside `ns` with this checkout importable."""
        return self.run(
            ns, sys.executable, "-c", code, check=check, timeout=timeout, env=self.python_env()
        )

    def popen_python(self, ns: str, code: str) -> subprocess.Popen[bytes]:
        """Start a Python snippet inside `ns` with stdin/stdout pipes (see expect_line)."""
        return self.popen(
            ns,
            sys.executable,
            "-u",
            "-c",
            code,
            env=self.python_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )

    def link_exists(self, ns: str, ifname: str) -> bool:
        return self.run(ns, "ip", "link", "show", "dev", ifname, check=False).returncode == 0

    # -- wireguard-go ----------------------------------------------------------------------------
    def start_wireguard_go(
        self,
        ns: str,
        ifname: str,
        *,
        private_key: bytes,
        listen_port: int | None,
        peers: list[WgPeer],
        addresses: list[str],
        mtu: int = 1420,
        timeout: float = 10.0,
    ) -> subprocess.Popen[bytes]:
        """Start a configured wireguard-go peer `ifname` in `ns` and return its (tracked) process.

        wireguard-go's control socket is /var/run/wireguard/IFNAME.sock on the host filesystem,
        shared by all namespaces, so `ifname` must be unique on the machine: two instances called
        wg0 in two namespaces would collide. Use e.g. f"wga{net.suffix}". Routes for the peers'
        allowed IPs go into `main`; a /0 is fine there because the underlay /30 is more specific.
        """
        self._check_ns(ns)
        sock = WG_SOCKET_DIR / f"{ifname}.sock"
        if ifname in self._wg_ifnames or _uapi_in_use(sock):
            raise TestNetError(
                f"{sock} is in use: wireguard-go's control socket is shared by all "
                f"namespaces, so interface names must be unique on this host (got {ifname!r})"
            )
        # A stale socket (its wireguard-go was SIGKILLed) would fool the readiness check below.
        sock.unlink(missing_ok=True)
        log_path = self.tmpdir / f"wireguard-go-{ns}-{ifname}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - the child owns it from here
        try:
            proc = self.popen(
                ns,
                "wireguard-go",
                ifname,
                env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "verbose"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self._wg_ifnames.add(ifname)

        def ready() -> bool:
            if proc.poll() is not None:
                raise TestNetError(
                    f"wireguard-go {ifname} in {ns} exited with {proc.returncode}:\n"
                    + log_path.read_text(errors="replace")[-2000:]
                )
            return sock.exists() and self.link_exists(ns, ifname)

        wait_for(ready, timeout, what=f"wireguard-go {ifname} in {ns} to come up")

        self.configure_wg(ns, ifname, private_key=private_key, listen_port=listen_port,
                          peers=peers, addresses=addresses, mtu=mtu)
        return proc

    def configure_wg(
        self,
        ns: str,
        ifname: str,
        *,
        private_key: bytes,
        listen_port: int | None,
        peers: Sequence[WgPeer],
        addresses: Sequence[str],
        mtu: int | None = 1420,
    ) -> None:
        """Configure a userspace WireGuard interface the way wg-quick does: keys, port and peers
        with one `wg set`, then `ip` for the addresses, the MTU (None: leave it), the link up and
        a route for each allowed IP."""
        # Keys go through 0600 files, never argv (visible in ps) — same as wg-quick.
        wg_set: list[str] = ["wg", "set", ifname, "private-key", self.key_file(private_key)]
        if listen_port is not None:
            wg_set += ["listen-port", str(listen_port)]
        for peer in peers:
            wg_set += ["peer", encode_key(peer.public_key)]
            if peer.preshared_key is not None:
                wg_set += ["preshared-key", self.key_file(peer.preshared_key)]
            if peer.endpoint is not None:
                wg_set += ["endpoint", peer.endpoint]
            if peer.persistent_keepalive is not None:
                wg_set += ["persistent-keepalive", str(peer.persistent_keepalive)]
            wg_set += ["allowed-ips", ",".join(peer.allowed_ips)]
        self.run(ns, *wg_set)

        for addr in addresses:
            extra = ["nodad"] if ipaddress.ip_interface(addr).version == 6 else []
            self.run(ns, "ip", "addr", "add", addr, "dev", ifname, *extra)
        mtu_args = [] if mtu is None else ["mtu", str(mtu)]
        self.run(ns, "ip", "link", "set", "dev", ifname, *mtu_args, "up")
        for peer in peers:
            for prefix in peer.allowed_ips:
                net = as_network(prefix)
                cp = self.run(
                    ns,
                    "ip",
                    f"-{net.version}",
                    "route",
                    "add",
                    str(net),
                    "dev",
                    ifname,
                    check=False,
                )
                # The address's own on-link route often covers the prefix already.
                if cp.returncode != 0 and "File exists" not in cp.stderr:
                    raise TestNetError(
                        f"adding route {net} dev {ifname} in {ns}: {cp.stderr.strip()}"
                    )

    # -- fz-trio -----------------------------------------------------------------------------
    def start_fz_trio(
        self,
        ns: str,
        ifname: str,
        *,
        private_key: bytes | None = None,
        listen_port: int | None = None,
        peers: Sequence[WgPeer] = (),
        addresses: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        timeout: float = 20.0,
    ) -> Path:
        """Launch `fz-trio IFNAME` in `ns` as wg-quick launches a userspace implementation and
        return the daemon's log file.

        The command goes to the background once the TUN device and the UAPI socket are ready,
        so it must exit 0 with both in place. The daemon lives in `ns`, so destroy() ends it
        (`ip link del IFNAME` does too). Given a `private_key`, the interface is then configured
        with `wg` and `ip` only (configure_wg; its MTU stays fz-trio's own). The UAPI socket is
        shared by all namespaces, as wireguard-go's is: `ifname` must be unique on the host.
        """
        self._check_ns(ns)
        sock = WG_SOCKET_DIR / f"{ifname}.sock"
        if ifname in self._wg_ifnames or _uapi_in_use(sock):
            raise TestNetError(f"{sock} is in use: interface names must be unique on this host")
        log_path = self.tmpdir / f"fz-trio-{ns}-{ifname}.log"
        self._wg_ifnames.add(ifname)
        cp = self.run(
            ns,
            *fz_trio_command(),
            "--log-file",
            str(log_path),
            *extra_args,
            ifname,
            check=False,
            timeout=timeout,
            env=self.python_env(),
        )
        if cp.returncode != 0 or not (sock.exists() and self.link_exists(ns, ifname)):
            log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise TestNetError(
                f"fz-trio {ifname} in {ns} did not come up (exit {cp.returncode}, socket "
                f"{'present' if sock.exists() else 'missing'}): {cp.stderr.strip()}\n{log}"
            )
        if private_key is not None:
            self.configure_wg(ns, ifname, private_key=private_key, listen_port=listen_port,
                              peers=peers, addresses=addresses, mtu=None)
        return log_path

    def wg(self, ns: str, *args: str, input: str | None = None) -> str:
        """`wg ARGS...` inside `ns` (TestNetError if it fails); its standard output."""
        return self.run(ns, "wg", *args, input=input).stdout

    def key_file(self, key: bytes) -> str:
        """A 0600 file in tmpdir holding `key` in base64, for `wg set ... private-key FILE`."""
        fd, path = tempfile.mkstemp(dir=self.tmpdir, prefix="key-")
        try:
            os.write(fd, (encode_key(key) + "\n").encode("ascii"))
        finally:
            os.close(fd)
        return path


def fz_trio_command() -> list[str]:
    """How to run this checkout's fz-trio: the `fz-trio` script installed beside the running
    interpreter (what a user runs), else `python -m fz_trio`."""
    script = Path(sys.executable).with_name("fz-trio")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "fz_trio"]


def expect_line(proc: subprocess.Popen[bytes], timeout: float = DEFAULT_TIMEOUT) -> str:
    """Read one line from an unbuffered (bufsize=0) stdout pipe of `proc`, with a timeout.

    Raises TestNetError with the process's stderr if it exits or stays silent.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            proc.kill()
            proc.wait(5)
            raise TestNetError(
                f"no output line within {timeout:g}s; got {bytes(buf)!r}{_stderr(proc)}"
            )
        chunk = os.read(fd, 1)
        if not chunk:
            proc.wait(5)
            raise TestNetError(f"process exited ({proc.returncode}) before a line{_stderr(proc)}")
        buf += chunk
    return buf.decode().rstrip("\n")


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None or proc.poll() is None:
        return ""
    return "\nstderr:\n" + proc.stderr.read().decode(errors="replace")[-3000:]


# -- helpers -------------------------------------------------------------------------------------
def _merge_env(extra: Mapping[str, str] | object | None) -> dict[str, str] | None:
    if extra is None:
        return None
    if not isinstance(extra, Mapping):
        raise TypeError("env must be a mapping")
    return {**os.environ, **extra}


def _host(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run an `ip netns add/delete` on the host; these are the only host-side commands we run."""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=DEFAULT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestNetError(f"{' '.join(argv)}: {exc}") from exc
    if cp.returncode != 0:
        raise TestNetError(f"{' '.join(argv)} failed (exit {cp.returncode}): {cp.stderr.strip()}")
    return cp


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after KILL_GRACE seconds, reap it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    try:
        # Only signal a group the child leads (start_new_session): never our own group.
        if pgid == proc.pid and pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _uapi_in_use(sock: Path) -> bool:
    """Whether a live process listens on a wireguard UAPI socket (not just a stale file)."""
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(sock))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # e.g. a timeout: someone is there but busy; do not steal the name
    return True


def _remove_journals(ns: str) -> None:
    """fz-trio's host-state journals of a namespace about to go (a killed fz-trio leaves its
    own): what they list goes with the namespace."""
    try:
        inode = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return
    for journal in Path("/run/fz-trio").glob(f"*.{inode}.json"):
        journal.unlink(missing_ok=True)


def _netns_pids(ns: str) -> list[int]:
    cp = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    me = os.getpid()
    return [int(p) for p in cp.stdout.split() if p.isdigit() and int(p) != me]


def _kill_netns_pids(ns: str) -> None:
    pids = _netns_pids(ns)
    if not pids:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        wait_for(lambda: not _netns_pids(ns), KILL_GRACE, what=f"processes in {ns} to exit")
    except TimeoutError:
        for pid in _netns_pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@atexit.register
def _destroy_leftovers() -> None:
    # Last resort for callers that forgot destroy() (or a KeyboardInterrupt skipped it).
    for net in list(_live):
        try:
            net.destroy()
        except Exception:  # noqa: BLE001 - nothing sensible to do at interpreter exit
            pass
