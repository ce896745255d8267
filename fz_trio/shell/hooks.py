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
whatever they say). The calls block: hooks are short commands run at start and at exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence

__all__ = ["BASH", "HookError", "expand", "run_hooks"]

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
    env = dict(os.environ, INTERFACE=ifname)
    for command in commands:
        line = expand(command, ifname)
        log.info("[#] %s", line)
        failure = _run(line, env)
        if failure is None:
            continue
        message = f"{kind} command {failure}: {line}"
        if check:
            raise HookError(message)
        log.warning("%s; going on with the rest", message)


def _run(line: str, env: dict[str, str]) -> str | None:
    """None when the command succeeded, else how it failed (for a message)."""
    try:
        status = subprocess.run([*BASH, line], stdin=subprocess.DEVNULL, stdout=_STDERR_FD,
                                env=env, check=False).returncode
    except OSError as e:  # no bash on PATH, or it cannot be executed
        return f"could not start bash ({e.strerror or e})"
    if status == 0:
        return None
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"failed with exit status {status}"
