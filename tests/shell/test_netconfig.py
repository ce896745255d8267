"""InterfaceNetwork against the real kernel: a child process inside a test namespace opens a TUN and
configures it; the test checks what `ip -j` reports before and after close()."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from fz_trio.lab.testnet import TestNet, expect_line

pytestmark = pytest.mark.netns

IF = "fzt0"
STANDARD_RULE_PRIORITIES = {0, 32766, 32767}  # local, main, default: present in every namespace


def _ipj(net: TestNet, ns: str, *args: str) -> list[dict[str, Any]]:
    out = net.run(ns, "ip", "-j", *args).stdout.strip()
    return json.loads(out) if out else []


def snapshot(net: TestNet, ns: str) -> dict[str, Any]:
    """What the kernel says about IF, its routes and the policy rules, in comparable form."""
    links = _ipj(net, ns, "link", "show")
    link = next((lk for lk in links if lk["ifname"] == IF), None)
    addrs: list[str] = []
    if link is not None:
        for entry in _ipj(net, ns, "addr", "show", "dev", IF):
            for a in entry.get("addr_info", []):
                if a.get("scope") != "link":  # the kernel's own fe80:: address
                    addrs.append(f"{a['local']}/{a['prefixlen']}")

    def routes(fam: str, table: str) -> list[str]:
        cp = net.run(ns, "ip", "-j", fam, "route", "show", "table", table, check=False)
        if "FIB table does not exist" in cp.stderr:  # nobody has used table 51820 yet
            return []
        assert cp.returncode == 0, cp.stderr
        return sorted(r["dst"] for r in json.loads(cp.stdout or "[]") if r.get("dev") == IF)

    def rules(fam: str) -> list[dict[str, Any]]:
        return [
            r
            for r in _ipj(net, ns, fam, "rule", "show")
            if r["priority"] not in STANDARD_RULE_PRIORITIES
        ]

    return {
        "exists": link is not None,
        "up": link is not None and "UP" in link["flags"],
        "mtu": link and link["mtu"],
        "txqlen": link and link.get("txqlen"),
        "addrs": sorted(addrs),
        "main4": routes("-4", "main"),
        "main6": routes("-6", "main"),
        "t4": routes("-4", "51820"),
        "t6": routes("-6", "51820"),
        "rules4": rules("-4"),
        "rules6": rules("-6"),
        "src_valid_mark": net.run(
            ns, "cat", "/proc/sys/net/ipv4/conf/all/src_valid_mark"
        ).stdout.strip(),
    }


# Child: open TUN, apply(), report, wait; close() the config, report, wait; close the TUN.
CHILD = textwrap.dedent(
    """
    import json, sys
    from ipaddress import ip_interface, ip_network
    from fz_trio.shell.tun import open_tun
    from fz_trio.shell.netconfig import InterfaceNetwork
    cfg = json.loads(sys.argv[1])
    dev = open_tun("fzt0")
    with InterfaceNetwork(dev.name) as net:
        ft = net.apply(
            addresses=[ip_interface(a) for a in cfg["addresses"]],
            mtu=cfg["mtu"],
            allowed_ips=[ip_network(n) for n in cfg["allowed_ips"]],
        )
        print("APPLIED", json.dumps(ft and {"fwmark": ft.fwmark, "table": ft.table,
                                             "families": sorted(int(f) for f in ft.families)}))
        sys.stdin.readline()
        net.close()
    print("CLOSED")
    sys.stdin.readline()
    dev.close()
    """
)


def start_child(net: TestNet, ns: str, **cfg: Any):  # type: ignore[no-untyped-def]
    code = CHILD.replace(
        "json.loads(sys.argv[1])", repr(json.dumps(cfg)).join(("json.loads(", ")"))
    )
    proc = net.popen_python(ns, code)
    line = expect_line(proc)
    assert line.startswith("APPLIED "), line
    return proc, json.loads(line.removeprefix("APPLIED "))


def step(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.stdin is not None
    proc.stdin.write(b"\n")
    return expect_line(proc)


def test_split_tunnel_apply_and_close(testnet: TestNet) -> None:
    ns = testnet.ns_b
    # Someone else's route for a prefix we also want: left in place, and not removed by close().
    testnet.run(ns, "ip", "route", "add", "100.81.0.0/16", "dev", "vb")
    before = snapshot(testnet, ns)

    proc, full = start_child(
        testnet,
        ns,
        addresses=["100.64.0.2/24", "fd00:64::2/64"],
        mtu=1380,
        allowed_ips=[
            "100.64.0.0/24",
            "100.80.0.0/16",
            "100.81.0.0/16",
            "fd00:64::/64",
            "fd00:99::/48",
        ],
    )
    assert full is None
    s = snapshot(testnet, ns)
    assert s["up"] and s["mtu"] == 1380 and s["txqlen"] == 10000
    assert s["addrs"] == ["100.64.0.2/24", "fd00:64::2/64"]
    assert s["main4"] == ["100.64.0.0/24", "100.80.0.0/16"]  # .0/24 is the address's own route
    assert "fd00:99::/48" in s["main6"] and "fd00:64::/64" in s["main6"]
    assert s["t4"] == s["t6"] == [] and s["rules4"] == s["rules6"] == []
    assert s["src_valid_mark"] == "0"
    # The route that existed before still points where it did.
    assert [r["dev"] for r in _ipj(testnet, ns, "route", "show", "100.81.0.0/16")] == ["vb"]

    assert step(proc) == "CLOSED"
    s = snapshot(testnet, ns)
    assert s["exists"], "close() of the config must not take the device with it"
    assert not s["up"] and s["mtu"] == 1500 and s["txqlen"] == 500
    assert s["addrs"] == [] and s["main4"] == [] and s["main6"] == []
    assert [r["dev"] for r in _ipj(testnet, ns, "route", "show", "100.81.0.0/16")] == ["vb"]

    step_eof(proc)
    after = snapshot(testnet, ns)
    assert not after["exists"]
    assert after["rules4"] == before["rules4"] and after["rules6"] == before["rules6"]


def step_eof(proc) -> None:  # type: ignore[no-untyped-def]
    assert proc.stdin is not None
    proc.stdin.write(b"\n")
    assert proc.wait(10) == 0


def test_full_tunnel_like_wg_quick(testnet: TestNet) -> None:
    ns = testnet.ns_b
    proc, full = start_child(
        testnet,
        ns,
        addresses=["100.64.0.2/24", "fd00:64::2/64"],
        mtu=1420,
        allowed_ips=["0.0.0.0/0", "::/0", "100.90.0.0/16"],
    )
    assert full == {"fwmark": 51820, "table": 51820, "families": [2, 10]}
    s = snapshot(testnet, ns)
    assert s["t4"] == ["default"] and s["t6"] == ["default"]
    # wg-quick keeps every non-default prefix in main, so it still wins by longest-prefix match.
    assert s["main4"] == ["100.64.0.0/24", "100.90.0.0/16"]
    expected = [
        {"priority": 32764, "src": "all", "table": "main", "suppress_prefixlen": 0},
        {"priority": 32765, "not": None, "src": "all", "fwmark": "0xca6c", "table": "51820"},
    ]
    assert s["rules4"] == expected
    assert s["rules6"] == expected
    assert s["src_valid_mark"] == "1"

    # Route lookups only (no packets): unmarked traffic goes into the tunnel, the underlay stays
    # on the veth, and packets with the fwmark (our own UDP socket) bypass table 51820.
    def route_get(*args: str) -> dict[str, Any]:
        return _ipj(testnet, ns, "route", "get", *args)[0]

    assert route_get("100.99.1.1")["dev"] == IF
    assert route_get("fd00:77::1")["dev"] == IF
    assert route_get("198.18.0.1")["dev"] == "vb"
    assert route_get("fd00:18::1")["dev"] == "vb"
    marked = testnet.run(ns, "ip", "route", "get", "100.99.1.1", "mark", "51820", check=False)
    assert marked.returncode != 0 and "unreachable" in marked.stderr

    assert step(proc) == "CLOSED"
    s = snapshot(testnet, ns)
    assert s["t4"] == s["t6"] == [] and s["rules4"] == s["rules6"] == []
    assert s["main4"] == [] and s["addrs"] == []
    assert s["src_valid_mark"] == "0"
    step_eof(proc)


def test_close_after_device_vanished(testnet: TestNet) -> None:
    """The usual shutdown order closes the TUN first: close() must still remove rules and sysctl."""
    ns = testnet.ns_b
    code = textwrap.dedent(
        """
        import logging
        from ipaddress import ip_interface, ip_network
        from fz_trio.shell.tun import open_tun
        from fz_trio.shell.netconfig import InterfaceNetwork
        logging.basicConfig(level=logging.WARNING)
        dev = open_tun("fzt0")
        net = InterfaceNetwork(dev.name)
        net.apply(addresses=[ip_interface("100.64.0.2/24")], mtu=1420,
                  allowed_ips=[ip_network("0.0.0.0/0"), ip_network("::/0")])
        dev.close()
        net.close()
        net.close()
        print("OK")
        """
    )
    cp = testnet.run_python(ns, code)
    assert cp.stdout.strip() == "OK"
    assert "WARNING" not in cp.stderr, cp.stderr  # gone things are debug, not warnings
    s = snapshot(testnet, ns)
    assert not s["exists"]
    assert s["rules4"] == s["rules6"] == []
    assert s["src_valid_mark"] == "0"


def test_failed_apply_rolls_back(testnet: TestNet) -> None:
    ns = testnet.ns_b
    code = textwrap.dedent(
        """
        import json, subprocess
        from ipaddress import ip_interface, ip_network
        from fz_trio.shell.tun import open_tun
        from fz_trio.shell.netconfig import InterfaceNetwork, NetConfigError
        dev = open_tun("fzt0")
        # IPv6 off on this link: the IPv6 address is refused after MTU and IPv4 were set.
        subprocess.run(["sysctl", "-q", "-w", "net.ipv6.conf.fzt0.disable_ipv6=1"], check=True)
        net = InterfaceNetwork(dev.name)
        try:
            net.apply(addresses=[ip_interface("100.64.0.2/24"), ip_interface("fd00:64::2/64")],
                      mtu=1420, allowed_ips=[ip_network("0.0.0.0/0")])
        except NetConfigError as exc:
            err = str(exc)
        else:
            err = None
        links = subprocess.run(["ip", "-j", "addr", "show", "dev", "fzt0"], capture_output=True,
                               text=True, check=True).stdout
        rules = subprocess.run(["ip", "-j", "rule"], capture_output=True, text=True).stdout
        print(json.dumps({"err": err, "link": json.loads(links)[0], "rules": json.loads(rules)}))
        dev.close()
        """
    )
    out = json.loads(testnet.run_python(ns, code).stdout)
    assert out["err"] is not None
    assert "fd00:64::2/64" in out["err"] and "EACCES" in out["err"]
    link = out["link"]
    assert link["mtu"] == 1500 and link["txqlen"] == 500
    assert link["addr_info"] == []
    assert {r["priority"] for r in out["rules"]} == STANDARD_RULE_PRIORITIES


def test_ipv6_needs_mtu_1280(testnet: TestNet) -> None:
    code = textwrap.dedent(
        """
        from ipaddress import ip_interface
        from fz_trio.shell.netconfig import InterfaceNetwork, NetConfigError
        try:
            InterfaceNetwork("vb").apply(addresses=[ip_interface("fd00:64::2/64")], mtu=1200,
                                         allowed_ips=[])
        except NetConfigError as exc:
            print(exc)
        """
    )
    assert "below 1280" in testnet.run_python(testnet.ns_b, code).stdout


def test_missing_interface(testnet: TestNet) -> None:
    code = textwrap.dedent(
        """
        from fz_trio.shell.netconfig import InterfaceNetwork, NetConfigError
        try:
            InterfaceNetwork("nope0").apply(addresses=[], mtu=1420, allowed_ips=[])
        except NetConfigError as exc:
            print(exc)
        """
    )
    assert "'nope0' not found" in testnet.run_python(testnet.ns_b, code).stdout


def test_under_trio_directly_and_from_threads(testnet: TestNet) -> None:
    """pyroute2's sync IPRoute runs its own asyncio loop: it must not clash with Trio's."""
    code = textwrap.dedent(
        """
        from ipaddress import ip_interface, ip_network
        import trio
        from fz_trio.shell.tun import open_tun
        from fz_trio.shell.netconfig import InterfaceNetwork

        async def main():
            with open_tun("fzt0") as dev:
                net = InterfaceNetwork(dev.name)
                kw = dict(addresses=[ip_interface("100.64.0.2/24")], mtu=1420,
                          allowed_ips=[ip_network("0.0.0.0/0")])
                ft = net.apply(**kw)  # directly on the Trio thread
                net.close()
                ft2 = await trio.to_thread.run_sync(lambda: net.apply(**kw))
                await trio.to_thread.run_sync(net.close)
                print(ft == ft2 and ft.fwmark)

        trio.run(main)
        """
    )
    assert testnet.run_python(testnet.ns_b, code).stdout.strip() == "51820"
    s = snapshot(testnet, testnet.ns_b)
    assert not s["exists"] and s["rules4"] == [] and s["src_valid_mark"] == "0"


# Child with a host-state journal and Table/FwMark: apply, report, then wait to be killed.
JOURNALED_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from ipaddress import ip_interface, ip_network
    from fz_trio.shell.host_state import HostState
    from fz_trio.shell.tun import open_tun
    from fz_trio.shell.netconfig import InterfaceNetwork
    cfg = json.loads(sys.argv[1])
    state = HostState("fzt0", Path(cfg["state_dir"]))
    state.claim()
    dev = open_tun("fzt0")
    net = InterfaceNetwork(dev.name, state)
    ft = net.apply(addresses=[ip_interface(a) for a in cfg["addresses"]], mtu=1420,
                   allowed_ips=[ip_network(n) for n in cfg["allowed_ips"]],
                   table=cfg["table"], fwmark=cfg["fwmark"])
    print("APPLIED", json.dumps(ft and ft.fwmark))
    sys.stdin.readline()
    """
)


def start_journaled(net: TestNet, ns: str, **cfg: Any):  # type: ignore[no-untyped-def]
    cfg.setdefault("state_dir", str(net.tmpdir / "state"))
    cfg.setdefault("table", "auto")
    cfg.setdefault("fwmark", None)
    code = JOURNALED_CHILD.replace(
        "json.loads(sys.argv[1])", repr(json.dumps(cfg)).join(("json.loads(", ")")))
    proc = net.popen_python(ns, code)
    line = expect_line(proc)
    assert line.startswith("APPLIED "), line
    return proc, json.loads(line.removeprefix("APPLIED "))


def test_a_killed_full_tunnel_is_undone_by_the_next_claim(testnet: TestNet) -> None:
    """kill -9: the device and its routes vanish with the process, the rules and the sysctl
    stay; the journal written before each of them lets the next start remove them."""
    ns = testnet.ns_b
    before = snapshot(testnet, ns)
    proc, fwmark = start_journaled(testnet, ns, addresses=["100.64.0.2/24"],
                                   allowed_ips=["0.0.0.0/0", "::/0"], fwmark=0x1234)
    assert fwmark == 0x1234
    s = snapshot(testnet, ns)
    assert s["rules4"][1]["fwmark"] == "0x1234" and s["src_valid_mark"] == "1"
    proc.kill()
    proc.wait()
    left = snapshot(testnet, ns)
    assert not left["exists"] and left["rules4"] and left["src_valid_mark"] == "1"
    code = (f"from pathlib import Path\nfrom fz_trio.shell.host_state import HostState\n"
            f"HostState('fzt0', Path({str(testnet.tmpdir / 'state')!r})).claim()\n")
    testnet.run_python(ns, code)
    assert snapshot(testnet, ns) == before


@pytest.mark.parametrize("table", ["off", 1234, 254])
def test_table_off_or_a_number_adds_no_rules(testnet: TestNet, table: int | str) -> None:
    """wg-quick's Table: off adds no routes; a number puts every route, /0 too, in that table,
    with no policy rules (a full tunnel is then the user's own business)."""
    ns = testnet.ns_b
    proc, full = start_journaled(testnet, ns, addresses=["100.64.0.2/24"],
                                 allowed_ips=["0.0.0.0/0", "100.90.0.0/16"], table=table)
    assert full is None
    s = snapshot(testnet, ns)
    assert s["rules4"] == s["rules6"] == [] and s["src_valid_mark"] == "0"
    cp = testnet.run(ns, "ip", "-j", "-4", "route", "show", "table", str(table), check=False)
    ours = sorted(r["dst"] for r in json.loads(cp.stdout or "[]") if r.get("dev") == IF)
    if table == "off":
        assert s["main4"] == ["100.64.0.0/24"]  # the address's own route only
    elif table == 254:
        assert s["main4"] == ["100.64.0.0/24", "100.90.0.0/16", "default"]
    else:
        assert ours == ["100.90.0.0/16", "default"] and s["t4"] == []
    proc.kill()
    proc.wait()
