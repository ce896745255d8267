"""wg-quick's PreUp / PostUp / PreDown / PostDown hooks, run as wg-quick's `execute_hooks` runs
them.

Each command has `%i` replaced by the interface name, is announced as `[#] COMMAND` (wg-quick's
echo, here a log line), and runs in its own bash with the shell options wg-quick's hooks inherit
from wg-quick itself: `set -e -o pipefail` and `shopt -s extglob` — so in `false; echo hi` the
echo never runs and the hook fails, as under wg-quick. `INTERFACE` is set in its environment
(wg-quick's hooks see wg-quick's variable of that name); the rest of the environment is ours.
Its standard output and error go to our standard error, its standard input is /dev/null (a
service has no terminal to read from).

Failure semantics are wg-quick's: a failing PreUp or PostUp stops at that command and raises
`HookError` (the caller takes the interface down again, as wg-quick's exit trap does); a failing
PreDown or PostDown is logged and the remaining commands still run (the interface is going down
whatever they say). `run_hooks` blocks; `run_hooks_async` is the same for a running Trio loop.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence

import trio

__all__ = ["BASH", "HookError", "expand", "run_hooks", "run_hooks_async"]

log = logging.getLogger(__name__)

# What wg-quick's `(eval "$hook")` inherits from wg-quick's own `set -e -o pipefail` and
# `shopt -s extglob`.
BASH = ("bash", "-e", "-o", "pipefail", "-O", "extglob", "-c")

# Where the hooks' output goes: our standard error, the file descriptor (a daemon's fd 2 is its
# log file), not whatever object sys.stderr is at the moment.
_STDERR_FD = 2


class HookError(Exception):
    """A PreUp or PostUp command failed; the message names it and how it ended."""


def expand(command: str, ifname: str) -> str:
    """wg-quick's `${hook//%i/$INTERFACE}`: every `%i`, and nothing else."""
    return command.replace("%i", ifname)


def run_hooks(kind: str, commands: Sequence[str], ifname: str, *, check: bool) -> None:
    """Run `commands` (one `kind` of hook: "PreUp", "PostDown", ...) for `ifname`, in order.

    check=True (PreUp, PostUp): the first failing command raises HookError and the rest do not
    run. check=False (PreDown, PostDown): a failure is logged and the next command runs."""
    env = _environment(ifname)
    for command in commands:
        line = _announce(command, ifname)
        _settle(kind, line, _start_and_wait(line, env), check=check)


async def run_hooks_async(kind: str, commands: Sequence[str], ifname: str, *,
                          check: bool) -> None:
    """`run_hooks` for code on a running Trio loop: the packet loops keep running while a hook
    does (a PostUp that pings through the tunnel needs them), and cancelling the caller
    (SIGTERM) ends the hook too (SIGTERM, then SIGKILL after trio's grace period)."""
    env = _environment(ifname)
    for command in commands:
        line = _announce(command, ifname)
        try:
            done = await trio.run_process([*BASH, line], stdin=subprocess.DEVNULL,
                                          stdout=_STDERR_FD, env=env, check=False)
            outcome = _failure(done.returncode)
        except OSError as e:
            outcome = _cannot_start(e)
        _settle(kind, line, outcome, check=check)


def _environment(ifname: str) -> dict[str, str]:
    return dict(os.environ, INTERFACE=ifname)


def _announce(command: str, ifname: str) -> str:
    line = expand(command, ifname)
    log.info("[#] %s", line)
    return line


def _settle(kind: str, line: str, failure: str | None, *, check: bool) -> None:
    if failure is None:
        return
    message = f"{kind} command {failure}: {line}"
    if check:
        raise HookError(message)
    log.warning("%s; going on with the rest", message)


def _start_and_wait(line: str, env: dict[str, str]) -> str | None:
    try:
        status = subprocess.run([*BASH, line], stdin=subprocess.DEVNULL, stdout=_STDERR_FD,
                                env=env, check=False).returncode
    except OSError as e:
        return _cannot_start(e)
    return _failure(status)


def _cannot_start(error: OSError) -> str:
    # No bash on PATH, or it cannot be executed.
    return f"could not start bash ({error.strerror or error})"


def _failure(status: int) -> str | None:
    """None for success, else how the command ended (for a message)."""
    if status == 0:
        return None
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"failed with exit status {status}"
