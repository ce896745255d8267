"""The link watcher: a pure rtnetlink parser, and the watcher against a real kernel.

The kernel tests run a child Python in a private network namespace of its own (`unshare --net`):
the namespace, and the TUN devices in it, die with the child, so nothing can be left behind even
when the test fails hard. The test reaches into that namespace with `nsenter --net`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fz_trio.lab.testnet import expect_line, netns_unavailable_reason
from fz_trio.shell.link_watch import (
    IFLA_IFNAME,
    IFLA_MTU,
    RTM_DELLINK,
    RTM_NEWLINK,
    LinkEvent,
    link_index,
    link_mtu,
    parse_link_events,
    query_link,
)

AF_BRIDGE = 7
NLMSG_DONE = 3
ROOT = str(Path(__file__).resolve().parents[2])


# -- building rtnetlink messages -----------------------------------------------------------------
def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def rta(rta_type: int, value: bytes) -> bytes:
    return _pad(struct.pack("=HH", 4 + len(value), rta_type) + value)


def ifinfo(index: int, *, family: int = 0, flags: int = 0, mtu: int | None = None,
           ifname: str | None = None, extra: bytes = b"") -> bytes:
    attrs = b""
    if ifname is not None:
        attrs += rta(IFLA_IFNAME, ifname.encode() + b"\0")
    if mtu is not None:
        attrs += rta(IFLA_MTU, struct.pack("=I", mtu))
    return struct.pack("=BxHiII", family, 0xFFFE, index, flags, 0) + attrs + extra


def nlmsg(msg_type: int, payload: bytes, *, seq: int = 0, length: int | None = None) -> bytes:
    n = 16 + len(payload) if length is None else length
    return _pad(struct.pack("=IHHII", n, msg_type, 0, seq, 0) + payload)


# -- the pure parser -------------------------------------------------------------------------------
def test_newlink_and_dellink_for_our_index() -> None:
    data = (nlmsg(RTM_NEWLINK, ifinfo(7, flags=0x1043, mtu=1300, ifname="wg0"))
            + nlmsg(RTM_NEWLINK, ifinfo(8, mtu=9000, ifname="eth0"))
            + nlmsg(RTM_DELLINK, ifinfo(7, ifname="wg0")))
    assert parse_link_events(data, 7) == [
        LinkEvent(deleted=False, index=7, flags=0x1043, mtu=1300, ifname="wg0"),
        LinkEvent(deleted=True, index=7, flags=0, mtu=None, ifname="wg0"),
    ]
    assert [e.index for e in parse_link_events(data, None)] == [7, 8, 7]
    assert parse_link_events(data, 9) == []


def test_attributes_other_than_mtu_and_name_are_skipped() -> None:
    extra = rta(13, b"\x01\x02\x03") + rta(0x8000 | 18, rta(1, b"tun\0"))  # odd length, nested
    [event] = parse_link_events(nlmsg(RTM_NEWLINK, ifinfo(3, mtu=1420, extra=extra)), 3)
    assert event.mtu == 1420
    # The type's NLA_F_NESTED / NLA_F_NET_BYTEORDER bits are not part of the type.
    [event] = parse_link_events(nlmsg(RTM_NEWLINK, ifinfo(3) + rta(0x4000 | IFLA_MTU,
                                                                   struct.pack("=I", 1400))), 3)
    assert event.mtu == 1400


def test_bridge_port_and_other_messages_are_ignored() -> None:
    # AF_BRIDGE RTM_DELLINK only says that a port left its bridge: the link itself is still there.
    data = (nlmsg(RTM_DELLINK, ifinfo(5, family=AF_BRIDGE))
            + nlmsg(RTM_NEWLINK, ifinfo(5, family=AF_BRIDGE, mtu=1000))
            + nlmsg(NLMSG_DONE, struct.pack("=i", 0))
            + nlmsg(20, b"\0" * 24)  # RTM_NEWADDR
            + nlmsg(RTM_NEWLINK, ifinfo(5, mtu=1280)))
    assert parse_link_events(data, 5) == [
        LinkEvent(deleted=False, index=5, flags=0, mtu=1280, ifname=None)]


@pytest.mark.parametrize("data", [
    b"",
    b"\x10\x00",  # shorter than a header
    nlmsg(RTM_NEWLINK, ifinfo(5, mtu=1300))[:-1],  # truncated by one byte
    nlmsg(RTM_NEWLINK, ifinfo(5, mtu=1300), length=15),  # length smaller than the header
    nlmsg(RTM_NEWLINK, ifinfo(5, mtu=1300), length=0),
    nlmsg(RTM_NEWLINK, ifinfo(5, mtu=1300), length=0xFFFFFFFF),  # runs past the datagram
    nlmsg(RTM_NEWLINK, ifinfo(5)[:15]),  # ifinfomsg cut short
    nlmsg(RTM_NEWLINK, ifinfo(5) + struct.pack("=HH", 3, IFLA_MTU)),  # rta_len < 4
    nlmsg(RTM_NEWLINK, ifinfo(5) + struct.pack("=HHI", 200, IFLA_MTU, 1300)),  # rta past the end
    nlmsg(RTM_NEWLINK, ifinfo(5) + rta(IFLA_MTU, b"\x05\x00")),  # a u32 of two bytes
])
def test_malformed_messages_are_skipped(data: bytes) -> None:
    assert parse_link_events(data, 5) == []


def test_a_bad_message_ends_the_datagram_but_not_the_ones_before() -> None:
    good = nlmsg(RTM_NEWLINK, ifinfo(5, mtu=1300))
    bad_attr = nlmsg(RTM_NEWLINK, ifinfo(5) + struct.pack("=HH", 2, IFLA_MTU))
    # A bad attribute spoils its own message only; a bad message length ends the walk.
    assert len(parse_link_events(good + bad_attr + good, 5)) == 2
    assert len(parse_link_events(good + nlmsg(RTM_DELLINK, ifinfo(5), length=9) + good, 5)) == 1


def test_last_message_may_lack_its_padding() -> None:
    msg = struct.pack("=IHHII", 16 + 16 + 7, RTM_NEWLINK, 0, 0, 0) + ifinfo(5) \
        + struct.pack("=HH", 7, IFLA_IFNAME) + b"ab\0"
    assert parse_link_events(msg, 5)[0].ifname == "ab"


_messages = st.lists(
    st.tuples(
        st.sampled_from([RTM_NEWLINK, RTM_DELLINK, 20, NLMSG_DONE]),
        st.integers(1, 12),
        st.sampled_from([0, 0, AF_BRIDGE]),
        st.none() | st.integers(0, 2**32 - 1),
        st.none() | st.text("abcdefgh0123456789-", min_size=1, max_size=15),
    ),
    max_size=6,
)


@given(st.binary(max_size=600), st.none() | st.integers(-3, 2**31 - 1))
def test_arbitrary_bytes_never_raise(data: bytes, index: int | None) -> None:
    for event in parse_link_events(data, index):
        assert index is None or event.index == index


@given(_messages, st.integers(1, 12), st.data())
def test_valid_datagrams_parse_and_mangled_ones_never_raise(
    messages: list[tuple[int, int, int, int | None, str | None]], index: int, data: st.DataObject
) -> None:
    datagram = b"".join(nlmsg(t, ifinfo(i, family=f, mtu=m, ifname=n))
                        for t, i, f, m, n in messages)
    expected = [LinkEvent(deleted=(t == RTM_DELLINK), index=i, flags=0, mtu=m, ifname=n)
                for t, i, f, m, n in messages
                if t in (RTM_NEWLINK, RTM_DELLINK) and f == 0 and i == index]
    assert parse_link_events(datagram, index) == expected

    # Truncate it anywhere and overwrite a few bytes with anything: skipped, never an exception.
    mangled = bytearray(datagram[: data.draw(st.integers(0, len(datagram)), label="cut")])
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        if mangled:
            pos = data.draw(st.integers(0, len(mangled) - 1), label="pos")
            mangled[pos] = data.draw(st.integers(0, 255), label="byte")
    for event in parse_link_events(bytes(mangled), index):
        assert event.index == index


def test_helpers_for_a_missing_link() -> None:
    # No privileges needed: these names and indexes do not exist (or are invalid).
    assert link_index("fz-no-such-if") is None
    assert link_index("x" * 20) is None
    assert link_index("") is None
    with pytest.raises(OSError):
        link_mtu("fz-no-such-if")
    with pytest.raises(OSError):
        link_mtu("bad/name")
    assert query_link(2**31 - 7) is None
    assert query_link(0) is None
    assert query_link(-1) is None


def test_helpers_for_loopback() -> None:
    index = link_index("lo")
    assert index is not None
    state = query_link(index)
    assert state is not None
    assert state.ifname == "lo"
    assert state.mtu == link_mtu("lo")


# -- against the kernel, in a private namespace ---------------------------------------------------
def _unavailable() -> str | None:
    reason = netns_unavailable_reason(need_wireguard=False)
    if reason is None and not (shutil.which("unshare") and shutil.which("nsenter")):
        reason = "needs util-linux's unshare and nsenter"
    return reason


class NsChild:
    """A Python child in a network namespace of its own, and `ip` commands inside that namespace."""

    def __init__(self, code: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": ROOT}
        self.proc = subprocess.Popen(
            ["unshare", "--net", sys.executable, "-u", "-c", code, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
            env=env, start_new_session=True)

    def line(self, timeout: float = 10) -> str:
        return expect_line(self.proc, timeout)

    def ip(self, *args: str) -> None:
        # unshare execs Python without forking: the child's pid names the namespace.
        assert self.proc.poll() is None, "the namespace died with its process"
        subprocess.run(["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "ip", *args],
                       check=True, capture_output=True, timeout=10)

    def finish(self, timeout: float = 10) -> str:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err.decode(errors="replace")
        return out.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def ns_child() -> Iterator[Callable[..., NsChild]]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    children: list[NsChild] = []

    def start(code: str, *args: str) -> NsChild:
        child = NsChild(code, *args)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.stop()


def _name() -> str:
    return f"fzlw{secrets.token_hex(3)}"  # unique per run, 10 characters


WATCH = textwrap.dedent(
    """
    import sys, time, trio
    from fz_trio.shell.tun import open_tun
    from fz_trio.shell.link_watch import link_index, link_mtu, watch_link

    name = sys.argv[1]
    dev = open_tun(name)
    index = link_index(name)
    print("OPEN", index, link_mtu(name))

    def on_mtu(mtu):
        print("MTU", mtu, link_mtu(name))

    async def main():
        async with trio.open_nursery() as nursery:
            first = await nursery.start(watch_link, index, on_mtu)
            print("STARTED", first)
        print("GONE", link_index(name))

    trio.run(main)
    dev.close()
    """
)


def test_follows_mtu_changes_and_returns_when_deleted(ns_child: Callable[..., NsChild]) -> None:
    name = _name()
    child = ns_child(WATCH, name)
    index = int(child.line().split()[1])
    assert index > 0
    assert child.line() == "MTU 1500 1500"  # the current MTU, reported once at the start
    assert child.line() == "STARTED 1500"

    child.ip("link", "set", "dev", name, "mtu", "1300")
    assert child.line() == "MTU 1300 1300"
    # Changes that leave the MTU alone (up, the same MTU again) are not reported.
    child.ip("link", "set", "dev", name, "up")
    child.ip("link", "set", "dev", name, "mtu", "1300")
    child.ip("link", "set", "dev", name, "txqueuelen", "1000")
    child.ip("link", "set", "dev", name, "mtu", "1280")
    assert child.line() == "MTU 1280 1280"

    start = time.monotonic()
    child.ip("link", "del", name)
    assert child.line(timeout=5) == "GONE None"
    assert time.monotonic() - start < 1.0
    assert child.finish() == ""


GONE_BEFORE = textwrap.dedent(
    """
    import subprocess, sys, trio
    from fz_trio.shell.tun import open_tun
    from fz_trio.shell.link_watch import LinkWatch, link_index, link_mtu, query_link, watch_link

    name = sys.argv[1]
    dev = open_tun(name)
    index = link_index(name)
    subprocess.run(["ip", "link", "del", name], check=True)
    assert link_index(name) is None and query_link(index) is None
    try:
        link_mtu(name)
    except OSError as exc:
        print("NO MTU", exc.errno)
    calls = []

    async def main():
        with trio.fail_after(2):
            async with trio.open_nursery() as nursery:
                print("STARTED", await nursery.start(watch_link, index, calls.append))
        print("RETURNED", calls)

    trio.run(main)
    # A second kind of deletion: the last TUN fd closes while the watcher is subscribed.
    dev.close()
    dev = open_tun(name)
    index = link_index(name)
    watch = LinkWatch(index, on_mtu=calls.append)
    print("OPEN", watch.open().ifname)
    dev.close()

    async def main2():
        with trio.fail_after(2):
            await watch.run()
        print("RETURNED", calls, watch.gone)

    trio.run(main2)
    watch.close()
    """
)


def test_deletion_before_the_watcher_starts_is_seen(ns_child: Callable[..., NsChild]) -> None:
    name = _name()
    out = ns_child(GONE_BEFORE, name).finish().splitlines()
    assert out == ["NO MTU 19", "STARTED None", "RETURNED []",  # ENODEV; on_mtu never called
                   f"OPEN {name}", "RETURNED [] True"]


# A receive buffer of a few KiB holds two or three link messages: a burst of MTU changes made
# while the watcher is not reading overflows it, and the kernel drops the rest (ENOBUFS).
OVERRUN = textwrap.dedent(
    """
    import fcntl, json, socket, struct, sys, trio
    from fz_trio.shell.tun import open_tun
    from fz_trio.shell.link_watch import LinkWatch, link_index

    SIOCSIFMTU = 0x8922
    name = sys.argv[1]
    dev = open_tun(name)
    ioctl_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def set_mtu(mtu):
        fcntl.ioctl(ioctl_sock, SIOCSIFMTU, struct.pack("16si20x", name.encode(), mtu))

    def burst():
        for i in range(200):
            set_mtu(1400 + i % 2)

    calls = []
    watch = LinkWatch(link_index(name), on_mtu=calls.append, rcvbuf=1)
    watch.open()
    out = {"rcvbuf": watch._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}
    burst()
    set_mtu(1360)  # dropped: the buffer is full of stale events

    async def main():
        with trio.move_on_after(0.5):
            await watch.run()  # must not return: the link is still there
        out["after_first"] = {"last": calls[-1:], "mtu": watch.mtu, "overruns": watch.overruns,
                              "gone": watch.gone}
        burst()
        dev.close()  # the deletion is dropped too
        with trio.fail_after(2):
            await watch.run()
        out["after_second"] = {"overruns": watch.overruns, "gone": watch.gone}

    trio.run(main)
    watch.close()
    print(json.dumps(out))
    """
)


def test_lost_events_are_recovered_by_a_fresh_lookup(ns_child: Callable[..., NsChild]) -> None:
    out = json.loads(ns_child(OVERRUN, _name()).finish())
    assert out["rcvbuf"] < 16384  # small enough that 200 events cannot fit
    first = out["after_first"]
    # Not an old MTU replayed from the stale queue: the one the link has now.
    assert first == {"last": [1360], "mtu": 1360, "overruns": 1, "gone": False}
    assert out["after_second"] == {"overruns": 2, "gone": True}
