"""Daemonising once ready: the parent's exit status, the child's session, every way start-up fails.

Each case runs a small launcher script (`run_detached` around a scripted `main`) as a subprocess.
This test process makes itself a child subreaper for the duration of a test, so a daemon whose
launcher has exited becomes *our* child: we can check that it was re-parented, kill it and reap it
(this machine's PID 1 reaps nothing). Every daemon is killed and reaped even when a test fails.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fz_trio.lab.testnet import wait_for
from fz_trio.shell.daemon import (
    ForegroundNotifier,
    PipeNotifier,
    ReadyNotifier,
    launch,
    run_detached,
    wants_foreground,
)

ROOT = str(Path(__file__).resolve().parents[2])
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37

LAUNCHER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import trio
    from fz_trio.shell.daemon import run_detached

    scenario, tmp = sys.argv[1], Path(sys.argv[2])
    log_path = sys.argv[3] if len(sys.argv) > 3 else None

    def write(name, text):
        (tmp / (name + ".new")).write_text(text)
        os.replace(tmp / (name + ".new"), tmp / name)  # the test polls: never a half-written file

    async def serve(notifier):
        await trio.sleep(0.3)  # "creating the interface"
        write("ready-at", repr(time.monotonic()))
        notifier.ready()
        notifier.ready()  # idempotent
        notifier.failed("too late to fail")  # ignored after ready
        print("daemon output after ready", flush=True)
        while not (tmp / "stop").exists():
            await trio.sleep(0.02)
        write("stopped", "yes")
        return 0

    def main(notifier):
        write("pid", f"{os.getpid()} {os.getsid(0)} {int(sys.stdin.read() == '')}")
        if scenario == "ready":
            return trio.run(serve, notifier)
        if scenario == "fail":
            notifier.failed("cannot create TUN device 'wg9': boom\\n(second line)")
            return 2
        if scenario == "crash":
            raise ValueError("kaboom")
        if scenario == "exit3":
            sys.exit(3)
        if scenario == "return0":
            return 0
        if scenario == "hang":
            while True:
                time.sleep(1)
        raise AssertionError(scenario)

    print("launcher output before the fork", flush=True)
    sys.exit(run_detached(main, log_path=log_path))
    """
)


def _is_our_child(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """Become a subreaper; kill and reap every daemon pid the test appends to the list."""
    libc = ctypes.CDLL(None, use_errno=True)
    before = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            # Only a pid that is still our unreaped child: it cannot have been reused.
            if _is_our_child(pid):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, before.value, 0, 0, 0)


class Launch:
    """One launcher run; its stdout/stderr go to files, which a daemon may keep holding."""

    def __init__(self, tmp: Path, scenario: str, *extra: str) -> None:
        self.tmp = tmp
        self.out_path, self.err_path = tmp / "stdout", tmp / "stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, scenario, str(tmp), *extra],
                stdin=subprocess.PIPE, stdout=out, stderr=err,
                env={**os.environ, "PYTHONPATH": ROOT})
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the launcher's stdin is at EOF; the daemon's must be /dev/null

    def wait(self, timeout: float = 10) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def daemon(self, timeout: float = 10) -> tuple[int, int, bool]:
        """(pid, sid, stdin-at-eof) the daemon wrote first thing in main."""
        path = self.tmp / "pid"
        wait_for(path.exists, timeout, what="the daemon's pid file")
        pid, sid, eof = (int(x) for x in path.read_text().split())
        return pid, sid, bool(eof)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_parent_exits_0_once_ready_and_the_daemon_runs_on(tmp_path: Path,
                                                          daemons: list[int]) -> None:
    run = Launch(tmp_path, "ready")
    pid, sid, stdin_eof = run.daemon()
    daemons.append(pid)
    assert run.wait() == 0
    elapsed = time.monotonic() - run.started
    # Only after ready(): the daemon wrote its marker just before calling it, 0.3 s in.
    assert (tmp_path / "ready-at").exists()
    assert elapsed >= 0.3
    assert run.stderr == ""

    # Still running, in a session (and process group) of its own, re-parented to us.
    assert _state(pid) in "RS"
    assert sid == pid and os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert sid != os.getsid(0)
    assert _ppid(pid) == os.getpid()
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert stdin_eof
    assert os.readlink(f"/proc/{pid}/fd/2") == str(run.err_path)  # logs go where they went

    (tmp_path / "stop").touch()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "stopped").read_text() == "yes"
    # Written once, before the fork, although two processes flushed their buffers afterwards.
    assert run.out_path.read_text() == ("launcher output before the fork\n"
                                        "daemon output after ready\n")
    assert run.stderr == ""


def test_failure_before_ready_is_the_parents_error(tmp_path: Path, daemons: list[int]) -> None:
    run = Launch(tmp_path, "fail")
    daemons.append(run.daemon()[0])
    assert run.wait() == 1
    assert run.stderr == "fz-trio: cannot create TUN device 'wg9': boom (second line)\n"
    assert time.monotonic() - run.started < 5


def test_an_exception_before_ready_is_one_line_for_the_parent(tmp_path: Path,
                                                               daemons: list[int]) -> None:
    run = Launch(tmp_path, "crash")
    daemons.append(run.daemon()[0])
    assert run.wait() == 1
    lines = run.stderr.splitlines()
    # The child's traceback for the details, then the parent's summary as the last line.
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-2:] == ["ValueError: kaboom", "fz-trio: ValueError: kaboom"]


@pytest.mark.parametrize("scenario, status, message", [
    ("exit3", 3, "exited with status 3 before it was ready"),
    ("return0", 1, "exited with status 0 before it was ready"),
])
def test_exiting_before_ready_fails(tmp_path: Path, daemons: list[int], scenario: str,
                                    status: int, message: str) -> None:
    run = Launch(tmp_path, scenario)
    daemons.append(run.daemon()[0])
    assert run.wait() == status
    assert run.stderr == f"fz-trio: the background process {message}\n"


def test_a_daemon_killed_before_ready_fails_the_parent_promptly(tmp_path: Path,
                                                                daemons: list[int]) -> None:
    run = Launch(tmp_path, "hang")
    pid = run.daemon()[0]
    daemons.append(pid)
    assert run.proc.poll() is None  # the parent is still waiting for ready
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    assert run.wait(5) == 128 + signal.SIGKILL
    assert time.monotonic() - killed < 2
    assert run.stderr == ("fz-trio: the background process was killed by signal SIGKILL before "
                          "it was ready\n")
    assert not _is_our_child(pid)  # the launcher reaped it


@pytest.mark.xfail(strict=False, reason=(
    "flaky on a loaded 2-core CI run (2026-12-03): once the launcher did not exit within 10 s of "
    "SIGINT; cause not found yet (see issue 12's closing note)"))
def test_ctrl_c_in_the_parent_stops_the_starting_daemon(tmp_path: Path,
                                                        daemons: list[int]) -> None:
    run = Launch(tmp_path, "hang")
    pid = run.daemon()[0]
    daemons.append(pid)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(10) == 130
    assert "interrupted before the background process was ready" in run.stderr
    assert not _is_our_child(pid)  # terminated and reaped by the launcher
    assert not Path(f"/proc/{pid}").exists()


def test_with_a_log_file_a_captured_launch_does_not_wait_for_the_daemon(
        tmp_path: Path, daemons: list[int]) -> None:
    log = tmp_path / "daemon.log"
    # Pipes: without log_path the daemon would hold them and communicate() would wait for it.
    cp = subprocess.run([sys.executable, "-c", LAUNCHER, "ready", str(tmp_path), str(log)],
                        capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                        env={**os.environ, "PYTHONPATH": ROOT})
    pid = int((tmp_path / "pid").read_text().split()[0])
    daemons.append(pid)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "launcher output before the fork\n"
    assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2") == str(log)
    (tmp_path / "stop").touch()
    os.waitpid(pid, 0)
    assert log.read_text() == "daemon output after ready\n"


def test_an_unusable_log_file_fails_before_the_fork(tmp_path: Path, daemons: list[int]) -> None:
    run = Launch(tmp_path, "ready", str(tmp_path / "no" / "such" / "dir" / "log"))
    assert run.wait() == 1
    assert "fz-trio: cannot open log file" in run.stderr
    assert not (tmp_path / "pid").exists()


# -- in this process: never forks -----------------------------------------------------------------
def _must_not_run(notifier: ReadyNotifier) -> int:
    os._exit(99)  # only reached in a forked child if a guard failed: the parent then returns 1


def test_refuses_to_fork_with_threads_running() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="busy-thread")
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="before any thread.*busy-thread"):
            run_detached(_must_not_run)
    finally:
        stop.set()
        thread.join()


async def test_refuses_to_fork_inside_trio() -> None:
    with pytest.raises(RuntimeError, match="before trio.run"):
        run_detached(_must_not_run)


def test_foreground_runs_main_here(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[int, bool]] = []

    def main(notifier: ReadyNotifier) -> int:
        assert not notifier.settled
        notifier.failed("cannot open /dev/net/tun")
        notifier.failed("ignored: only the first failure is printed")
        seen.append((os.getpid(), notifier.settled))
        return 7

    assert launch(main, foreground=True) == 7
    assert seen == [(os.getpid(), True)]
    assert capsys.readouterr().err == "fz-trio: cannot open /dev/net/tun\n"

    quiet = ForegroundNotifier(prog="x")
    quiet.ready()
    quiet.failed("after ready: nothing printed")
    assert quiet.settled
    assert capsys.readouterr().err == ""


def test_pipe_notifier_sends_once_and_never_raises() -> None:
    r, w = os.pipe()
    notifier = PipeNotifier(w)
    notifier.failed("  two\nlines\t here ")
    notifier.ready()
    assert notifier.settled
    assert os.read(r, 100) == b"Etwo lines here"
    assert os.read(r, 100) == b""  # closed: EOF
    os.close(r)

    r, w = os.pipe()
    os.close(r)  # the parent is gone: EPIPE is swallowed
    PipeNotifier(w).ready()


@pytest.mark.parametrize("flag, env, expected", [
    (False, {}, False),
    (True, {}, True),
    (False, {"WG_PROCESS_FOREGROUND": "1"}, True),
    (False, {"WG_PROCESS_FOREGROUND": "0"}, False),
    (False, {"WG_PROCESS_FOREGROUND": ""}, False),
])
def test_wants_foreground(flag: bool, env: dict[str, str], expected: bool) -> None:
    assert wants_foreground(flag, env) is expected
