"""The journal of what fz-trio changed on the host, kept on disk so that a crash can be undone.

Everything `fz-trio up` changes outside its own TUN device and sockets (policy rules, routes in
other tables, sysctls, DNS, nftables tables, hooks that need a PostDown) is written here *before*
it is changed, with the way to undo it. Addresses and routes on the TUN device need no entry of
their own in a crash: the kernel removes them with the device when the process dies.

    /run/fz-trio/IFACE.NETNS.json   {"pid": ..., "started": ..., "netns": ..., "changes": [...]}

NETNS is the inode of the process's network namespace: `ip netns exec` runs fz-trio instances
for the same interface name in different namespaces, and each undoes only its own. `started` is
the process's start time (in clock ticks since boot, from /proc), so a recycled pid is not taken
for the owner.

On start, a journal left by a dead process is undone first (`claim`); a live owner means the
interface is taken (StateError). `fz-trio down IFACE` with no process left undoes it too
(`undo_stale`). A change is undone by one of three generic actions, so undoing needs none of the
modules that made the change:
  - "netlink": a pyroute2 IPRoute call, e.g. `rule("del", **spec)`;
  - "file": write `old` back to `path`, only if it still holds `new` (someone else may have
    changed it since: then it is left alone, with a warning);
  - "command": run `argv` (optionally with `stdin`), e.g. `nft delete table ip fz-trio-wg0`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "STATE_DIR",
    "Change",
    "HostState",
    "StateError",
    "command_change",
    "file_change",
    "netlink_change",
    "undo_stale",
]

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/fz-trio")
COMMAND_TIMEOUT = 15.0

# Errors that mean "what we wanted to undo is already gone" (a rule deleted by hand, a route that
# went with its device).
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL, errno.ENXIO})


class StateError(Exception):
    """The journal cannot be claimed or written; the message says why."""


@attrs.frozen
class Change:
    """One host change and how to undo it. `what` is for people ("rule not fwmark 51820 ...")."""

    what: str
    undo: str  # "netlink" | "file" | "command"
    data: dict[str, Any] = attrs.field(factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"what": self.what, "undo": self.undo, "data": self.data}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Change:
        return cls(str(obj["what"]), str(obj["undo"]), dict(obj.get("data") or {}))


def netlink_change(what: str, kind: str, spec: dict[str, Any], cmd: str = "del") -> Change:
    """Undone by `IPRoute().<kind>(cmd, **spec)`; spec must be plain JSON values."""
    return Change(what, "netlink", {"kind": kind, "cmd": cmd, "spec": spec})


def file_change(what: str, path: str | os.PathLike[str], old: str, new: str) -> Change:
    """Undone by writing `old` back to `path`, if it still reads `new`."""
    return Change(what, "file", {"path": os.fspath(path), "old": old, "new": new})


def command_change(what: str, argv: Sequence[str], stdin: str | None = None,
                   env: dict[str, str] | None = None) -> Change:
    """Undone by running `argv` (a non-zero exit is a failed undo)."""
    data: dict[str, Any] = {"argv": list(argv)}
    if stdin is not None:
        data["stdin"] = stdin
    if env:
        data["env"] = env
    return Change(what, "command", data)


def _netns_id() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 overall


def _alive(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    return _start_time(pid) == owner.get("started")


def journal_path(ifname: str, directory: Path = STATE_DIR) -> Path:
    return directory / f"{ifname}.{_netns_id()}.json"


class HostState:
    """The journal of one interface in this network namespace, owned by this process."""

    def __init__(self, ifname: str, directory: Path = STATE_DIR) -> None:
        self.ifname = ifname
        self.path = journal_path(ifname, directory)
        self.changes: list[Change] = []
        self._claimed = False

    # -- claiming ------------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the journal: undo what a dead owner left, refuse a live one."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"cannot create {self.path.parent}: {e.strerror}") from None
        stale = _read(self.path)
        if stale is not None:
            if _alive(stale):
                raise StateError(f"{self.ifname} is in use: fz-trio pid {stale['pid']} runs it")
            _undo_journal(self.ifname, stale, self.path)
        self._claimed = True
        self._write()

    # -- recording -----------------------------------------------------------------------------
    def record(self, change: Change) -> None:
        """Write `change` down before it is made (a crash after this line can still undo it)."""
        self.changes.append(change)
        self._write()

    def forget(self, change: Change) -> None:
        """It was not made after all (it was already in place), or it was undone."""
        for i in range(len(self.changes) - 1, -1, -1):
            if self.changes[i] == change:
                del self.changes[i]
                break
        self._write()

    # -- undoing -------------------------------------------------------------------------------
    def undo(self, change: Change) -> str | None:
        """Undo one recorded change now; returns the failure (also logged) or None."""
        failure = undo_change(change)
        self.forget(change)
        return failure

    def undo_all(self) -> list[str]:
        """Undo every recorded change, newest first; returns the failures (each logged)."""
        failures = []
        while self.changes:
            failure = self.undo(self.changes[-1])
            if failure is not None:
                failures.append(failure)
        return failures

    def release(self) -> None:
        """Remove the journal (after undo_all): nothing of ours is left on the host."""
        if not self._claimed:
            return
        self._claimed = False
        if self.changes:
            log.warning("%s: %d host change(s) left in %s", self.ifname, len(self.changes),
                        self.path)
            return  # keep them: the next start or `fz-trio down` tries again
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _write(self) -> None:
        if not self._claimed:
            raise StateError(f"{self.ifname}: the host-state journal was not claimed")
        body = {"interface": self.ifname, "pid": os.getpid(), "started": _start_time(os.getpid()),
                "netns": _netns_id(), "changes": [c.as_json() for c in self.changes]}
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise StateError(f"cannot write {self.path}: {e.strerror}") from None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from None
    try:
        body = json.loads(text)
        if not isinstance(body, dict) or not isinstance(body.get("changes"), list):
            raise ValueError("not a journal")
        return body
    except ValueError:
        log.warning("%s is not a journal fz-trio can read; moving it aside", path)
        path.replace(path.with_suffix(".corrupt"))
        return None


def _undo_journal(ifname: str, body: dict[str, Any], path: Path) -> None:
    changes = [Change.from_json(c) for c in body["changes"]]
    if changes:
        log.warning("%s: undoing %d host change(s) left by fz-trio pid %s, which is gone",
                    ifname, len(changes), body.get("pid"))
    failures = [f for f in (undo_change(c) for c in reversed(changes)) if f is not None]
    if failures:
        log.warning("%s: %d of them could not be undone (see above)", ifname, len(failures))
    path.unlink(missing_ok=True)


def undo_stale(ifname: str, directory: Path = STATE_DIR) -> bool | None:
    """`fz-trio down` for an interface whose process is gone: undo its journal. None: there is
    none; True: undone; False: its owner is alive (ask it to stop instead)."""
    path = journal_path(ifname, directory)
    body = _read(path)
    if body is None:
        return None
    if _alive(body):
        return False
    _undo_journal(ifname, body, path)
    return True


def stale_journals(directory: Path = STATE_DIR) -> Iterator[Path]:
    """Journals in this network namespace (for tests and `fz-trio show`)."""
    suffix = f".{_netns_id()}.json"
    if directory.is_dir():
        yield from (p for p in directory.iterdir() if p.name.endswith(suffix))


def undo_change(change: Change, ipr: Any = None) -> str | None:
    """Undo one change; never raises for a failed undo: returns the failure, logged. `ipr`, an
    open pyroute2 IPRoute, serves netlink undos (a caller undoing many passes one; else each
    opens its own)."""
    try:
        if change.undo == "netlink":
            _undo_netlink(change.data, ipr)
        elif change.undo == "file":
            _undo_file(change.data)
        elif change.undo == "command":
            _undo_command(change.data)
        else:
            raise ValueError(f"unknown undo action {change.undo!r}")
    except _Gone as e:
        log.debug("undoing %s: already gone (%s)", change.what, e)
        return None
    except Exception as e:  # noqa: BLE001 - one failed undo must not stop the others
        message = f"undoing {change.what} failed: {e}"
        log.warning("%s", message)
        return message
    log.debug("undid %s", change.what)
    return None


class _Gone(Exception):
    pass


def _undo_netlink(data: dict[str, Any], ipr: Any) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if ipr is None:
        with IPRoute() as own:
            _undo_netlink(data, own)
        return
    try:
        getattr(ipr, data["kind"])(data.get("cmd", "del"), **data["spec"])
    except NetlinkError as e:
        if e.code in GONE_ERRNOS:
            raise _Gone(os.strerror(e.code)) from None
        raise OSError(e.code, os.strerror(e.code)) from None


def _undo_file(data: dict[str, Any]) -> None:
    path = Path(data["path"])
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    if current != data["new"]:
        log.warning("%s changed since fz-trio wrote it; leaving it as it is", path)
        return
    path.write_text(data["old"])


def _undo_command(data: dict[str, Any]) -> None:
    env = os.environ | data["env"] if data.get("env") else None
    result = subprocess.run(data["argv"], input=data.get("stdin"), capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT, env=env, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise OSError(f"`{' '.join(data['argv'])}` exited {result.returncode}: {tail[0][:200]}")
