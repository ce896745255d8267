"""`fz-trio up` on a host: whatever stops it, the host is left as it was; SIGHUP reloads.

The client (namespace B) runs a full tunnel with DNS to a wireguard-go server in A, so it
changes everything it can change: policy rules and the src_valid_mark sysctl, the nftables
anti-spoofing table, /etc/resolv.conf (file mode; B's own, bind-mounted by `ip netns exec` from
/etc/netns/B/resolv.conf). After SIGTERM, SIGINT, SIGHUP then SIGTERM, `kill -9` followed by a
new `up`, and `kill -9` followed by `fz-trio down`, all of them are as they were before.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fz_trio.core import encode_key, generate_private_key, public_key_of
from fz_trio.lab.netns_etc import NetnsEtc
from fz_trio.lab.testnet import TestNet, WgPeer, wait_for

pytestmark = pytest.mark.netns

DNS_SERVER = "100.64.0.53"


class Client:
    """`python -m fz_trio up CONFIG` in B against a wireguard-go server in A."""

    def __init__(self, net: TestNet, *, dns: bool = True, extra_peers: str = "",
                 endpoint: str | None = None) -> None:
        self.net = net
        self.ifname = f"fzc{net.suffix}"
        self.server_if = f"fzs{net.suffix}"
        self.key = generate_private_key()
        self.server_key = generate_private_key()
        self.endpoint = endpoint or f"{net.underlay_a}:51820"
        self.conf = net.tmpdir / f"{self.ifname}.conf"
        self.dns = dns
        self.extra_peers = extra_peers
        self.write_config()
        self.log = net.tmpdir / f"{self.ifname}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, *, keepalive: int | None = None, extra_peers: str | None = None
                     ) -> None:
        text = (f"[Interface]\nPrivateKey = {encode_key(self.key)}\n"
                f"Address = {self.net.tunnel_b4}/24, {self.net.tunnel_b6}/64\nMTU = 1420\n")
        if self.dns:
            text += f"DNS = {DNS_SERVER}, corp.example\n"
        text += (f"[Peer]\nPublicKey = {encode_key(public_key_of(self.server_key))}\n"
                 f"AllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = {self.endpoint}\n")
        if keepalive:
            text += f"PersistentKeepalive = {keepalive}\n"
        text += self.extra_peers if extra_peers is None else extra_peers
        self.conf.write_text(text)
        self.conf.chmod(0o600)

    def start_server(self) -> None:
        self.net.start_wireguard_go(
            self.net.ns_a, self.server_if, private_key=self.server_key, listen_port=51820,
            peers=[WgPeer(public_key_of(self.key), [f"{self.net.tunnel_b4}/32",
                                                    f"{self.net.tunnel_b6}/128"])],
            addresses=[f"{self.net.tunnel_a4}/24", f"{self.net.tunnel_a6}/64"])

    def up(self, *args: str, wait: bool = True, env: dict[str, str] | None = None,
           prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        log = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = self.net.popen(
                self.net.ns_b, *prefix, sys.executable, "-m", "fz_trio", "up", str(self.conf),
                "--dns-mode", "file", *args, env=self.net.python_env() | (env or {}),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        if wait:
            wait_for(self.is_up, 20, what=f"fz-trio up\n{self.log_text()}")
        return self.proc

    def is_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"fz-trio exited {self.proc.returncode}:\n{self.log_text()}")
        return self.log_text().count("up: mtu") > self.ups_seen

    ups_seen = 0

    def mark_seen(self) -> None:
        self.ups_seen = self.log_text().count("up: mtu")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ping(self, address: str | None = None) -> None:
        target = address or self.net.tunnel_a4
        wait_for(lambda: self.net.run(self.net.ns_b, "ping", "-c", "1", "-W", "1", target,
                                      check=False).returncode == 0,
                 15, what=f"a ping to {target}\n{self.log_text()[-3000:]}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def host_snapshot(net: TestNet, etc: NetnsEtc) -> dict[str, str]:
    ns = net.ns_b
    return {
        "rules4": net.run(ns, "ip", "-4", "rule", "show").stdout,
        "rules6": net.run(ns, "ip", "-6", "rule", "show").stdout,
        "src_valid_mark": net.run(ns, "sysctl", "-n",
                                  "net.ipv4.conf.all.src_valid_mark").stdout,
        "resolv.conf": net.run(ns, "cat", "/etc/resolv.conf").stdout,
        "nft": net.run(ns, "nft", "list", "ruleset").stdout,
        "links": " ".join(sorted(
            link["ifname"] for link in json.loads(net.run(ns, "ip", "-j", "link").stdout))),
        "journals": " ".join(sorted(p.name for p in Path("/run/fz-trio").glob(f"*{net.suffix}*"))
                             if Path("/run/fz-trio").is_dir() else ""),
    }


def assert_changed(net: TestNet, client: Client) -> None:
    ns = net.ns_b
    assert "not from all fwmark 0xca6c lookup 51820" in net.run(ns, "ip", "rule").stdout
    assert net.run(ns, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").stdout.strip() == "1"
    resolv = net.run(ns, "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {DNS_SERVER}" in resolv and "corp.example" in resolv, resolv
    assert f"fz-trio-{client.ifname}" in net.run(ns, "nft", "list", "tables").stdout


@pytest.fixture
def etc(testnet: TestNet) -> Iterator[NetnsEtc]:
    with NetnsEtc(testnet.ns_b) as etc:
        etc.write("resolv.conf", "nameserver 198.18.0.1\n")
        etc.check_bound(testnet)
        yield etc


STOPS = ["SIGTERM", "SIGINT", "SIGHUP-then-SIGTERM", "kill-9-then-up", "kill-9-then-down"]


@pytest.mark.parametrize("stop", STOPS)
def test_every_way_of_stopping_leaves_the_host_as_it_was(testnet: TestNet, etc: NetnsEtc,
                                                         stop: str) -> None:
    client = Client(testnet)
    client.start_server()
    before = host_snapshot(testnet, etc)
    client.up()
    client.ping()
    assert_changed(testnet, client)
    if stop in ("SIGTERM", "SIGINT"):
        client.signal(signal.Signals[stop])
        assert client.wait() == 0, client.log_text()
    elif stop == "SIGHUP-then-SIGTERM":
        client.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in client.log_text(), 10, what="the reload")
        client.ping()
        client.signal(signal.SIGTERM)
        assert client.wait() == 0, client.log_text()
    else:
        client.signal(signal.SIGKILL)
        client.wait()
        assert_changed(testnet, client)  # nothing could clean up: the journal must
        if stop == "kill-9-then-up":
            client.mark_seen()
            client.up()
            assert "left by fz-trio pid" in client.log_text()
            client.ping()
            assert_changed(testnet, client)
            client.signal(signal.SIGTERM)
            assert client.wait() == 0, client.log_text()
        else:
            down = testnet.run(testnet.ns_b, sys.executable, "-m", "fz_trio", "down",
                               client.ifname, env=testnet.python_env(), check=False)
            assert down.returncode == 0, down.stderr
    after = host_snapshot(testnet, etc)
    assert after == before, client.log_text()[-4000:]


def test_sighup_applies_a_changed_peer_and_keeps_the_others(testnet: TestNet,
                                                           etc: NetnsEtc) -> None:
    client = Client(testnet, dns=False)
    client.start_server()
    notify_path = str(testnet.tmpdir / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    client.up(env={"NOTIFY_SOCKET": notify_path})
    client.ping()
    def told_until(last: str) -> list[str]:
        """The datagrams systemd would get, up to one that says `last`."""
        told: list[str] = []
        while not told or last not in told[-1]:
            told.append(notify.recv(4096).decode())
        return told

    # systemd's view (Type=notify): READY=1, and a status line that follows the handshake.
    assert told_until("READY=1\n")
    assert told_until("1/1 peer up")

    def handshake() -> int:
        shown = testnet.run(testnet.ns_b, "wg", "show", client.ifname,
                            "latest-handshakes").stdout.split()
        return int(shown[1])

    first = handshake()
    other = encode_key(public_key_of(generate_private_key()))
    client.write_config(extra_peers=f"[Peer]\nPublicKey = {other}\n"
                                    f"AllowedIPs = 100.64.9.0/24\nPersistentKeepalive = 7\n")
    time.sleep(1.1)  # a new handshake would show a later second
    client.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded: 1 peer change" in client.log_text(), 10,
             what=f"the reload\n{client.log_text()}")
    reloading = told_until("RELOADING=1\nMONOTONIC_USEC=")[-1]
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert told_until("READY=1\n")
    keepalives = testnet.run(testnet.ns_b, "wg", "show", client.ifname,
                             "persistent-keepalive").stdout
    assert f"{other}\t7" in keepalives, keepalives

    def route() -> str:
        return testnet.run(testnet.ns_b, "ip", "route", "show", "100.64.9.0/24").stdout

    assert f"dev {client.ifname}" in route()  # the kernel's routes follow the AllowedIPs
    client.ping()
    assert handshake() == first  # the untouched peer kept its session

    client.conf.write_text("[Interface]\nthis is not a config\n")
    client.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, the running config stays" in client.log_text(), 10,
             what="the refused reload")
    client.ping()

    client.write_config()  # the new peer goes again, and its route with it
    client.signal(signal.SIGHUP)
    wait_for(lambda: client.log_text().count("reloaded: 1 peer change") == 2, 10,
             what=f"the second reload\n{client.log_text()[-2000:]}")
    assert route() == ""

    client.signal(signal.SIGUSR1)
    wait_for(lambda: "1/1 peer up" in client.log_text() and "stats:" in client.log_text(), 10,
             what=f"the stats line\n{client.log_text()[-2000:]}")
    client.signal(signal.SIGTERM)
    assert client.wait() == 0
    notify.settimeout(0)
    rest = []
    while True:
        try:
            rest.append(notify.recv(4096).decode())
        except BlockingIOError:
            break
    notify.close()
    assert "STOPPING=1\n" in rest, rest


def test_an_endpoint_name_that_resolves_later_is_waited_for(testnet: TestNet) -> None:
    """Booting before the network: the name does not resolve yet. fz-trio keeps trying (with
    backoff) instead of exiting, and stays stoppable meanwhile."""
    with NetnsEtc(testnet.ns_b) as etc:
        etc.write("hosts", "127.0.0.1 localhost\n")
        client = Client(testnet, dns=False, endpoint="server.fz-trio.test:51820")
        client.start_server()
        client.up(wait=False)
        wait_for(lambda: "trying again in" in client.log_text(), 15,
                 what=f"a retry\n{client.log_text()}")
        etc.write("hosts", f"127.0.0.1 localhost\n{testnet.underlay_a} server.fz-trio.test\n")
        wait_for(client.is_up, 30, what=f"fz-trio up\n{client.log_text()}")
        client.ping()
        client.signal(signal.SIGTERM)
        assert client.wait() == 0

        client.endpoint = "never.fz-trio.test:51820"
        client.write_config()
        client.up(wait=False)
        wait_for(lambda: "never.fz-trio.test" in client.log_text(), 15, what="a retry")
        client.signal(signal.SIGTERM)
        assert client.wait() == 0, client.log_text()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_cap_net_admin_is_all_it_needs(testnet: TestNet, etc: NetnsEtc) -> None:
    """What fz-trio@.service gives it: uid 0, but of root's capabilities only CAP_NET_ADMIN
    (CapabilityBoundingSet=CAP_NET_ADMIN). A full tunnel with DNS comes up, carries traffic and
    goes down leaving nothing."""
    client = Client(testnet)
    client.start_server()
    before = host_snapshot(testnet, etc)
    client.up(prefix=("setpriv", "--bounding-set=-all,+net_admin", "--inh-caps=-all"))
    assert client.proc is not None
    # `ip netns exec` and setpriv both exec in place: the pid is fz-trio's own.
    status = Path(f"/proc/{client.proc.pid}/status").read_text()
    assert "CapEff:\t0000000000001000" in status, status  # bit 12: CAP_NET_ADMIN alone
    client.ping()
    assert_changed(testnet, client)
    client.signal(signal.SIGTERM)
    assert client.wait() == 0, client.log_text()
    assert host_snapshot(testnet, etc) == before
