"""The full tunnel's anti-spoofing rules, shown dropping a spoofed packet in test namespaces.

B plays the client: one end of a veth pair of its own stands in for the tunnel (the rules
only look at interface names and addresses) with the tunnel address 100.64.0.2. A, on the
other end of the underlay veth, routes 100.64.0.2 to B and pings it: a packet for the tunnel's
address arriving from the LAN side. B answers it without the rules (the weak-host model),
and drops and counts it with them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from fz_trio.lab.testnet import TestNet, wait_for
from fz_trio.shell.firewall import nft_script

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("nft") is None,
                                 reason="needs nft (apt-get install nftables)")]

IF = "fzd0"
APPLY = """
import socket, sys
from ipaddress import ip_interface
from pathlib import Path
from fz_trio.shell.firewall import apply_anti_spoofing
from fz_trio.shell.host_state import HostState
state = HostState("fzd0", Path(sys.argv[1]))
state.claim()
assert apply_anti_spoofing(state, "fzd0", [ip_interface("100.64.0.2/24"),
                                           ip_interface("fd00:64::2/64")], 51820,
                           {socket.AF_INET, socket.AF_INET6})
if sys.argv[2] == "crash":
    import os
    os._exit(9)
sys.stdin.readline()
state.undo_all()
state.release()
"""


def _spoofed_ping(net: TestNet) -> bool:
    return net.run(net.ns_a, "ping", "-c", "1", "-W", "1", "100.64.0.2",
                   check=False).returncode == 0


def _tables(net: TestNet) -> str:
    return net.run(net.ns_b, "nft", "list", "tables").stdout


def test_a_spoofed_packet_is_dropped_and_counted(testnet: TestNet) -> None:
    net = testnet
    net.run(net.ns_b, "ip", "link", "add", IF, "type", "veth", "peer", "name", f"{IF}p")
    net.run(net.ns_b, "ip", "addr", "add", "100.64.0.2/24", "dev", IF)
    net.run(net.ns_b, "ip", "link", "set", IF, "up")
    net.run(net.ns_a, "ip", "route", "add", "100.64.0.2/32", "dev", net.veth_a)
    assert _spoofed_ping(net)  # answered: nothing stops it yet

    state_dir = str(net.tmpdir / "state")
    child = net.popen(net.ns_b, sys.executable, "-c", APPLY, state_dir, "keep",
                      env=net.python_env(), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: "table ip6 fz-trio-fzd0" in _tables(net) or child.poll() is not None,
                 10, what="the rules")
        assert child.poll() is None, child.communicate()[1].decode()
        assert "table ip fz-trio-fzd0" in _tables(net) and "table ip6 fz-trio-fzd0" in _tables(net)
        assert not _spoofed_ping(net)
        rules = net.run(net.ns_b, "nft", "list", "table", "ip", "fz-trio-fzd0").stdout
        assert 'iifname != "fzd0" ip daddr 100.64.0.2 fib saddr type != local counter packets 1' \
            in rules, rules
    finally:
        assert child.stdin is not None
        child.stdin.write(b"\n")
        child.stdin.close()
        child.wait(10)
    assert "fz-trio" not in _tables(net)
    assert _spoofed_ping(net)

    # kill -9 with the rules in place: the next claim of the journal removes them.
    net.run(net.ns_b, sys.executable, "-c", APPLY, state_dir, "crash", env=net.python_env(),
            check=False)
    assert "fz-trio-fzd0" in _tables(net)
    net.run_python(net.ns_b, "from pathlib import Path\nfrom fz_trio.shell.host_state import "
                             f"HostState\nHostState('fzd0', Path({state_dir!r})).claim()")
    assert "fz-trio" not in _tables(net)


def test_the_script_holds_only_the_familys_addresses() -> None:
    import socket
    from ipaddress import ip_interface

    script = nft_script("wg0", [ip_interface("100.64.0.2/24"), ip_interface("fd00:64::2/64")],
                        51820, socket.AF_INET6)
    assert "ip6 daddr fd00:64::2" in script and "100.64.0.2" not in script
    assert "meta mark 0xca6c ct mark set meta mark" in script
