"""Go to the background once start-up has worked: the launch contract's "daemonise when ready".

`wireguard-go wg0` (and so `fz-trio wg0`) creates the interface and its UAPI socket and only then
leaves for the background; the foreground command's exit status says whether start-up worked:
0 once ready, non-zero with the error on stderr otherwise. `-f`/`--foreground` or
`WG_PROCESS_FOREGROUND=1` keeps the process in the foreground (`wants_foreground`).

Python cannot re-execute itself the way wireguard-go does, so we fork, and we fork *before*
`trio.run`: a forked child gets only the calling thread, and a Trio run (its thread cache, its
wakeup fd, its locks) or any other thread does not survive that. `run_detached` refuses to fork
when threads are running or from inside a Trio run.

    parent                              child (the daemon)
    fork ─────────────────────────────► setsid, stdin = /dev/null, [stdout/stderr = log_path]
    read the pipe ...                   main(notifier) → trio.run(...) → notifier.ready()
    "R" → exit 0                        ... keeps running; its exit status is main's return value
    "E message" → print it, exit 1
    EOF → "exited with status N / killed by signal S before it was ready", exit non-zero

The pipe is the only channel, so the parent never hangs: if the child dies, however it dies, the
kernel closes its end and the parent sees EOF. A Python exception in `main` before ready becomes a
one-line message for the parent (the traceback goes to the child's stderr).

Output: the daemon keeps the stdout/stderr it inherited, so its logs go where the command's went
(wireguard-go does the same when LOG_LEVEL is set, and otherwise points them at /dev/null: pass
`log_path=os.devnull` for that). Mind that a caller reading the foreground command's output through
a pipe (`$(fz-trio wg0)`, `subprocess.run(capture_output=True)`) sees EOF only when the daemon
exits, since the daemon still holds the pipe; with `log_path` it does not. The daemon does not
chdir: relative paths given on the command line keep working.

In the child, `main`'s return value becomes the exit status through os._exit after flushing
stdout and stderr: atexit handlers and `finally` blocks of the code that called run_detached
belong to the parent's copy of the program and do not run twice. `main` cleans up after itself
(Trio code does, with context managers).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import NoReturn, Protocol

import trio

__all__ = [
    "DEFAULT_PROG",
    "FOREGROUND_ENV",
    "ForegroundNotifier",
    "PipeNotifier",
    "ReadyNotifier",
    "launch",
    "run_detached",
    "run_foreground",
    "wants_foreground",
]

DEFAULT_PROG = "fz-trio"
FOREGROUND_ENV = "WG_PROCESS_FOREGROUND"

_READY = b"R"
_FAILED = b"E"
# After EOF without "ready", how long the parent waits for the child's exit status. EOF without a
# message means the child is dying; a child that closed its end and lives on is not waited for.
_REAP_TIMEOUT = 5.0


class ReadyNotifier(Protocol):
    """What `main` uses to end the start-up phase: once, with ready() or failed(message)."""

    @property
    def settled(self) -> bool:
        """Whether ready() or failed() was called already."""
        ...

    def ready(self) -> None:
        """Start-up worked (TUN and UAPI socket exist): the foreground command exits 0."""
        ...

    def failed(self, message: str) -> None:
        """Start-up failed: the foreground command prints `prog: message` and exits non-zero.

        `main` then returns a non-zero status itself (in the foreground that status is the exit
        status). Ignored after ready() or a first failed().
        """
        ...


class ForegroundNotifier:
    """The notifier of a process that stays in the foreground: failed() prints the message."""

    def __init__(self, prog: str = DEFAULT_PROG) -> None:
        self.prog = prog
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    def ready(self) -> None:
        self._settled = True

    def failed(self, message: str) -> None:
        if not self._settled:
            self._settled = True
            print(f"{self.prog}: {message}", file=sys.stderr, flush=True)


class PipeNotifier:
    """The daemon's side of the readiness pipe: the first ready()/failed() is sent, then closed.

    Writes never raise: if the parent is gone (EPIPE), nobody is left to tell.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def settled(self) -> bool:
        return self._fd is None

    def ready(self) -> None:
        self._send(_READY)

    def failed(self, message: str) -> None:
        # One line: the parent prints it after "prog: ".
        line = " ".join(message.split()) or "start-up failed"
        self._send(_FAILED + line.encode("utf-8", errors="replace"))

    def _send(self, data: bytes) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            pass
        finally:
            os.close(fd)


def wants_foreground(flag: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to stay in the foreground: `-f`/`--foreground` given, or WG_PROCESS_FOREGROUND=1."""
    env = os.environ if environ is None else environ
    return flag or env.get(FOREGROUND_ENV) == "1"


def run_foreground(main: Callable[[ReadyNotifier], int], *, prog: str = DEFAULT_PROG) -> int:
    """Run `main` in this process with a ForegroundNotifier; its return value is the status."""
    return main(ForegroundNotifier(prog))


def launch(
    main: Callable[[ReadyNotifier], int],
    *,
    foreground: bool,
    log_path: str | os.PathLike[str] | None = None,
    prog: str = DEFAULT_PROG,
) -> int:
    """run_foreground or run_detached, as `foreground` says; the status for the command's exit."""
    if foreground:
        return run_foreground(main, prog=prog)
    return run_detached(main, log_path=log_path, prog=prog)


def run_detached(
    main: Callable[[ReadyNotifier], int],
    *,
    log_path: str | os.PathLike[str] | None = None,
    prog: str = DEFAULT_PROG,
) -> int:
    """Fork; run `main(notifier)` in the child, in a session of its own; return in the parent.

    The parent returns 0 once the child called `notifier.ready()`, and otherwise a non-zero status
    after printing why to stderr (`prog: ...`): the child's failed() message, its exception, or
    its exit status or signal before it was ready. The caller exits with that status at once.
    The child never returns from here: it exits with `main`'s return value.

    `log_path`, when given, receives the daemon's stdout and stderr (opened for appending before
    `main` runs); otherwise the daemon keeps the ones it inherited. Must be called before
    `trio.run` and before any thread is started; raises RuntimeError otherwise.
    """
    if trio.lowlevel.in_trio_run():
        raise RuntimeError("run_detached() must be called before trio.run(): fork is unsafe in it")
    if threading.active_count() > 1:
        raise RuntimeError(
            "run_detached() must be called before any thread is started: fork is unsafe with "
            f"threads ({', '.join(t.name for t in threading.enumerate())})"
        )
    log_fd: int | None = None
    if log_path is not None:
        # Opened here, so that a bad path fails in the foreground with a plain error.
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            print(f"{prog}: cannot open log file {os.fspath(log_path)!r}: {exc.strerror}",
                  file=sys.stderr, flush=True)
            return 1
    # Buffered output would otherwise be written twice, once by each process.
    _flush_std()
    read_fd, write_fd = os.pipe()  # both close-on-exec: programs the daemon runs do not hold it
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (read_fd, write_fd, log_fd):
            if fd is not None:
                os.close(fd)
        print(f"{prog}: cannot fork: {exc.strerror}", file=sys.stderr, flush=True)
        return 1
    if pid == 0:
        os.close(read_fd)
        _child(main, write_fd, log_fd)  # never returns
    os.close(write_fd)
    if log_fd is not None:
        os.close(log_fd)
    return _parent(pid, read_fd, prog)


# -- the two sides ---------------------------------------------------------------------------------
def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _child(main: Callable[[ReadyNotifier], int], write_fd: int, log_fd: int | None) -> NoReturn:
    code = 1
    try:
        notifier = PipeNotifier(write_fd)
        try:
            # A session of our own: no controlling terminal, so no SIGHUP when it closes, and the
            # terminal's Ctrl-C reaches only the foreground command.
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            if log_fd is not None:
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                os.close(log_fd)
            code = main(notifier)
        except SystemExit as exc:
            code = _exit_status(exc.code)
        except BaseException as exc:  # noqa: BLE001 - the parent must hear about any exception
            # The traceback first: the parent's one-line summary is then the last line a user
            # sees on a shared terminal.
            traceback.print_exc()
            _flush_std()
            notifier.failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            code = 1
        else:
            if not isinstance(code, int) or not 0 <= code <= 255:
                print(f"run_detached: main returned {code!r}, not an exit status",
                      file=sys.stderr)
                code = 1
    finally:
        _flush_std()
        os._exit(code)


def _exit_status(code: object) -> int:
    # The same mapping as the interpreter's for SystemExit: None is 0, an int itself, else 1.
    if code is None:
        return 0
    if isinstance(code, int) and 0 <= code <= 255:
        return code
    if not isinstance(code, int):
        print(code, file=sys.stderr)
    return 1


def _parent(pid: int, read_fd: int, prog: str) -> int:
    data = b""
    try:
        while True:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            data += chunk
            if data.startswith(_READY):
                return 0  # ready: do not wait for EOF, the daemon keeps running
    except KeyboardInterrupt:
        # Ctrl-C reaches only us (the child has its own session): do not leave a half-started
        # daemon behind.
        _terminate(pid)
        print(f"{prog}: interrupted before the background process was ready", file=sys.stderr,
              flush=True)
        return 130
    finally:
        os.close(read_fd)

    if data.startswith(_FAILED):
        message = data[len(_FAILED) :].decode("utf-8", errors="replace") or "start-up failed"
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
        # The child exits by itself after failed(); its status would say nothing more, and a child
        # that lingers must not make the foreground command hang.
        _reap(pid, _REAP_TIMEOUT)
        return 1

    status = _reap(pid, _REAP_TIMEOUT)
    if status is None:
        print(f"{prog}: the background process closed its start-up pipe without being ready",
              file=sys.stderr, flush=True)
        return 1
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        print(f"{prog}: the background process was killed by signal {_signame(sig)} "
              "before it was ready", file=sys.stderr, flush=True)
        return 128 + sig
    code = os.waitstatus_to_exitcode(status)
    print(f"{prog}: the background process exited with status {code} before it was ready",
          file=sys.stderr, flush=True)
    return code if code > 0 else 1


def _reap(pid: int, timeout: float) -> int | None:
    """The child's wait status once it exits, or None if it still runs after `timeout` seconds.

    Polled: the only time we get here is right after EOF on the pipe, which a dying child causes a
    moment before it becomes waitable.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _reap(pid, 2.0) is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _reap(pid, 2.0)


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)
