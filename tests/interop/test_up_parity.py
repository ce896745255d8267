"""`fz-trio up CONFIG` against `wg-quick up CONFIG`: the same config, the same host changes.

Each case brings one config up in namespace B twice, once with wg-quick and once with
`fz-trio up`, against a wireguard-go server in A, and compares what the host shows (wg-quick
drives `fz-trio IFNAME`, its userspace implementation, which itself changes nothing but the TUN
device): the interface's MTU (chosen automatically over a 1400-byte underlay), the routes of
the table the config names, the policy rules, the fwmark `wg show` reports, the nftables
anti-spoofing rules (under their own table names) and the lines the hooks wrote, on the way up
and on the way down. Down, both leave the host as it was, except that wg-quick leaves
net.ipv4.conf.all.src_valid_mark at 1 and fz-trio restores it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fz_trio.core import encode_key, generate_private_key, public_key_of
from fz_trio.lab.testnet import TestNet, WgPeer, wait_for

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("wg-quick") is None,
                                 reason="needs wg-quick (apt-get install wireguard-tools)"),
              pytest.mark.skipif(shutil.which("nft") is None,
                                 reason="needs nft (apt-get install nftables)")]

FZ_TRIO = Path(sys.executable).parent / "fz-trio"  # the script of the environment under test
SPLIT_TABLE = """\
Table = 1234
FwMark = 0x4321
PreUp = echo "pre-up %i" >> {hooks}
PostUp = echo "post-up %i" >> {hooks}
PostUp = echo "second post-up" >> {hooks}
PreDown = echo "pre-down %i" >> {hooks}
PostDown = echo "post-down %i" >> {hooks}
"""
FULL_TUNNEL = """\
PostUp = echo "post-up %i" >> {hooks}
PostDown = echo "post-down %i" >> {hooks}
"""


def _ipj(net: TestNet, *args: str) -> list[dict[str, Any]]:
    cp = net.run(net.ns_b, "ip", "-j", *args, check=False)
    return json.loads(cp.stdout) if cp.returncode == 0 and cp.stdout.strip() else []


def snapshot(net: TestNet, ifname: str, table: str) -> dict[str, Any]:
    link = _ipj(net, "link", "show", "dev", ifname)
    routes = sorted(f"{r['dst']} {r.get('dev')}".replace(ifname, "IF")
                    for fam in ("-4", "-6")
                    for r in _ipj(net, fam, "route", "show", "table", table))
    rules = [r for fam in ("-4", "-6")
             for r in _ipj(net, fam, "rule", "show") if r["priority"] not in (0, 32766, 32767)]
    nft = net.run(net.ns_b, "nft", "list", "ruleset").stdout
    nft = re.sub(r"table (ip6?) (wg-quick|fz-trio)-\S+", r"table \1 TABLE", nft)
    nft = re.sub(r" counter packets \d+ bytes \d+", "", nft).replace(ifname, "IF")
    nft = re.sub(r"fe80::[0-9a-f:]+", "fe80::LINK-LOCAL", nft)  # each new device has its own
    tables = sorted("table " + block.strip() for block in nft.split("table ") if block.strip())
    fwmark = net.run(net.ns_b, "wg", "show", ifname, "fwmark", check=False).stdout.strip()
    return {"mtu": link[0]["mtu"] if link else None, "routes": routes, "rules": rules,
            "nft": tables, "fwmark": fwmark,
            "src_valid_mark": net.run(net.ns_b, "sysctl", "-n",
                                      "net.ipv4.conf.all.src_valid_mark").stdout.strip()}


class Case:
    def __init__(self, net: TestNet, extra: str, allowed: str, table: str) -> None:
        self.net, self.table = net, table
        self.ifname = f"fzp{net.suffix}"
        self.server_key, self.key = generate_private_key(), generate_private_key()
        self.dir = net.tmpdir / "parity"
        self.dir.mkdir(mode=0o700)
        self.conf = self.dir / f"{self.ifname}.conf"
        self.hooks = self.dir / "hooks"
        text = (f"[Interface]\nPrivateKey = {encode_key(self.key)}\n"
                f"Address = {net.tunnel_b4}/24, {net.tunnel_b6}/64\n"
                + extra.format(hooks=self.hooks)
                + f"[Peer]\nPublicKey = {encode_key(public_key_of(self.server_key))}\n"
                  f"AllowedIPs = {allowed}\nEndpoint = {net.underlay_a}:51820\n")
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        net.run(net.ns_b, "ip", "link", "set", net.veth_b, "mtu", "1400")
        net.run(net.ns_a, "ip", "link", "set", net.veth_a, "mtu", "1400")
        net.start_wireguard_go(net.ns_a, f"fzs{net.suffix}", private_key=self.server_key,
                               listen_port=51820,
                               peers=[WgPeer(public_key_of(self.key), [f"{net.tunnel_b4}/32"])],
                               addresses=[f"{net.tunnel_a4}/24"])

    def hook_lines(self) -> list[str]:
        lines = self.hooks.read_text().splitlines() if self.hooks.exists() else []
        self.hooks.unlink(missing_ok=True)
        return [line.replace(self.ifname, "IF") for line in lines]

    def ping(self) -> None:
        wait_for(lambda: self.net.run(self.net.ns_b, "ping", "-c", "1", "-W", "1",
                                      self.net.tunnel_a4, check=False).returncode == 0,
                 15, what="a ping through the tunnel")

    def with_wg_quick(self) -> tuple[dict[str, Any], list[str], list[str], dict[str, Any]]:
        # fz-trio IFNAME as wg-quick's userspace implementation (wireguard-go's own daemon
        # mode does not come up on these machines): the host changes are wg-quick's either way.
        env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "fz-trio", "WG_PROCESS_FOREGROUND": "",
               "LOG_LEVEL": "", "PATH": f"{FZ_TRIO.parent}{os.pathsep}{os.environ['PATH']}"}
        before = snapshot(self.net, self.ifname, self.table)
        self.net.run(self.net.ns_b, "wg-quick", "up", str(self.conf), env=env, timeout=60)
        try:
            self.ping()
            up = snapshot(self.net, self.ifname, self.table)
            up_hooks = self.hook_lines()
        finally:
            self.net.run(self.net.ns_b, "wg-quick", "down", str(self.conf), env=env,
                         timeout=60)
        after = snapshot(self.net, self.ifname, self.table)
        # wg-quick leaves src_valid_mark at 1 after a full tunnel; fz-trio puts it back.
        assert after | {"src_valid_mark": before["src_valid_mark"]} == before
        self.net.run(self.net.ns_b, "sysctl", "-q", "-w",
                     f"net.ipv4.conf.all.src_valid_mark={before['src_valid_mark']}")
        return up, up_hooks, self.hook_lines(), before

    def with_fz_trio(self) -> tuple[dict[str, Any], list[str], list[str], dict[str, Any]]:
        before = snapshot(self.net, self.ifname, self.table)
        log = self.dir / "fz-trio.log"
        with open(log, "wb") as out:
            proc = self.net.popen(self.net.ns_b, sys.executable, "-m", "fz_trio", "up",
                                  str(self.conf), env=self.net.python_env(),
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            last = "second post-up" if "second post-up" in self.conf.read_text() else "post-up"
            wait_for(lambda: last in (self.hooks.read_text() if self.hooks.exists() else ""),
                     20, what=f"fz-trio up\n{log.read_text(errors='replace')}")
            self.ping()
            up = snapshot(self.net, self.ifname, self.table)
            up_hooks = self.hook_lines()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text(errors="replace")
        assert snapshot(self.net, self.ifname, self.table) == before
        return up, up_hooks, self.hook_lines(), before


@pytest.mark.parametrize("extra, allowed, table", [
    pytest.param(SPLIT_TABLE, "0.0.0.0/0, 100.64.9.0/24", "1234", id="table-fwmark-hooks"),
    pytest.param(FULL_TUNNEL, "0.0.0.0/0, ::/0", "51820", id="full-tunnel"),
])
def test_fz_trio_up_changes_the_host_as_wg_quick_does(testnet: TestNet, extra: str,
                                                      allowed: str, table: str) -> None:
    case = Case(testnet, extra, allowed, table)
    wq_up, wq_up_hooks, wq_down_hooks, _ = case.with_wg_quick()
    fz_up, fz_up_hooks, fz_down_hooks, _ = case.with_fz_trio()
    assert wq_up["mtu"] == 1320  # 1400 - 80: both choose it over this underlay
    for key in wq_up:
        assert fz_up[key] == wq_up[key], key
    assert fz_up_hooks == wq_up_hooks
    assert fz_down_hooks == wq_down_hooks
