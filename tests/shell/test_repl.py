"""`fz-trio repl`: driven through stdin, as a developer would type at it.

The simulated mode needs nothing; the live mode runs against a wireguard-go peer on the test
network (root, namespaces), pings through the tunnel from the REPL, and leaves with EOF.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from fz_trio.cli import main
from fz_trio.core import generate_private_key, public_key_of
from fz_trio.lab.scenario import write_config
from fz_trio.lab.testnet import TestNet, WgPeer, expect_line

REPL = [sys.executable, "-u", "-m", "fz_trio", "repl"]


def run_repl(args: list[str], script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(REPL + args, input=script, capture_output=True, text=True,
                          timeout=timeout)


def test_sim_repl_handshake_ping_rekey_and_errors() -> None:
    result = run_repl(["--sim"], "\n".join([
        "first = await ping(bob)",
        "print('FIRST', bool(first), first)",
        "net.trace = False",
        "net.run(130)",  # past REKEY_AFTER_TIME
        "print('SECOND', await ping(bob, family=6))",
        "show()",
        "1/0",  # a user error: a traceback, and the console goes on
        "await trio.sleep(0)",
        "print('SESSION', alice.peer(bob).current is not None, net.now > 130)",
    ]) + "\n")
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, err
    assert "REPL on a simulated network" in err  # the banner
    assert "alice -> bob    handshake initiation" in out
    assert "bob -> alice  handshake response" in out
    assert "FIRST True reply from 100.64.2.1" in out
    assert "SECOND reply from fd00:64:0:2::1" in out
    assert "previous session:" in out and "handshakes_completed 2" in out
    assert "ZeroDivisionError: division by zero" in err
    assert "SESSION True True" in out


def test_sim_repl_exit_status() -> None:
    result = run_repl(["--sim", "--seed", "7"], "exit(3)\n")
    assert result.returncode == 3, result.stderr
    assert "seed 7" in result.stderr


def test_ctrl_c_cancels_the_statement_not_the_repl() -> None:
    proc = subprocess.Popen(REPL + ["--sim"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"print('SLEEPING'); await trio.sleep(60)\n")
        while "SLEEPING" not in expect_line(proc, timeout=30):
            pass
        time.sleep(0.2)  # into the sleep
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(b"print('AFTER', round(net.now))\n", timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - started < 10
    assert proc.returncode == 0, err
    assert b"KeyboardInterrupt" in err
    assert b"AFTER 0" in out


def test_repl_command_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repl"]) == 1
    assert "a config file is needed" in capsys.readouterr().err
    assert main(["repl", "wg0.conf", "--sim"]) == 1
    assert "not both" in capsys.readouterr().err


@pytest.mark.netns
def test_live_repl_pings_through_the_tunnel_then_eof_removes_it(testnet: TestNet) -> None:
    net = testnet
    server_key, client_key = generate_private_key(), generate_private_key()
    net.start_wireguard_go(
        net.ns_a, f"wga{net.suffix}", private_key=server_key, listen_port=51820,
        peers=[WgPeer(public_key_of(client_key), [f"{net.tunnel_b4}/32", f"{net.tunnel_b6}/128"])],
        addresses=[f"{net.tunnel_a4}/24", f"{net.tunnel_a6}/64"])
    ifname = f"fzr{net.suffix}"
    conf = net.tmpdir / f"{ifname}.conf"
    write_config(conf, private_key=client_key,
                 addresses=[f"{net.tunnel_b4}/24", f"{net.tunnel_b6}/64"], listen_port=None,
                 peer_public=public_key_of(server_key),
                 allowed_ips=[f"{net.tunnel_a4}/32", f"{net.tunnel_a6}/128"],
                 endpoint=f"{net.underlay_a}:51820", preshared_key=None)
    script = "\n".join([
        f"print('PING4', await ping({net.tunnel_a4!r}, timeout=5))",
        f"print('PING6', await ping({net.tunnel_a6!r}, timeout=5))",
        "print('PEERS', len(peers), peers[0].current is not None)",
        "show()",
        f"print('LINK', {ifname!r} in open('/proc/net/dev').read())",
    ]) + "\n"
    proc = net.popen(net.ns_b, *REPL, str(conf), env=net.python_env(), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(script, timeout=60)  # EOF after the script: the REPL leaves
    assert proc.returncode == 0, err
    assert f"{ifname} is up" in err
    assert f"PING4 reply from {net.tunnel_a4}: time=" in out, out + err
    assert f"PING6 reply from {net.tunnel_a6}: time=" in out, out + err
    assert "PEERS 1 True" in out
    assert "handshakes_completed 1" in out
    assert "LINK True" in out
    assert f"interface {ifname} removed" in err
    assert not net.link_exists(net.ns_b, ifname)
    routes = net.run(net.ns_b, "ip", "-4", "route", "show").stdout
    assert "100.64." not in routes, routes
    wg = net.run(net.ns_a, "wg", "show", f"wga{net.suffix}", "latest-handshakes").stdout
    assert int(wg.split()[1]) > 0, wg


@pytest.mark.netns
def test_live_repl_sigterm_takes_the_tunnel_down(testnet: TestNet) -> None:
    # No peer needed: the interface is up as soon as the banner is printed.
    net = testnet
    ifname = f"fzt{net.suffix}"
    conf = net.tmpdir / f"{ifname}.conf"
    write_config(conf, private_key=generate_private_key(), addresses=[f"{net.tunnel_b4}/24"],
                 listen_port=None, peer_public=public_key_of(generate_private_key()),
                 allowed_ips=[f"{net.tunnel_a4}/32"],
                 endpoint=f"{net.underlay_a}:51820", preshared_key=None)
    proc = net.popen(net.ns_b, *REPL, str(conf), env=net.python_env(), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"print('READY')\n")  # the console thread then waits in its next read
    while "READY" not in expect_line(proc, timeout=30):
        pass
    assert net.link_exists(net.ns_b, ifname)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, proc.stderr.read().decode()
    assert f"interface {ifname} removed" in proc.stderr.read().decode()
    assert not net.link_exists(net.ns_b, ifname)

