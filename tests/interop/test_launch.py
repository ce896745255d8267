"""The userspace launch contract, with real processes: `fz-trio IFNAME` comes back once the
interface and its UAPI socket exist (status 0), lives on in the background, and exits — taking
its socket with it — when the interface is deleted or on SIGTERM; `-f` and
WG_PROCESS_FOREGROUND=1 keep it in the foreground; start-up failures are a non-zero status with
one line on stderr."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fz_trio.lab.testnet import TestNet, wait_for
from fz_trio.uapi import socket_path

pytestmark = pytest.mark.netns

FZ_TRIO = [sys.executable, "-m", "fz_trio.cli"]


@pytest.fixture
def ns(testnet: TestNet) -> str:
    return testnet.namespaces[0]


def unique_name() -> str:
    return "fzl" + secrets.token_hex(4)


def launch(ns: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *FZ_TRIO, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def pid_serving(name: str) -> int | None:
    """The pid of the process whose command line is `... fz_trio.cli ... name`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fz_trio.cli" in argv and name.encode() in argv:
            return int(proc.name)
    return None


def link_exists(ns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", ns, "link", "show", name], capture_output=True
                          ).returncode == 0


@pytest.fixture
def name() -> Iterator[str]:
    name = unique_name()
    yield name
    pid = pid_serving(name)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def test_ready_on_return_then_gone_with_its_link(ns: str, name: str) -> None:
    started = launch(ns, name)
    assert started.returncode == 0, started.stderr
    # Ready means ready: both exist the moment the command returns.
    assert os.path.exists(socket_path(name))
    assert link_exists(ns, name)
    pid = pid_serving(name)
    assert pid is not None and os.getsid(pid) == pid  # its own session, in the background
    subprocess.run(["ip", "-n", ns, "link", "del", name], check=True)
    wait_for(lambda: pid_serving(name) is None, timeout=5, what="fz-trio to exit")
    assert not os.path.exists(socket_path(name))


def test_sigterm_takes_it_down(ns: str, name: str) -> None:
    assert launch(ns, name).returncode == 0
    pid = pid_serving(name)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: pid_serving(name) is None, timeout=5, what="fz-trio to exit")
    assert not os.path.exists(socket_path(name))
    assert not link_exists(ns, name)


@pytest.mark.parametrize("how", ["-f", "env"])
def test_foreground_stays(ns: str, name: str, how: str) -> None:
    env = dict(os.environ)
    args = [name]
    if how == "-f":
        args = ["-f", name]
    else:
        env["WG_PROCESS_FOREGROUND"] = "1"
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *FZ_TRIO, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(socket_path(name)), timeout=15, what="the socket")
        time.sleep(0.3)
        assert proc.poll() is None  # still in the foreground
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert not os.path.exists(socket_path(name))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_start_up_failures_are_a_status_and_a_line(ns: str, name: str) -> None:
    bad = launch(ns, "bad/name")
    assert bad.returncode != 0 and "fz-trio:" in bad.stderr
    assert launch(ns, name).returncode == 0
    again = launch(ns, name)  # the name is taken: by the device and by the socket
    assert again.returncode != 0
    assert "exists" in again.stderr or "in use" in again.stderr, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert pid_serving(name) is not None  # the first one is unharmed
    assert os.path.exists(socket_path(name))
