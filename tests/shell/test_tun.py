"""TUN devices opened by ioctl, checked against the kernel's own view (`ip -j -d link`).

Every device is created inside a fresh test namespace by a child Python process, never in the
host namespace.
"""

from __future__ import annotations

import json
import struct
import sys
import textwrap

import pytest

from fz_trio.lab.testnet import TestNet, expect_line, wait_for
from fz_trio.shell.tun import TunError, open_tun


def _link(net: TestNet, ns: str, ifname: str) -> dict | None:
    cp = net.run(ns, "ip", "-j", "-d", "link", "show", "dev", ifname, check=False)
    if cp.returncode != 0:
        return None
    return json.loads(cp.stdout)[0]


# -- no privileges needed: rejected before /dev/net/tun is touched --------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("", "must not be empty"),
        ("a" * 16, "at most 15"),
        ("a b", "must not contain"),
        ("x/y", "must not contain"),
        ("x:y", "must not contain"),
        ("..", "invalid interface name"),
        ("tun%d%d", "template"),
        ("tun%s", "template"),
    ],
)
def test_invalid_name_is_rejected(name: str, message: str) -> None:
    with pytest.raises(TunError, match=message):
        open_tun(name)


@pytest.mark.parametrize("queues", [0, -1])
def test_invalid_queue_count_is_rejected(queues: int) -> None:
    with pytest.raises(TunError, match="queues"):
        open_tun("fzt0", queues)


def test_unsupported_extra_flags_are_rejected() -> None:
    with pytest.raises(TunError, match="unsupported extra TUN flags"):
        open_tun("fzt0", flags=0x0002)  # IFF_TAP


# -- in a namespace --------------------------------------------------------------------------------
LIFECYCLE = textwrap.dedent(
    """
    import os, sys
    from fz_trio.shell.tun import open_tun
    dev = open_tun("fzt0", 2, nonblocking=True)
    print("OPEN", dev.name, len(dev.fds), *[int(os.get_blocking(fd)) for fd in dev.fds])
    sys.stdin.readline()
    dev.close()
    dev.close()  # idempotent
    print("CLOSED", dev.fds)
    sys.stdin.readline()
    """
)


@pytest.mark.netns
def test_multi_queue_open_and_close(testnet: TestNet) -> None:
    ns = testnet.ns_a
    proc = testnet.popen_python(ns, LIFECYCLE)
    assert proc.stdin is not None
    assert expect_line(proc) == "OPEN fzt0 2 0 0"  # two queues, both non-blocking

    link = _link(testnet, ns, "fzt0")
    assert link is not None
    info = link["linkinfo"]
    assert info["info_kind"] == "tun"
    data = info["info_data"]
    assert data["type"] == "tun"
    assert data["multi_queue"] is True
    assert data["numqueues"] == 2
    assert data["pi"] is False
    assert data["vnet_hdr"] is False
    assert data["persist"] is False  # goes away with its fds, unlike pyroute2's tuntap

    proc.stdin.write(b"\n")
    assert expect_line(proc) == "CLOSED []"
    # The process is still alive: close() itself removed the device.
    wait_for(lambda: _link(testnet, ns, "fzt0") is None, 5, what="fzt0 to vanish")
    proc.stdin.write(b"\n")
    assert proc.wait(10) == 0


ERRORS = textwrap.dedent(
    """
    import json, os
    from fz_trio.shell.tun import TunError, open_tun
    out = {}
    for name in ["va", "lo", "fzt0"]:
        try:
            dev = open_tun(name)
        except TunError as exc:
            out[name] = str(exc)
        else:
            out[name] = None
            # "fzt0" is free: keep it open and try to create it a second time.
            try:
                open_tun(name)
            except TunError as exc:
                out["again"] = str(exc)
            dev.close()
    dev = open_tun("fzt%d", 1)
    out["template"] = dev.name
    dev.close()
    print(json.dumps(out))
    """
)


@pytest.mark.netns
def test_names_in_use_are_refused(testnet: TestNet) -> None:
    out = json.loads(testnet.run_python(testnet.ns_a, ERRORS).stdout)
    # "va" is the veth, "lo" loopback: never join or hijack an existing device.
    assert "already exists" in out["va"] and "'va'" in out["va"]
    assert "already exists" in out["lo"]
    assert out["fzt0"] is None
    # A second open of our own device must not silently attach another queue to it.
    assert "already exists" in out["again"]
    assert out["template"] == "fzt0"  # a %d template resolves to the real name


NO_CAP = textwrap.dedent(
    """
    from fz_trio.shell.tun import TunError, open_tun
    try:
        open_tun("fzt0")
    except TunError as exc:
        print(exc)
    else:
        print("opened")
    """
)


@pytest.mark.netns
def test_without_cap_net_admin_is_permission_denied(testnet: TestNet) -> None:
    # Root minus CAP_NET_ADMIN: /dev/net/tun opens (mode 0666) but TUNSETIFF is refused.
    cp = testnet.run(
        testnet.ns_a,
        "setpriv",
        "--bounding-set=-net_admin",
        "--inh-caps=-net_admin",
        sys.executable,
        "-c",
        NO_CAP,
        env=testnet.python_env(),
    )
    assert "permission denied" in cp.stdout
    assert "CAP_NET_ADMIN" in cp.stdout
    assert not testnet.link_exists(testnet.ns_a, "fzt0")


# An ICMP echo request written to the TUN comes back as the kernel's echo reply: proves the
# fds carry bare IP packets (IFF_NO_PI) both ways, on whichever queue the kernel picks.
ECHO = textwrap.dedent(
    """
    import json, os, select, subprocess, time
    from fz_trio.shell.tun import open_tun
    from fz_trio.datapath import icmp_echo

    dev = open_tun("fzt0", 2)
    subprocess.run(["ip", "addr", "add", "100.64.0.1/24", "dev", dev.name], check=True)
    subprocess.run(["ip", "link", "set", dev.name, "up"], check=True)

    request = icmp_echo("100.64.0.2", "100.64.0.1", 0x1234, 7, b"fz-trio tun test" * 4)
    n = os.write(dev.fds[0], request)

    reply = None
    deadline = time.monotonic() + 5
    while reply is None and time.monotonic() < deadline:
        ready, _, _ = select.select(dev.fds, [], [], 0.2)
        for fd in ready:
            pkt = os.read(fd, 65535)
            # Skip IPv6 noise (router solicitations, MLD) the kernel sends on a fresh link.
            if pkt[0] >> 4 == 4 and pkt[9] == 1:
                reply = pkt
    dev.close()
    print(json.dumps({"written": n, "reply": reply.hex() if reply else None}))
    """
)


@pytest.mark.netns
def test_icmp_echo_through_tun(testnet: TestNet) -> None:
    out = json.loads(testnet.run_python(testnet.ns_a, ECHO).stdout)
    assert out["written"] == 20 + 8 + 64
    assert out["reply"] is not None, "no ICMP echo reply read from the TUN"
    pkt = bytes.fromhex(out["reply"])
    ihl = (pkt[0] & 0xF) * 4
    assert pkt[12:16] == bytes([100, 64, 0, 1])  # from the TUN's address
    assert pkt[16:20] == bytes([100, 64, 0, 2])
    icmp_type, code, _, ident, seq = struct.unpack("!BBHHH", pkt[ihl : ihl + 8])
    assert (icmp_type, code, ident, seq) == (0, 0, 0x1234, 7)
    assert pkt[ihl + 8 :] == b"fz-trio tun test" * 4
    assert not testnet.link_exists(testnet.ns_a, "fzt0")
