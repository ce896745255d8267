"""wg-quick(8) with fz-trio as its userspace implementation, against wireguard-go.

`WG_QUICK_USERSPACE_IMPLEMENTATION=fz-trio wg-quick up ./IFNAME.conf`: wg-quick finds no wireguard
kernel module (these machines have none), runs `fz-trio IFNAME` (the launch contract: the TUN and
the UAPI socket, then the background), configures it with `wg setconf`, `ip`, nft and resolvconf,
and runs the hooks; `wg-quick down` ends with `ip link delete`, after which fz-trio must exit by
itself and remove its socket. The far end is wireguard-go in the other namespace.

wg-quick runs with its output on pipes (`capture_output`), so a daemon that kept the foreground
command's stdout or stderr would hang `wg-quick up` here: that is part of the contract too.
The DNS test needs openresolv (`resolvconf`) and skips without it; the full-tunnel test needs nft.

What this file leaves behind on the host, even when a test fails: nothing. Namespaces, devices,
rules, routes and nft tables live and die in the TestNet's namespaces; fz-trio's sockets in the
shared /var/run/wireguard are removed after the namespaces' processes are killed; the DNS test's
/etc/netns/NS files are removed (and /etc/netns itself when the test created it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fz_trio.core import encode_key, generate_private_key, public_key_of
from fz_trio.lab.netns_etc import NetnsEtc, openresolv_unavailable_reason, setup_openresolv
from fz_trio.lab.testnet import TestNet, TestNetError, WgPeer, wait_for

SOCKET_DIR = Path("/var/run/wireguard")
# The `fz-trio` script of the environment running the tests: wg-quick must launch this checkout.
FZ_TRIO = Path(sys.executable).parent / "fz-trio"
# wg-quick's full-tunnel table and fwmark when nothing else uses them (51820 = 0xca6c).
FULL_TUNNEL_TABLE = 51820
EXIT_WAIT = 5.0
Cleanup = list[Callable[[], None]]


def _skip_reason() -> str | None:
    if shutil.which("wg-quick") is None:
        return "needs wg-quick (apt-get install wireguard-tools)"
    if not FZ_TRIO.exists():
        return f"needs the fz-trio script next to {sys.executable} (pip install -e .)"
    return None


pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]


# -- helpers -------------------------------------------------------------------------------------
class WgQuick:
    """One `IFNAME.conf` in a private 0700 directory, brought up and down with wg-quick in `ns`."""

    def __init__(self, net: TestNet, ns: str, ifname: str, config: str) -> None:
        assert len(ifname) <= 15, ifname
        self.net, self.ns, self.ifname = net, ns, ifname
        self.dir = net.tmpdir / f"wg-quick-{ifname}"
        self.dir.mkdir(mode=0o700)
        self.conf = self.dir / f"{ifname}.conf"
        # Created 0600 before the key is written: wg-quick warns about a world-readable file.
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(config.replace("DIR", str(self.dir)))

    @staticmethod
    def env() -> dict[str, str]:
        # fz-trio first on PATH (wg-quick itself puts only /usr/bin before it). The daemon must go
        # to the background and close our pipes, whatever the caller's environment says.
        return {"WG_QUICK_USERSPACE_IMPLEMENTATION": "fz-trio",
                "PATH": f"{FZ_TRIO.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "WG_PROCESS_FOREGROUND": "", "LOG_LEVEL": ""}

    def run(self, action: str, *, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        cp = self.net.run(self.ns, "wg-quick", action, str(self.conf), env=self.env(),
                          check=False, timeout=60)
        took = time.monotonic() - started
        if expect_ok and cp.returncode != 0:
            pytest.fail(f"wg-quick {action} {self.ifname} failed (exit {cp.returncode}, "
                        f"{took:.1f}s):\n{cp.stderr}{cp.stdout}")
        assert "world accessible" not in cp.stderr, cp.stderr
        return cp

    def up(self, *, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("up", expect_ok=expect_ok)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.run("down")


def _keys() -> tuple[bytes, bytes]:
    return generate_private_key(), generate_private_key()


def _pub(private_key: bytes) -> str:
    return encode_key(public_key_of(private_key))


def _fz_trio_pids(ns: str, ifname: str) -> list[int]:
    """Processes in `ns` running `fz-trio ... IFNAME` (a zombie has no command line: not one)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         timeout=10).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if argv and argv[-1] == ifname and any(Path(a).name == "fz-trio" for a in argv):
            pids.append(pid)
    return pids


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _fz_status(ifname: str) -> dict[str, object]:
    """fz-trio's own status over its UAPI socket (the `fz_status=1` extension)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(SOCKET_DIR / f"{ifname}.sock"))
        s.sendall(b"fz_status=1\n\n")
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    lines = reply.decode().split("\n")
    assert lines[0].startswith("fz_status=") and "errno=0" in lines, reply
    status = json.loads(lines[0].partition("=")[2])
    assert isinstance(status, dict), status
    return status


def _the_daemon(ns: str, ifname: str) -> int:
    """The one fz-trio process serving `ifname` in `ns`: this checkout's, serving the socket."""
    pids = _fz_trio_pids(ns, ifname)
    assert len(pids) == 1, f"fz-trio {ifname} processes in {ns}: {pids}"
    argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().decode().split("\0")
    assert str(FZ_TRIO) in argv, f"wg-quick launched another fz-trio: {argv}"
    assert _fz_status(ifname)["pid"] == pids[0]
    return pids[0]


def _assert_exits(ns: str, ifname: str, pid: int) -> None:
    wait_for(lambda: not _running(pid), EXIT_WAIT, what=f"fz-trio {ifname} (pid {pid}) to exit")
    assert not _fz_trio_pids(ns, ifname)
    # It removes its socket on the way out (the link watch saw the deletion).
    wait_for(lambda: not (SOCKET_DIR / f"{ifname}.sock").exists(), EXIT_WAIT,
             what=f"{ifname}.sock to go")


def _ping(net: TestNet, ns: str, address: str, *extra: str) -> None:
    # Two replies within 10 s: the first may wait for the handshake.
    cp = net.run(ns, "ping", "-c", "2", "-i", "0.2", "-w", "10", *extra, address, check=False,
                 timeout=20)
    assert cp.returncode == 0, f"ping {' '.join(extra)} {address} in {ns}:\n{cp.stdout}{cp.stderr}"


def _rules(net: TestNet, ns: str) -> str:
    return (net.run(ns, "ip", "-4", "rule", "show").stdout
            + net.run(ns, "ip", "-6", "rule", "show").stdout)


def _routes(net: TestNet, ns: str, table: int | str) -> str:
    return (net.run(ns, "ip", "-4", "route", "show", "table", str(table)).stdout
            + net.run(ns, "ip", "-6", "route", "show", "table", str(table)).stdout)


@pytest.fixture
def host_cleanup(testnet: TestNet) -> Iterator[Cleanup]:
    """Undo steps for the host, run after the test: first the namespaces (and so every process
    in them) go, then the steps in reverse order, then the sockets named after this TestNet."""
    steps: Cleanup = []
    try:
        yield steps
    finally:
        testnet.destroy()  # idempotent: the testnet fixture's own teardown finds nothing left
        for step in reversed(steps):
            try:
                step()
            except OSError:
                pass
        for sock in SOCKET_DIR.glob(f"*{testnet.suffix}.sock"):
            sock.unlink(missing_ok=True)


# -- the tests -----------------------------------------------------------------------------------
def test_up_down_with_table_hooks_and_automatic_mtu(testnet: TestNet,
                                                    host_cleanup: Cleanup) -> None:
    """Address v4+v6, ListenPort, one peer with /32 and /128, Table = 1234, PostUp/PostDown with
    %i, no MTU. The addresses are /32 and /128, so nothing in `main` leads to the far end: the
    pings work only through table 1234 (a PostUp hook adds the rules that use it)."""
    net = testnet
    ns = net.ns_b
    ifname, far = f"fzq{net.suffix}", f"wga{net.suffix}"
    key_a, key_b = _keys()
    # wg-quick's MTU: that of the route towards the endpoint (here vb's) minus 80.
    for where, dev in ((net.ns_a, net.veth_a), (net.ns_b, net.veth_b)):
        net.run(where, "ip", "link", "set", "dev", dev, "mtu", "1450")
    net.start_wireguard_go(
        net.ns_a, far, private_key=key_a, listen_port=51820,
        peers=[WgPeer(public_key_of(key_b), ["100.64.0.2/32", "fd00:64::2/128"])],
        addresses=["100.64.0.1/24", "fd00:64::1/64"])
    quick = WgQuick(net, ns, ifname, f"""\
[Interface]
PrivateKey = {encode_key(key_b)}
Address = 100.64.0.2/32, fd00:64::2/128
ListenPort = 51821
Table = 1234
PostUp = echo up %i > DIR/post-up
PostUp = ip -4 rule add to 100.64.0.1/32 table 1234 priority 1234
PostUp = ip -6 rule add to fd00:64::1/128 table 1234 priority 1234
PostDown = ip -4 rule del priority 1234; ip -6 rule del priority 1234
PostDown = echo down %i > DIR/post-down

[Peer]
PublicKey = {_pub(key_a)}
AllowedIPs = 100.64.0.1/32, fd00:64::1/128
Endpoint = {net.underlay_a}:51820
""")

    up = quick.up()
    assert f"[#] fz-trio {ifname}" in up.stderr, up.stderr  # the userspace fallback ran
    pid = _the_daemon(ns, ifname)
    assert (quick.dir / "post-up").read_text() == f"up {ifname}\n"

    assert "mtu 1370 " in net.run(ns, "ip", "link", "show", "dev", ifname).stdout
    # fz-trio learnt the MTU wg-quick set after starting it.
    wait_for(lambda: _fz_status(ifname)["mtu"] == 1370, 5, what="fz-trio to follow the MTU")

    routes = _routes(net, ns, 1234)
    assert f"100.64.0.1 dev {ifname}" in routes and f"fd00:64::1 dev {ifname}" in routes, routes
    main = _routes(net, ns, "main")
    assert "100.64.0.1" not in main and "fd00:64::1" not in main, main
    assert "lookup 1234" in _rules(net, ns)

    shown = net.run(ns, "wg", "show", ifname).stdout
    assert f"peer: {_pub(key_a)}" in shown and "listening port: 51821" in shown, shown
    assert f"endpoint: {net.underlay_a}:51820" in shown, shown
    assert "allowed ips: 100.64.0.1/32, fd00:64::1/128" in shown, shown
    assert net.run(ns, "wg", "show", ifname, "fwmark").stdout.strip() == "off"

    _ping(net, ns, net.tunnel_a4)
    _ping(net, ns, net.tunnel_a6)
    # A full-size packet at the MTU wg-quick chose (1370 - 20 - 8), not fragmented.
    _ping(net, ns, net.tunnel_a4, "-s", "1342", "-M", "do")
    handshakes = net.run(ns, "wg", "show", ifname, "latest-handshakes").stdout.split()
    assert int(handshakes[1]) > 0, handshakes
    far_side = net.run(net.ns_a, "wg", "show", far, "endpoints").stdout
    assert f"{net.underlay_b}:51821" in far_side, far_side

    quick.down()
    assert not net.link_exists(ns, ifname)
    assert (quick.dir / "post-down").read_text() == f"down {ifname}\n"
    assert _routes(net, ns, 1234).strip() == ""
    assert "1234" not in _rules(net, ns)
    _assert_exits(ns, ifname, pid)


@pytest.mark.skipif(shutil.which("nft") is None,
                    reason="the anti-spoofing rules checked here are wg-quick's nft variant "
                           "(apt-get install nftables)")
def test_full_tunnel(testnet: TestNet, host_cleanup: Cleanup) -> None:
    """AllowedIPs = 0.0.0.0/0, ::/0: wg-quick's policy routing, `wg set fwmark 51820` on
    fz-trio's sockets and the nft table. The endpoint, 198.18.1.1 (an extra address of A's), is
    reached through a default route in B's main table, which the full tunnel overrides for
    everything unmarked: fz-trio's handshake can only get there because its UDP socket carries
    the mark."""
    net = testnet
    ns = net.ns_b
    ifname, far = f"fzq{net.suffix}", f"wga{net.suffix}"
    endpoint = "198.18.1.1"
    key_a, key_b = _keys()
    net.run(net.ns_a, "ip", "addr", "add", f"{endpoint}/32", "dev", net.veth_a)
    net.run(ns, "ip", "route", "add", "default", "via", net.underlay_a, "dev", net.veth_b)
    net.start_wireguard_go(
        net.ns_a, far, private_key=key_a, listen_port=51820,
        peers=[WgPeer(public_key_of(key_b), ["100.64.0.2/32", "fd00:64::2/128"])],
        addresses=["100.64.0.1/24", "fd00:64::1/64"])
    quick = WgQuick(net, ns, ifname, f"""\
[Interface]
PrivateKey = {encode_key(key_b)}
Address = 100.64.0.2/24, fd00:64::2/64

[Peer]
PublicKey = {_pub(key_a)}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = {endpoint}:51820
""")

    quick.up()
    pid = _the_daemon(ns, ifname)
    assert net.run(ns, "wg", "show", ifname, "fwmark").stdout.strip() == hex(FULL_TUNNEL_TABLE)
    for family in ("-4", "-6"):
        rules = net.run(ns, "ip", family, "rule", "show").stdout
        assert f"not from all fwmark {hex(FULL_TUNNEL_TABLE)} lookup {FULL_TUNNEL_TABLE}" in rules
        assert "from all lookup main suppress_prefixlength 0" in rules, rules
        table = net.run(ns, "ip", family, "route", "show", "table", str(FULL_TUNNEL_TABLE)).stdout
        assert f"default dev {ifname}" in table, table
    tables = net.run(ns, "nft", "list", "tables").stdout
    assert f"table ip wg-quick-{ifname}" in tables and f"table ip6 wg-quick-{ifname}" in tables
    preraw = net.run(ns, "nft", "list", "table", "ip", f"wg-quick-{ifname}").stdout
    assert (f'iifname != "{ifname}" ip daddr {net.tunnel_b4} fib saddr type != local drop'
            in preraw), preraw
    assert net.run(ns, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").stdout.strip() == "1"
    # fz-trio's own sockets carry the mark wg-quick set over UAPI.
    sockets = [line for line in net.run(ns, "ss", "-uaenp").stdout.splitlines()
               if f"pid={pid}," in line]
    assert len(sockets) == 2 and all(f"fwmark:{hex(FULL_TUNNEL_TABLE)}" in s for s in sockets), \
        sockets

    _ping(net, ns, net.tunnel_a4)
    _ping(net, ns, net.tunnel_a6)
    # Unmarked traffic to the endpoint would enter the tunnel; marked traffic takes the underlay,
    # and that is the way fz-trio's datagrams went (wireguard-go saw them come from vb).
    assert f"dev {ifname}" in net.run(ns, "ip", "route", "get", endpoint).stdout
    marked = net.run(ns, "ip", "route", "get", endpoint, "mark", str(FULL_TUNNEL_TABLE)).stdout
    assert f"dev {net.veth_b}" in marked, marked
    far_side = net.run(net.ns_a, "wg", "show", far, "endpoints").stdout
    assert f"{net.underlay_b}:" in far_side, far_side
    # The underlay itself still works: its /30 is more specific than the tunnel's /0.
    assert f"dev {net.veth_b}" in net.run(ns, "ip", "route", "get", net.underlay_a).stdout
    _ping(net, ns, net.underlay_a)

    quick.down()
    assert not net.link_exists(ns, ifname)
    rules = _rules(net, ns)
    assert str(FULL_TUNNEL_TABLE) not in rules and "suppress_prefixlength" not in rules, rules
    assert _routes(net, ns, FULL_TUNNEL_TABLE).strip() == ""
    assert "wg-quick" not in net.run(ns, "nft", "list", "tables").stdout
    _assert_exits(ns, ifname, pid)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def test_dns_through_resolvconf_in_the_namespace(testnet: TestNet,
                                                 host_cleanup: Cleanup) -> None:
    """`DNS =` makes wg-quick pipe nameserver/search lines to `resolvconf -a IFNAME -m 0 -x` and
    call `resolvconf -d IFNAME -f` on down. `ip netns exec NS` bind-mounts each file of
    /etc/netns/NS/ over its namesake in /etc, so inside B /etc/resolv.conf and
    /etc/resolvconf.conf are the test's own: openresolv writes B's resolv.conf, keeps its state in
    the TestNet's directory and restarts no service. The first line of resolv.conf is
    openresolv's own signature, or it would copy it to /etc/resolv.conf.bak, outside the bind."""
    reason = openresolv_unavailable_reason()
    if reason:
        pytest.skip(f"{reason}: wg-quick sets DNS with it")
    net = testnet
    ns = net.ns_b
    ifname = f"fzq{net.suffix}"
    host_files = [Path("/etc/resolv.conf"), Path("/etc/resolv.conf.bak"), Path("/run/resolvconf")]
    before = {path: _sha256(path) if path.is_file() else path.exists() for path in host_files}

    etc = NetnsEtc(ns).create()
    host_cleanup.append(etc.destroy)
    state = net.tmpdir / "resolvconf-state"
    setup_openresolv(etc, state, label=net.suffix)
    # The binds must be in place before resolvconf runs, or it would write the host's files.
    try:
        etc.check_bound(net)
    except TestNetError as e:
        pytest.fail(str(e))

    quick = WgQuick(net, ns, ifname, f"""\
[Interface]
PrivateKey = {encode_key(generate_private_key())}
Address = 100.64.0.2/24
DNS = 100.64.0.53, fd00:64::53, fzt.test

[Peer]
PublicKey = {_pub(generate_private_key())}
AllowedIPs = 100.64.0.1/32
Endpoint = {net.underlay_a}:51820
""")

    def resolv_conf() -> list[str]:
        return net.run(ns, "cat", "/etc/resolv.conf").stdout.splitlines()

    up = quick.up()
    assert f"resolvconf -a {ifname} -m 0 -x" in up.stderr, up.stderr
    pid = _the_daemon(ns, ifname)
    lines = resolv_conf()
    assert "nameserver 100.64.0.53" in lines and "nameserver fd00:64::53" in lines, lines
    assert "search fzt.test" in lines, lines
    assert etc.path("resolv.conf").read_text().splitlines() == lines
    assert (state / "interfaces" / ifname).is_file()
    assert _sha256(Path("/etc/resolv.conf")) == before[Path("/etc/resolv.conf")]

    down = quick.down()
    assert f"resolvconf -d {ifname} -f" in down.stderr, down.stderr
    assert not [line for line in resolv_conf() if line.startswith(("nameserver", "search"))]
    assert not list((state / "interfaces").iterdir())
    _assert_exits(ns, ifname, pid)
    after = {path: _sha256(path) if path.is_file() else path.exists() for path in host_files}
    assert after == before, "the host's resolver files changed"


def test_up_fails_when_fz_trio_cannot_start(testnet: TestNet,
                                            host_cleanup: Cleanup) -> None:
    """The name is taken: wireguard-go in namespace A serves IFNAME, and the UAPI directory is
    shared, so `fz-trio IFNAME` in B must refuse the live socket. wg-quick then fails, removes
    nothing of A's, and leaves no fz-trio behind."""
    net = testnet
    ifname = f"fzq{net.suffix}"
    key_a, key_b = _keys()
    net.start_wireguard_go(net.ns_a, ifname, private_key=key_a, listen_port=51820, peers=[],
                           addresses=["100.64.0.1/24"])
    quick = WgQuick(net, net.ns_b, ifname, f"""\
[Interface]
PrivateKey = {encode_key(key_b)}
Address = 100.64.0.2/24
""")
    cp = quick.up(expect_ok=False)
    assert cp.returncode != 0, cp.stderr
    assert f"fz-trio: {SOCKET_DIR / ifname}.sock is in use" in cp.stderr, cp.stderr
    assert not net.link_exists(net.ns_b, ifname)
    assert not _fz_trio_pids(net.ns_b, ifname)
    # A's interface is untouched and still answers on its socket.
    shown = net.run(net.ns_a, "wg", "show", ifname).stdout
    assert f"public key: {_pub(key_a)}" in shown and "listening port: 51820" in shown, shown


def _up_with_a_busy_port(net: TestNet) -> tuple[str, subprocess.CompletedProcess[str]]:
    """`wg-quick up` of a config whose ListenPort another process in B holds (IPv4)."""
    ns, ifname, port = net.ns_b, f"fzq{net.suffix}", 51999
    holder = net.popen(ns, sys.executable, "-c",
                       "import socket, sys, time\n"
                       "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                       f"s.bind(('0.0.0.0', {port}))\n"
                       "print('bound', flush=True)\n"
                       "time.sleep(120)\n",
                       stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"bound\n"
    quick = WgQuick(net, ns, ifname, f"""\
[Interface]
PrivateKey = {encode_key(generate_private_key())}
Address = 100.64.0.2/24
ListenPort = {port}
""")
    cp = quick.up(expect_ok=False)
    assert cp.returncode != 0, cp.stderr
    assert holder.poll() is None
    return ifname, cp


def test_up_rolls_back_when_setconf_fails(testnet: TestNet, host_cleanup: Cleanup) -> None:
    """fz-trio starts, but `wg setconf` asks for a UDP port another process holds: fz-trio
    refuses the set, wg-quick's trap deletes the link, and fz-trio exits on its own."""
    net = testnet
    ns = net.ns_b
    ifname, cp = _up_with_a_busy_port(net)
    assert f"[#] wg setconf {ifname}" in cp.stderr and f"[#] ip link delete dev {ifname}" \
        in cp.stderr, cp.stderr
    assert not net.link_exists(ns, ifname)
    wait_for(lambda: not _fz_trio_pids(ns, ifname), EXIT_WAIT, what=f"fz-trio {ifname} to exit")
    wait_for(lambda: not (SOCKET_DIR / f"{ifname}.sock").exists(), EXIT_WAIT,
             what=f"{ifname}.sock to go")


def test_setconf_failure_reads_as_with_wireguard_go(testnet: TestNet,
                                                    host_cleanup: Cleanup) -> None:
    """What wg(8) prints when the set is refused is what it prints for wireguard-go."""
    _, cp = _up_with_a_busy_port(testnet)
    assert "Unable to modify interface: Address already in use" in cp.stderr, cp.stderr
