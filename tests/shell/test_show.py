"""`fz-trio show` and `fz-trio down`: wg(8)'s wording to the byte (units, times, peer order,
addresses as glibc spells them), no secrets in any output, the blocking UAPI client against
servers that misbehave, and the real thing: an interface configured with `wg set`, shown by
`wg show` and by `fz-trio show` side by side, with a handshake to a wireguard-go peer, then
taken down with `fz-trio down`."""

from __future__ import annotations

import base64
import ctypes
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fz_trio import show
from fz_trio.core import encode_hex_key, encode_key, generate_private_key, public_key_of
from fz_trio.shell import uapi_client
from fz_trio.uapi import DeviceState, PeerState, format_get, socket_path

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def key(n: int) -> bytes:
    return bytes([n]) * 32


def peer(n: int, **changes: Any) -> PeerState:
    fields: dict[str, Any] = dict(
        public_key=key(n), preshared_key=None, endpoint=None, last_handshake=(0, 0),
        tx_bytes=0, rx_bytes=0, persistent_keepalive=0, allowed_ips=())
    fields.update(changes)
    return PeerState(**fields)


def nets(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


# --------------------------------------------------------------------------------------------
# wg's wording.


@pytest.mark.parametrize("seconds, text", [
    (0, ""),
    (1, "1 second"),
    (2, "2 seconds"),
    (60, "1 minute"),
    (65, "1 minute, 5 seconds"),
    (3600, "1 hour"),
    (3661, "1 hour, 1 minute, 1 second"),
    (86400, "1 day"),
    (2 * 86400 + 7200, "2 days, 2 hours"),
    (365 * 86400, "1 year"),
    (366 * 86400 + 1, "1 year, 1 day, 1 second"),
    (3 * 365 * 86400 + 59, "3 years, 59 seconds"),
])
def test_pretty_time(seconds: int, text: str) -> None:
    assert show.pretty_time(seconds) == text


def test_ago_and_every() -> None:
    assert show.ago(1000, 1000.0) == "Now"
    assert show.ago(1000, 1000.99) == "Now"  # time(NULL) is whole seconds
    assert show.ago(1000, 1001.0) == "1 second ago"
    assert show.ago(1000, 1065.5) == "1 minute, 5 seconds ago"
    assert show.ago(1000, 999.5) == "(System clock wound backward; connection problems may ensue.)"
    assert show.every(25) == "every 25 seconds"
    assert show.every(60) == "every 1 minute"
    assert show.every(65535) == "every 18 hours, 12 minutes, 15 seconds"


@pytest.mark.parametrize("count, text", [
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.00 KiB"),
    (1260, "1.23 KiB"),
    (1024 * 1024 - 1, "1024.00 KiB"),  # %.2f rounds up, the unit stays
    (1024 * 1024, "1.00 MiB"),
    (4_781_506, "4.56 MiB"),
    (3 * 2**30 // 2, "1.50 GiB"),
    (2**40, "1.00 TiB"),
    (2**64 - 1, "16777216.00 TiB"),
])
def test_bytes(count: int, text: str) -> None:
    assert show.format_bytes(count) == text


def _c_bytes(count: int) -> str:
    """show.c's bytes(), with glibc's own snprintf doing the "%.2f"."""
    if count < 1024:
        return f"{count} B"
    libc = ctypes.CDLL(None)
    buf = ctypes.create_string_buffer(64)
    for unit, value in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)):
        if count < value * 1024:
            libc.snprintf(buf, 64, b"%.2f", ctypes.c_double(float(count) / value))
            return f"{buf.value.decode()} {unit}"
    libc.snprintf(buf, 64, b"%.2f", ctypes.c_double(float(count) / (1 << 30) / 1024))
    return f"{buf.value.decode()} TiB"


@given(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 2**22),
                 # halves of a hundredth: where rounding could differ
                 st.integers(0, 2**20).map(lambda n: n * 128 + 64)))
def test_bytes_rounds_as_glibc_printf(count: int) -> None:
    assert show.format_bytes(count) == _c_bytes(count)


_words = st.sampled_from([0, 0, 0, 0, 1, 0xffff, 0x102, 0xfe80, 0xabcd])


@given(st.one_of(st.lists(_words, min_size=8, max_size=8),
                 st.lists(st.integers(0, 0xffff), min_size=8, max_size=8)))
def test_ipv6_text_is_glibc_inet_ntop(words: list[int]) -> None:
    packed = b"".join(w.to_bytes(2, "big") for w in words)
    address = ipaddress.IPv6Address(packed)
    assert show.format_address(address) == socket.inet_ntop(socket.AF_INET6, packed)


def test_addresses_networks_and_endpoints() -> None:
    assert show.format_address(ipaddress.ip_address("::ffff:198.18.0.1")) == "::ffff:198.18.0.1"
    assert show.format_address(ipaddress.ip_address("::1")) == "::1"
    assert show.format_network(ipaddress.ip_network("::ffff:0:0/96")) == "::ffff:0.0.0.0/96"
    assert show.format_network(ipaddress.ip_network("100.64.0.0/10")) == "100.64.0.0/10"
    assert show.format_endpoint(("198.18.0.2", 51820)) == "198.18.0.2:51820"
    assert show.format_endpoint(("fd00:0::2", 1)) == "[fd00::2]:1"
    assert show.format_endpoint(("fe80::1%eth0", 51820)) == "[fe80::1%eth0]:51820"


def test_peers_sort_like_wg() -> None:
    peers = [peer(1), peer(2, last_handshake=(100, 5)), peer(3), peer(4, last_handshake=(200, 0)),
             peer(5, last_handshake=(100, 7)), peer(6, last_handshake=(0, 9))]
    assert [p.public_key[0] for p in show.sort_peers(peers)] == [4, 5, 2, 6, 1, 3]


# --------------------------------------------------------------------------------------------
# The text and the JSON.

PRIVATE = generate_private_key()
PSK = bytes(range(1, 33))


def device() -> DeviceState:
    return DeviceState(private_key=PRIVATE, listen_port=51820, fwmark=0xca6c, peers=(
        peer(1, endpoint=("198.18.0.2", 51820), allowed_ips=nets("100.64.0.2/32", "fd00::/64"),
             persistent_keepalive=25),
        peer(2, preshared_key=PSK, endpoint=("fd00::18:2", 4), last_handshake=(int(NOW) - 65, 0),
             rx_bytes=1260, tx_bytes=4_781_506, allowed_ips=nets("100.64.1.0/24")),
    ))


def test_text_is_wg_show_s_layout() -> None:
    assert show.show_text("wg0", device(), now=NOW + 0.5) == f"""\
interface: wg0
  public key: {encode_key(public_key_of(PRIVATE))}
  private key: (hidden)
  listening port: 51820
  fwmark: 0xca6c

peer: {encode_key(key(2))}
  preshared key: (hidden)
  endpoint: [fd00::18:2]:4
  allowed ips: 100.64.1.0/24
  latest handshake: 1 minute, 5 seconds ago
  transfer: 1.23 KiB received, 4.56 MiB sent

peer: {encode_key(key(1))}
  endpoint: 198.18.0.2:51820
  allowed ips: 100.64.0.2/32, fd00::/64
  persistent keepalive: every 25 seconds
"""


def test_a_bare_interface_is_one_line_and_interfaces_join_with_a_blank_line() -> None:
    bare = DeviceState(private_key=None, listen_port=0, fwmark=0, peers=())
    assert show.show_text("wg1", bare, now=NOW) == "interface: wg1\n"
    one_peer = attrs.evolve(bare, peers=(peer(7),))
    assert show.show_text("wg2", one_peer, now=NOW) == \
        f"interface: wg2\n\npeer: {encode_key(key(7))}\n  allowed ips: (none)\n"
    assert show.show_interfaces(["interface: a\n", "interface: b\n"]) == \
        "interface: a\n\ninterface: b\n"


STATUS: dict[str, Any] = {
    "interface": "wg0", "version": "0.1.0", "pid": 4242, "kernels": "native",
    "kernels_reason": "native extension", "mtu": 1420,
    "stats": {"protocol": {"drops": {"no_route": 3, "replayed": 1},
                           "handshake_initiations_sent": 2, "handshakes_completed": 1},
              "io": {"errors": {"udp_send_errno_101": 1}},
              "tun": {"queues": 2, "io": "threads", "offload": "tso+uso", "coalescing": True},
              "udp_gso": True},
    "peers": {
        encode_hex_key(key(2)): {
            "sessions": {"current": {"age": 12.345, "initiator": True, "sent": 77},
                         "previous": {"age": 130.0, "initiator": False, "sent": 5}},
            "staged": 0, "handshake_in_flight": False, "handshake_attempts": 0,
            "timers": {"retransmit_handshake": None, "send_keepalive": 9.5,
                       "new_handshake": -0.01, "zero_key_material": None,
                       "persistent_keepalive": None}},
        encode_hex_key(key(1)): {
            "sessions": {}, "staged": 3, "handshake_in_flight": True, "handshake_attempts": 2,
            "timers": {"retransmit_handshake": 4.25, "persistent_keepalive": 20.0}},
    },
}


def wg_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith(show.EXTRA_PREFIX))


def test_fz_trio_lines_come_after_wg_s_and_leave_them_alone() -> None:
    plain = show.show_text("wg0", device(), now=NOW)
    text = show.show_text("wg0", device(), now=NOW, status=STATUS)
    assert wg_lines(text) == plain
    sections = text.split("\n\n")
    assert sections[0].splitlines()[5:] == [
        "  fz-trio: pid 4242, version 0.1.0, mtu 1420",
        "  fz-trio: data path kernels: native (native extension)",
        "  fz-trio: tun: 2 queues, io threads, offload tso+uso, coalescing on",
        "  fz-trio: udp gso: on",
        "  fz-trio: handshakes: initiations sent 2, completed 1",
        "  fz-trio: drops: no_route 3, replayed 1",
        "  fz-trio: io errors: udp_send_errno_101 1",
    ]
    assert sections[1].splitlines()[-3:] == [
        "  fz-trio: sessions: current 12.3 s old (initiator, 77 sent), "
        "previous 130.0 s old (responder, 5 sent)",
        "  fz-trio: handshake: none in flight, 0 packets staged",
        "  fz-trio: timers: keepalive in 9.5 s, new handshake due now",
    ]
    assert sections[2].splitlines()[-3:] == [
        "  fz-trio: sessions: none",
        "  fz-trio: handshake: in flight, 2 retries, 3 packets staged",
        "  fz-trio: timers: retransmit handshake in 4.2 s, persistent keepalive in 20.0 s",
    ]


@pytest.mark.parametrize("status", [
    {}, {"stats": None, "peers": []}, {"stats": {"tun": 5, "protocol": {"drops": "x"}}},
    {"peers": {encode_hex_key(key(1)): {"sessions": {"current": 3}, "timers": [],
                                        "staged": "many", "handshake_attempts": None}}},
])
def test_a_status_of_another_shape_never_breaks_wg_s_lines(status: dict[str, Any]) -> None:
    text = show.show_text("wg0", device(), now=NOW, status=status)
    assert wg_lines(text) == show.show_text("wg0", device(), now=NOW)


def secrets_of(state: DeviceState) -> list[str]:
    keys = [state.private_key] + [p.preshared_key for p in state.peers]
    return [text for k in keys if k is not None
            for text in (encode_key(k), encode_hex_key(k), encode_key(k)[:20], k.hex()[:20])]


def test_json_fields_and_no_secrets() -> None:
    state = device()
    line = show.show_json("wg0", state, STATUS)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj == {
        "interface": "wg0", "public_key": encode_key(public_key_of(PRIVATE)),
        "listen_port": 51820, "fwmark": 0xca6c,
        "peers": [
            {"public_key": encode_key(key(2)), "has_preshared_key": True,
             "endpoint": "[fd00::18:2]:4", "allowed_ips": ["100.64.1.0/24"],
             "latest_handshake": int(NOW) - 65, "rx_bytes": 1260, "tx_bytes": 4_781_506,
             "persistent_keepalive": 0},
            {"public_key": encode_key(key(1)), "has_preshared_key": False,
             "endpoint": "198.18.0.2:51820", "allowed_ips": ["100.64.0.2/32", "fd00::/64"],
             "latest_handshake": None, "rx_bytes": 0, "tx_bytes": 0,
             "persistent_keepalive": 25}],
        "fz_trio": STATUS,
    }
    assert show.show_object("wg0", attrs.evolve(state, private_key=None))["public_key"] is None
    assert json.loads(show.show_json("wg0", state))["fz_trio"] is None
    text = show.show_text("wg0", state, now=NOW, status=STATUS)
    for secret in secrets_of(state):
        assert secret not in line and secret not in text


# --------------------------------------------------------------------------------------------
# The client against servers of every kind (a root-only directory: root only).

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the UAPI directory is root's")


def unique(prefix: str) -> str:
    return prefix + secrets.token_hex(4)


@attrs.define
class FakeServer:
    """A UAPI socket in the real directory, answering each connection with `behave`."""

    name: str
    behave: Callable[[socket.socket], None]
    sock: socket.socket = attrs.field(init=False)
    thread: threading.Thread = attrs.field(init=False)
    received: list[bytes] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.makedirs(os.path.dirname(socket_path(self.name)), exist_ok=True)
        self.sock.bind(socket_path(self.name))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self.behave(conn)
                except OSError:  # the client went away (list_interfaces only connects)
                    pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        Path(socket_path(self.name)).unlink(missing_ok=True)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], FakeServer]]:
    servers: list[FakeServer] = []

    def start(behave: Callable[[socket.socket], None]) -> FakeServer:
        server = FakeServer(unique("fzc"), behave)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\n\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def answer_in_pieces(reply: bytes) -> Callable[[socket.socket], None]:
    def behave(conn: socket.socket) -> None:
        read_request(conn)
        for i in range(len(reply)):
            conn.sendall(reply[i:i + 1])
    return behave


@needs_root
def test_get_reads_a_reply_sent_a_byte_at_a_time(serve: Any) -> None:
    state = device()
    server = serve(answer_in_pieces(format_get(state) + b"more bytes never read"))
    assert uapi_client.get(server.name) == state


@needs_root
def test_wireguard_go_s_close_means_no_status_and_stop_fails(serve: Any) -> None:
    def close_unread(conn: socket.socket) -> None:
        conn.recv(1)  # wireguard-go reads the operation line, then hangs up: a reset here
    server = serve(close_unread)
    assert uapi_client.status(server.name) is None
    with pytest.raises(uapi_client.UapiClientError) as info:
        uapi_client.stop(server.name)
    assert info.value.kind == uapi_client.CLOSED
    assert "without a reply" in str(info.value)


@needs_root
def test_errno_replies(serve: Any) -> None:
    server = serve(answer_in_pieces(b"errno=22\n\n"))
    with pytest.raises(uapi_client.UapiClientError) as info:
        uapi_client.get(server.name)
    assert (info.value.kind, info.value.errno) == (uapi_client.REFUSED, 22)
    assert uapi_client.status(server.name) is None  # a server that does not know fz_status
    garbage = serve(answer_in_pieces(b"nonsense\n\n"))
    with pytest.raises(uapi_client.UapiClientError) as info:
        uapi_client.get(garbage.name)
    assert info.value.kind == uapi_client.BAD_REPLY


@needs_root
def test_a_silent_server_times_out(serve: Any) -> None:
    release = threading.Event()
    server = serve(lambda conn: release.wait(10))
    start = time.monotonic()
    try:
        with pytest.raises(uapi_client.UapiClientError) as info:
            uapi_client.request(server.name, b"get=1\n\n", timeout=0.3)
    finally:
        release.set()
    assert info.value.kind == uapi_client.TIMED_OUT
    assert time.monotonic() - start < 3


@needs_root
def test_missing_stale_and_badly_named_sockets() -> None:
    name = unique("fzc")
    with pytest.raises(uapi_client.UapiClientError) as info:
        uapi_client.get(name)
    assert info.value.kind == uapi_client.NOT_RUNNING and "not running" in str(info.value)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path(name))
    stale.close()
    try:
        with pytest.raises(uapi_client.UapiClientError) as info:
            uapi_client.status(name)
        assert info.value.kind == uapi_client.NOT_RUNNING
        assert name not in uapi_client.list_interfaces()
        assert os.path.exists(socket_path(name))  # skipped, not removed
    finally:
        os.unlink(socket_path(name))
    with pytest.raises(uapi_client.UapiClientError) as info:
        uapi_client.get("../etc")
    assert info.value.kind == uapi_client.BAD_NAME


@needs_root
def test_list_interfaces_names_the_sockets_that_answer(serve: Any) -> None:
    server = serve(answer_in_pieces(b"errno=0\n\n"))
    assert server.name in uapi_client.list_interfaces()


@needs_root
def test_without_root_it_is_permission_denied(serve: Any) -> None:
    server = serve(answer_in_pieces(b"errno=0\n\n"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody, then one request
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                uapi_client.request(server.name, b"get=1\n\n")
                kind = "answered"
            except uapi_client.UapiClientError as e:
                kind = f"{e.kind}: {e}"
            os.write(write, kind.encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        kind = b""
        while chunk := os.read(read, 4096):
            kind += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert kind.decode().startswith(uapi_client.PERMISSION_DENIED + ": permission denied")


# --------------------------------------------------------------------------------------------
# The command line.


def test_show_and_down_need_root(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from fz_trio import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for argv in (["show"], ["show", "wg0", "--json"], ["down", "wg0"]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert f"fz-trio {argv[0]} must run as root" in err and "Traceback" not in err


def fz(*args: str, ns: str | None = None, timeout: float = 30
       ) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*prefix, sys.executable, "-m", "fz_trio", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@needs_root
def test_show_and_down_of_an_interface_nobody_serves() -> None:
    name = unique("fzc")
    for argv in (["show", name], ["down", name]):
        result = fz(*argv)
        assert result.returncode == 1
        assert result.stderr == f"fz-trio: {argv[0]}: interface {name} is not running " \
                                f"({socket_path(name)}: no such socket)\n"
    result = fz("show", "a/b")
    assert result.returncode == 1 and "invalid interface name" in result.stderr


# --------------------------------------------------------------------------------------------
# The real thing: two namespaces on a veth in 198.18.0.0/15, fz-trio in one, wireguard-go in
# the other, both configured with `wg set`.

# `wg` as a user runs it on a pipe: no colour, keys hidden.
WG_ENV = {k: v for k, v in os.environ.items() if k not in ("WG_HIDE_KEYS", "WG_COLOR_MODE")}


def run(*argv: str, ns: str | None = None, check: bool = True, input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    result = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30,
                            env=WG_ENV, input=input)
    if check and result.returncode:
        raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr}")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return result


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie nobody reaped yet counts: it runs no more)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rpartition(")")[2].split()[0] == "Z"


def namespace_pids(ns: str) -> list[int]:
    out = run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


@attrs.define
class Namespace:
    name: str
    links: list[str] = attrs.Factory(list)  # interfaces to delete first (their daemons exit)


@pytest.fixture
def namespaces() -> Iterator[Callable[[], Namespace]]:
    """Fresh `fzs-*` namespaces, each torn down in the end whatever happened: the userspace
    interfaces deleted (so their daemons exit and remove their sockets), any process still
    inside killed, the namespace deleted."""
    made: list[Namespace] = []

    def make() -> Namespace:
        ns = Namespace(unique("fzs-"))
        run("ip", "netns", "add", ns.name)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            for link in ns.links:
                run("ip", "link", "del", link, ns=ns.name, check=False)
            try:
                wait_for(lambda ns=ns: not namespace_pids(ns.name), 5, "the daemons to exit")
            except AssertionError:
                for pid in namespace_pids(ns.name):
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
            run("ip", "netns", "del", ns.name, check=False)
            for link in ns.links:
                path = Path(socket_path(link))
                try:
                    wait_for(lambda path=path: not path.exists(), 5, f"{path} to go")
                except AssertionError:
                    path.unlink(missing_ok=True)


def launch_fz_trio(ns: Namespace) -> str:
    ifname = unique("fzs")  # 11 characters; the UAPI directory is shared by all namespaces
    ns.links.append(ifname)
    result = fz(ifname, ns=ns.name)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(socket_path(ifname))
    return ifname


def write_key(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A private key from `wg genkey` in a 0600 file, and its public key."""
    private = run("wg", "genkey").stdout.strip()
    path = tmp_path / name
    path.touch(0o600)
    path.write_text(private + "\n")
    return path, run("wg", "pubkey", input=private + "\n").stdout.strip()


@attrs.frozen
class Pair:
    fz_ns: str
    fz_if: str
    fz_public: str
    go_ns: str
    go_if: str
    go_public: str


@pytest.fixture
def pair(namespaces: Callable[[], Namespace], tmp_path: Path) -> Pair:
    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        pytest.skip("needs wg and wireguard-go")
    a, b = namespaces(), namespaces()
    subnet = secrets.randbelow(256)
    a_ip, b_ip = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
    veth = unique("fzv")
    run("ip", "link", "add", veth, "netns", a.name, "type", "veth", "peer", "name", veth,
        "netns", b.name)
    for ns, ip in ((a, a_ip), (b, b_ip)):
        run("ip", "addr", "add", f"{ip}/24", "dev", veth, ns=ns.name)
        run("ip", "link", "set", veth, "up", ns=ns.name)
        run("ip", "link", "set", "lo", "up", ns=ns.name)

    fz_if = launch_fz_trio(a)
    go_if = unique("fzg")
    b.links.append(go_if)
    run("wireguard-go", go_if, ns=b.name)
    fz_key, fz_public = write_key(tmp_path, "fz.key")
    go_key, go_public = write_key(tmp_path, "go.key")
    run("wg", "set", go_if, "private-key", str(go_key), "listen-port", "51820",
        "peer", fz_public, "allowed-ips", "100.64.7.1/32", ns=b.name)
    run("ip", "link", "set", go_if, "up", ns=b.name)
    # Keepalive on: fz-trio sends one at once, so the handshake happens now.
    run("wg", "set", fz_if, "private-key", str(fz_key), "listen-port", "51821",
        "fwmark", "0x2a", "peer", go_public,
        "allowed-ips", "100.64.7.2/32,fd00:64::/64,100.64.8.0/24",
        "endpoint", f"{b_ip}:51820", "persistent-keepalive", "25",
        "peer", write_key(tmp_path, "other.key")[1], "allowed-ips", "100.64.9.0/24",
        ns=a.name)
    run("ip", "link", "set", fz_if, "up", ns=a.name)
    def handshaken() -> bool:
        out = run("wg", "show", fz_if, "latest-handshakes", ns=a.name).stdout
        return any(line.split("\t")[1] != "0" for line in out.splitlines())

    wait_for(handshaken, 10, "the handshake")
    return Pair(a.name, fz_if, fz_public, b.name, go_if, go_public)


def same_as_wg(ns: str, ifname: str, *, every: bool = False) -> tuple[str, str]:
    """`fz-trio show IFNAME` (or `fz-trio show`, then `ifname`'s section of it) and
    `wg show IFNAME`, taken again until no second ticked between them (their "latest
    handshake" lines would differ by one): what only grows and is the same before and after
    was the same in between."""
    def ours() -> str:
        result = fz("show", ns=ns) if every else fz("show", ifname, ns=ns)
        if not every:  # of all, another test's interface may be on its way out
            assert result.returncode == 0, result.stderr
        return section(result.stdout, ifname)

    for _ in range(5):
        before = ours()
        theirs = run("wg", "show", ifname, ns=ns).stdout
        if wg_lines(ours()) == wg_lines(before):  # fz-trio's timers tick on, always
            return before, theirs
    raise AssertionError("`fz-trio show` kept changing")


def section(text: str, ifname: str) -> str:
    """One interface's part of a `show` of all of them."""
    parts = text.split("\ninterface: ")
    parts = [parts[0]] + ["interface: " + p for p in parts[1:]]
    found = [p for p in parts if p.startswith(f"interface: {ifname}\n")]
    assert len(found) == 1, text
    return found[0] if found[0].endswith("\n") else found[0] + "\n"


@pytest.mark.netns
def test_fz_trio_show_prints_what_wg_show_prints(pair: Pair) -> None:
    ours, theirs = same_as_wg(pair.fz_ns, pair.fz_if)
    assert wg_lines(ours) == theirs
    assert "  latest handshake: " in theirs and "  fwmark: 0x2a\n" in theirs
    assert "  allowed ips: 100.64.7.2/32, fd00:64::/64, 100.64.8.0/24\n" in theirs
    assert "  persistent keepalive: every 25 seconds\n" in theirs
    extras = [line for line in ours.splitlines() if line.startswith(show.EXTRA_PREFIX)]
    assert any(line.startswith("  fz-trio: data path kernels: ") for line in extras)
    assert any(line.startswith("  fz-trio: sessions: current ") for line in extras)
    # wireguard-go's interface: wg's lines alone, as `wg show` has them.
    ours, theirs = same_as_wg(pair.go_ns, pair.go_if)
    assert ours == theirs and "  latest handshake: " in ours


@pytest.mark.netns
def test_fz_trio_show_of_all_interfaces_has_each_section(pair: Pair) -> None:
    # The UAPI directory is shared: other interfaces of other tests may be there too.
    for ns, ifname in ((pair.fz_ns, pair.fz_if), (pair.go_ns, pair.go_if)):
        ours, theirs = same_as_wg(ns, ifname, every=True)
        assert wg_lines(ours) == theirs
    names = fz("show", "interfaces").stdout.split()
    assert {pair.fz_if, pair.go_if} <= set(names) and names == sorted(names)


@pytest.mark.netns
def test_fz_trio_show_json(pair: Pair, tmp_path: Path) -> None:
    result = fz("show", pair.fz_if, "--json")
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    dump = run("wg", "show", pair.fz_if, "dump", ns=pair.fz_ns).stdout.splitlines()
    private, public, port, fwmark = dump[0].split("\t")
    assert (obj["interface"], obj["public_key"], obj["listen_port"], obj["fwmark"]) == \
        (pair.fz_if, public, int(port), int(fwmark, 16))
    assert private not in result.stdout
    wg_order = [line.removeprefix("peer: ") for line in
                run("wg", "show", pair.fz_if, ns=pair.fz_ns).stdout.splitlines()
                if line.startswith("peer: ")]
    assert [p["public_key"] for p in obj["peers"]] == wg_order
    assert sorted(wg_order) == sorted(line.split("\t")[0] for line in dump[1:])
    go = obj["peers"][0]
    assert go["public_key"] == pair.go_public
    assert go["allowed_ips"] == ["100.64.7.2/32", "fd00:64::/64", "100.64.8.0/24"]
    assert go["endpoint"].endswith(":51820") and go["persistent_keepalive"] == 25
    assert abs(go["latest_handshake"] - time.time()) < 60 and go["tx_bytes"] > 0
    assert obj["peers"][1]["latest_handshake"] is None
    status = obj["fz_trio"]
    assert status["interface"] == pair.fz_if and status["pid"] > 0
    assert "current" in status["peers"][base64.b64decode(pair.go_public).hex()]["sessions"]
    other = json.loads(fz("show", pair.go_if, "--json").stdout)
    assert other["fz_trio"] is None and other["peers"][0]["public_key"] == pair.fz_public


@pytest.mark.netns
def test_fz_trio_down_leaves_other_implementations_alone(pair: Pair) -> None:
    result = fz("down", pair.go_if)
    assert result.returncode == 1
    assert "only stops fz-trio" in result.stderr and f"ip link del {pair.go_if}" in result.stderr
    assert run("wg", "show", pair.go_if, ns=pair.go_ns).returncode == 0


@pytest.mark.netns
def test_fz_trio_down_stops_the_daemon(namespaces: Callable[[], Namespace]) -> None:
    ns = namespaces()
    ifname = launch_fz_trio(ns)
    status = json.loads(fz("show", ifname, "--json").stdout)["fz_trio"]
    pid = status["pid"]
    assert not gone(pid)
    result = fz("down", ifname)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not os.path.exists(socket_path(ifname))
    wait_for(lambda: gone(pid), 10, "the daemon to exit")
    wait_for(lambda: run("ip", "link", "show", ifname, ns=ns.name, check=False).returncode,
             10, "the interface to go")
    assert fz("down", ifname).returncode == 1
