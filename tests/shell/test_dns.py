"""DNS applied and restored (fz_trio.shell.dns), for real, inside test namespaces.

Everything that changes a resolver runs under `ip netns exec` in a TestNet namespace whose
/etc/resolv.conf (and, for openresolv, /etc/resolvconf.conf) are the test's own files from
/etc/netns/NS/ (fz_trio.lab.netns_etc): the host's resolver files must read byte for byte the same
after every test, which an autouse fixture checks. The journals go to the TestNet's directory,
not /run/fz-trio.

A driver process in the namespace claims a HostState, applies DNS, says "applied" (or the
DnsError), then on a line from us undoes everything and says "undone", or `os._exit`s like a
`kill -9`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from fz_trio.lab.netns_etc import (
    NetnsEtc,
    Openresolv,
    openresolv_unavailable_reason,
    setup_openresolv,
)
from fz_trio.lab.testnet import TestNet, expect_line, netns_unavailable_reason
from fz_trio.shell.dns import DnsMode, file_content, resolvconf_input, resolved_commands
from fz_trio.values import IPAddress

pytestmark = pytest.mark.skipif(netns_unavailable_reason(need_wireguard=False) is not None,
                                reason=netns_unavailable_reason(need_wireguard=False) or "")

HOST_FILES = [Path("/etc/resolv.conf"), Path("/etc/resolv.conf.bak"),
              Path("/etc/resolvconf.conf"), Path("/run/resolvconf")]
SEED = "# fz-trio test: the namespace's own resolver\nnameserver 198.18.0.1\nsearch host.test\n" \
       "options edns0 timeout:2\n"
SERVERS = ["100.64.0.53", "fd00:64::53"]
SEARCH = ["fzt.test", "corp.fzt.test"]


def _fingerprint(path: Path) -> str | bool:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return path.exists()


@pytest.fixture(autouse=True)
def host_resolver_untouched() -> Iterator[None]:
    before = {path: _fingerprint(path) for path in HOST_FILES}
    yield
    assert {path: _fingerprint(path) for path in HOST_FILES} == before, \
        "the host's resolver files changed"


@pytest.fixture
def net() -> Iterator[TestNet]:
    with TestNet() as net:
        yield net


@pytest.fixture
def etc(net: TestNet) -> Iterator[NetnsEtc]:
    with NetnsEtc(net.ns_b) as etc:
        yield etc


def _seed(net: TestNet, etc: NetnsEtc, text: str = SEED) -> Path:
    path = etc.write("resolv.conf", text)
    etc.check_bound(net)
    return path


class Driver:
    """apply_dns in a process of its own inside `ns`."""

    def __init__(self, net: TestNet, ns: str, ifname: str, *, mode: DnsMode,
                 full_tunnel: bool = True, servers: list[str] = SERVERS,
                 search: list[str] = SEARCH, path: str | None = None,
                 prelude: str = "") -> None:
        self.journal_dir = net.tmpdir / "journal"
        env_path = f"os.environ['PATH'] = {path!r}\n" if path is not None else ""
        env_path += prelude
        self.proc = net.popen_python(ns, f"""
import logging, os, sys
from ipaddress import ip_address
from pathlib import Path
from fz_trio.shell import dns
from fz_trio.shell.dns import DnsError, DnsMode, apply_dns
from fz_trio.shell.host_state import HostState
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
{env_path}state = HostState({ifname!r}, Path({str(self.journal_dir)!r}))
state.claim()
try:
    apply_dns(state, {ifname!r}, [ip_address(s) for s in {servers!r}], {search!r},
              mode=DnsMode({mode.value!r}), full_tunnel={full_tunnel!r})
except DnsError as e:
    print("error:", e, "| journal:", len(state.changes), flush=True)
else:
    print("applied", len(state.changes), flush=True)
if sys.stdin.readline().strip() == "crash":
    os._exit(9)  # like kill -9: no cleanup
failures = state.undo_all()
state.release()
print("undone", failures, flush=True)
""")
        self.first = expect_line(self.proc)

    def journal(self) -> list[dict[str, Any]]:
        [path] = self.journal_dir.glob("*.json")
        changes: list[dict[str, Any]] = json.loads(path.read_text())["changes"]
        return changes

    def send(self, line: str) -> str | None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()
        if line == "crash":
            assert self.proc.wait(10) == 9
            return None
        out = expect_line(self.proc)
        assert self.proc.wait(10) == 0
        return out


def _claim_after_crash(net: TestNet, ns: str, ifname: str, journal_dir: Path, how: str) -> str:
    """The next start (`claim`) or `fz-trio down` (`undo_stale`) in `ns` after a crash."""
    call = {"claim": "HostState(IF, DIR).claim()", "down": "print(undo_stale(IF, DIR))"}[how]
    return net.run_python(ns, f"""
from pathlib import Path
from fz_trio.shell.host_state import HostState, undo_stale
IF, DIR = {ifname!r}, Path({str(journal_dir)!r})
{call}
""").stdout


# -- file mode -----------------------------------------------------------------------------------
def test_file_mode_rewrites_resolv_conf_in_place_and_restores_it(net: TestNet,
                                                                 etc: NetnsEtc) -> None:
    resolv = _seed(net, etc)
    inode = resolv.stat().st_ino
    ifname = f"fzd{net.suffix}"
    driver = Driver(net, net.ns_b, ifname, mode=DnsMode.FILE, full_tunnel=True)
    assert driver.first == "applied 1"
    # Full tunnel: only the tunnel's servers (nothing leaks); the resolver's options stay.
    assert resolv.read_text() == (
        f"# Written by fz-trio for {ifname} (full tunnel: every query goes through it); the "
        f"previous content comes back when {ifname} goes down.\n"
        "nameserver 100.64.0.53\nnameserver fd00:64::53\nsearch fzt.test corp.fzt.test\n"
        "options edns0 timeout:2\n")
    assert net.run(net.ns_b, "cat", "/etc/resolv.conf").stdout == resolv.read_text()
    assert resolv.stat().st_ino == inode, "written in place: the bind mount still shows it"
    [change] = driver.journal()
    assert change["undo"] == "file" and change["data"]["old"] == SEED
    assert driver.send("undo") == "undone []"
    assert resolv.read_text() == SEED
    assert not list(driver.journal_dir.glob("*.json"))


def test_file_mode_split_tunnel_keeps_the_hosts_servers_behind_ours(net: TestNet,
                                                                    etc: NetnsEtc) -> None:
    resolv = _seed(net, etc)
    driver = Driver(net, net.ns_b, f"fzd{net.suffix}", mode=DnsMode.FILE, full_tunnel=False,
                    servers=["100.64.0.53"])
    assert driver.first == "applied 1"
    lines = resolv.read_text().splitlines()
    assert lines[1:] == ["nameserver 100.64.0.53", "nameserver 198.18.0.1",
                         "search fzt.test corp.fzt.test host.test", "options edns0 timeout:2"]
    assert driver.send("undo") == "undone []"
    assert resolv.read_text() == SEED


def test_file_mode_leaves_a_file_someone_else_changed(net: TestNet, etc: NetnsEtc) -> None:
    resolv = _seed(net, etc)
    driver = Driver(net, net.ns_b, f"fzd{net.suffix}", mode=DnsMode.FILE)
    assert driver.first == "applied 1"
    theirs = "# another program's\nnameserver 198.18.0.9\n"
    resolv.write_text(theirs)  # in place, as a resolver manager in the namespace would
    assert driver.send("undo") == "undone []"
    assert resolv.read_text() == theirs
    assert driver.proc.stderr is not None
    assert "changed since fz-trio wrote it" in driver.proc.stderr.read().decode()


def test_file_mode_writes_through_a_symlinked_resolv_conf_and_says_whose_it_is(
        net: TestNet, etc: NetnsEtc) -> None:
    # /etc/resolv.conf itself cannot be made a link in a namespace (a bind follows links), so the
    # driver is pointed at a link in the TestNet's directory, to a file "resolvconf manages".
    _seed(net, etc)
    run_dir = net.tmpdir / "run"
    run_dir.mkdir()
    target = run_dir / "resolv.conf"
    target.write_text(SEED)
    link = net.tmpdir / "resolv.conf"
    link.symlink_to(target)
    driver = Driver(net, net.ns_b, f"fzd{net.suffix}", mode=DnsMode.FILE, prelude=f"""
dns.RESOLV_CONF = Path({str(link)!r})
dns.MANAGED_TARGETS = {{{str(run_dir) + "/"!r}: "resolvconf"}}
""")
    assert driver.first == "applied 1"
    assert link.is_symlink() and "nameserver 100.64.0.53" in target.read_text()
    assert driver.journal()[0]["data"]["path"] == str(target)
    assert driver.send("undo") == "undone []"
    assert link.is_symlink() and target.read_text() == SEED
    assert driver.proc.stderr is not None
    log = driver.proc.stderr.read().decode()
    assert f"links to {target}, which resolvconf manages" in log, log
    assert "--dns-mode resolvconf avoids this" in log


def test_file_mode_an_unwritable_resolv_conf_is_a_dns_error_and_nothing_recorded(
        net: TestNet, etc: NetnsEtc) -> None:
    resolv = _seed(net, etc)
    # Read-only in the driver's own mount namespace only (`ip netns exec` makes it a slave).
    driver = Driver(net, net.ns_b, f"fzd{net.suffix}", mode=DnsMode.FILE, prelude="""
import subprocess
subprocess.run(["mount", "-o", "remount,bind,ro", "/etc/resolv.conf"], check=True)
""")
    assert driver.first == ("error: cannot write /etc/resolv.conf: Read-only file system "
                            "| journal: 0"), driver.first
    driver.send("undo")
    assert resolv.read_text() == SEED


@pytest.mark.parametrize("how", ["claim", "down"])
def test_file_mode_after_a_crash_the_next_start_or_down_restores_it(net: TestNet, etc: NetnsEtc,
                                                                    how: str) -> None:
    resolv = _seed(net, etc)
    ifname = f"fzd{net.suffix}"
    driver = Driver(net, net.ns_b, ifname, mode=DnsMode.FILE)
    assert driver.first == "applied 1"
    driver.send("crash")
    assert "nameserver 100.64.0.53" in resolv.read_text()
    out = _claim_after_crash(net, net.ns_b, ifname, driver.journal_dir, how)
    assert resolv.read_text() == SEED
    if how == "down":
        assert out.strip() == "True" and not list(driver.journal_dir.glob("*.json"))
    else:
        assert driver.journal() == []


def test_off_mode_and_bad_input_change_nothing(net: TestNet, etc: NetnsEtc) -> None:
    resolv = _seed(net, etc)
    ifname = f"fzd{net.suffix}"
    off = Driver(net, net.ns_b, ifname, mode=DnsMode.OFF)
    assert off.first == "applied 0"
    assert off.send("undo") == "undone []"
    # A search "domain" that would smuggle a nameserver line into resolv.conf.
    bad = Driver(net, net.ns_b, ifname, mode=DnsMode.FILE, search=["a\nnameserver 198.18.0.66"])
    assert bad.first.startswith("error: DNS for") and "not a valid domain name" in bad.first
    assert bad.first.endswith("| journal: 0")
    bad.send("undo")
    assert resolv.read_text() == SEED


# -- resolvconf (openresolv kept inside the namespace) -------------------------------------------
@pytest.fixture
def openresolv(net: TestNet, etc: NetnsEtc) -> Openresolv:
    reason = openresolv_unavailable_reason()
    if reason:
        pytest.skip(reason)
    resolvconf = setup_openresolv(etc, net.tmpdir / "resolvconf", label=net.suffix,
                                  resolv_conf=SEED)
    etc.check_bound(net)
    return resolvconf


@pytest.mark.parametrize("ending", ["undo", "crash"])
def test_resolvconf_mode_adds_a_record_and_removes_it(net: TestNet, openresolv: Openresolv,
                                                      ending: str) -> None:
    ifname = f"fzd{net.suffix}"
    driver = Driver(net, net.ns_b, ifname, mode=DnsMode.RESOLVCONF)
    assert driver.first == "applied 1"
    assert openresolv.records() == [ifname]
    lines = openresolv.resolv_conf.read_text().splitlines()
    # -x: exclusive, the tunnel's servers alone, as with wg-quick.
    assert sorted(line for line in lines if line.startswith(("nameserver", "search"))) == [
        "nameserver 100.64.0.53", "nameserver fd00:64::53", "search fzt.test corp.fzt.test"]
    [change] = driver.journal()
    assert change["data"] == {"argv": ["resolvconf", "-d", ifname, "-f"]}
    if ending == "crash":
        driver.send("crash")
        assert openresolv.records() == [ifname]
        _claim_after_crash(net, net.ns_b, ifname, driver.journal_dir, "claim")
    else:
        assert driver.send("undo") == "undone []"
    assert openresolv.records() == []
    lines = openresolv.resolv_conf.read_text().splitlines()
    assert not [line for line in lines if line.startswith(("nameserver", "search"))], lines


def test_a_failing_resolvconf_is_a_dns_error_naming_it(net: TestNet, etc: NetnsEtc) -> None:
    reason = openresolv_unavailable_reason()
    if reason:
        pytest.skip(reason)
    blocker = net.tmpdir / "not-a-directory"
    blocker.write_text("")
    resolvconf = setup_openresolv(etc, blocker / "state", label=net.suffix)
    etc.check_bound(net)
    driver = Driver(net, net.ns_b, f"fzd{net.suffix}", mode=DnsMode.RESOLVCONF)
    assert driver.first.startswith("error: `resolvconf -a fzd"), driver.first
    assert "failed (exit 1): Failed to create needed directory" in driver.first
    assert driver.first.endswith("| journal: 0"), "undone before the error was raised"
    driver.send("undo")
    assert resolvconf.resolv_conf.read_text().startswith("# Generated by resolvconf\n")


def test_a_missing_resolvconf_is_a_dns_error(net: TestNet, etc: NetnsEtc) -> None:
    _seed(net, etc)
    driver = Driver(net, net.ns_b, f"fzd{net.suffix}", mode=DnsMode.RESOLVCONF,
                    path=str(net.tmpdir))
    assert driver.first == "error: `resolvconf` is not installed (not on PATH) | journal: 0"
    driver.send("undo")


# -- systemd-resolved ----------------------------------------------------------------------------
def _resolved_skip_reason() -> str:
    """Why the systemd-resolved path cannot run in this test (it never can: see the end)."""
    try:
        init = Path("/proc/1/comm").read_text().strip()
    except OSError:
        init = "unknown"
    facts = [f"PID 1 is {init!r}" + ("" if init == "systemd" else ", not systemd")]
    facts.append("resolvectl is " + ("at " + str(shutil.which("resolvectl"))
                                     if shutil.which("resolvectl") else "not installed"))
    facts.append("/run/systemd/resolve " + ("exists" if Path("/run/systemd/resolve").is_dir()
                                            else "does not exist"))
    return ("systemd-resolved path not run: " + "; ".join(facts) + ". Even where it runs, "
            "systemd-resolved manages only the links of the host's network namespace, and "
            "these tests never touch the host's networking; the commands are checked below")


def test_systemd_resolved_path() -> None:
    pytest.skip(_resolved_skip_reason())


def test_systemd_resolved_is_refused_in_another_network_namespace(net: TestNet,
                                                                  etc: NetnsEtc) -> None:
    # It would configure whichever of the host's links has our interface's index.
    _seed(net, etc)
    driver = Driver(net, net.ns_b, f"fzd{net.suffix}", mode=DnsMode.RESOLVED)
    assert driver.first == ("error: systemd-resolved serves PID 1's network namespace, not this "
                            "one: use --dns-mode resolvconf or file here | journal: 0")
    driver.send("undo")


def test_systemd_resolved_commands() -> None:
    servers: list[IPAddress] = [IPv4Address("100.64.0.53"), IPv6Address("fd00:64::53")]
    assert resolved_commands("wg0", servers, ["fzt.test"], full_tunnel=True) == [
        ["resolvectl", "dns", "wg0", "100.64.0.53", "fd00:64::53"],
        ["resolvectl", "domain", "wg0", "fzt.test", "~."],
        ["resolvectl", "default-route", "wg0", "yes"]]
    assert resolved_commands("wg0", servers, ["fzt.test"], full_tunnel=False) == [
        ["resolvectl", "dns", "wg0", "100.64.0.53", "fd00:64::53"],
        ["resolvectl", "domain", "wg0", "fzt.test"],
        ["resolvectl", "default-route", "wg0", "no"]]
    assert resolved_commands("wg0", servers[:1], [], full_tunnel=False) == [
        ["resolvectl", "dns", "wg0", "100.64.0.53"]]


def test_resolvconf_input_and_file_content_agree_with_wg_quick() -> None:
    servers: list[IPAddress] = [IPv4Address("100.64.0.53"), IPv6Address("fd00:64::53")]
    assert resolvconf_input(servers, ["a.test", "b.test"]) == \
        "nameserver 100.64.0.53\nnameserver fd00:64::53\nsearch a.test b.test\n"
    assert resolvconf_input(servers[:1], []) == "nameserver 100.64.0.53\n"
    assert file_content("wg0", servers[:1], [], False, "").splitlines()[1:] == [
        "nameserver 100.64.0.53"]


# -- choosing the mode ---------------------------------------------------------------------------
def _choose(net: TestNet, path: str | None, requested: str | None = None) -> list[str]:
    setpath = f"os.environ['PATH'] = {path!r}\n" if path is not None else ""
    arg = f"DnsMode({requested!r})" if requested else "None"
    out = net.run_python(net.ns_b, f"""
import os
from fz_trio.shell.dns import DnsMode, choose_mode
{setpath}mode, why = choose_mode({arg})
print(mode.value)
print(why)
""").stdout
    return out.splitlines()


def test_choose_mode_here(net: TestNet) -> None:
    # In a test namespace systemd-resolved is never usable: it serves the host's namespace.
    bin_dir = net.tmpdir / "bin"
    bin_dir.mkdir()
    assert _choose(net, str(bin_dir), "off") == ["off", "requested with --dns-mode"]
    mode, why = _choose(net, str(bin_dir))
    assert mode == "file" and "no resolvconf" in why and "/etc/resolv.conf" in why
    # systemd's resolvconf is only a front end of resolved: not a resolvconf to use.
    fake_resolvectl = bin_dir / "resolvectl"
    fake_resolvectl.write_text("#!/bin/sh\nexit 1\n")
    fake_resolvectl.chmod(0o755)
    (bin_dir / "resolvconf").symlink_to(fake_resolvectl)
    mode, why = _choose(net, str(bin_dir))
    assert mode == "file" and "systemd-resolved's" in why, why
    if shutil.which("resolvconf") is not None and \
            Path(shutil.which("resolvconf") or "").resolve().name != "resolvectl":
        mode, why = _choose(net, None)
        assert mode == "resolvconf", why
        assert "systemd-resolved" in why and "wg-quick" in why

