"""The interface's `DNS =` servers and search domains, handed to the host's resolver and taken back.

Four modes (docs/dns.md), chosen by `choose_mode` unless `--dns-mode` names one:
  - systemd-resolved: per-link servers and domains with resolvectl; in full-tunnel mode the
    link also gets the `~.` routing domain and the default route, so every query goes through
    the tunnel. Undone by `resolvectl revert IFACE`.
  - resolvconf: what wg-quick does, `resolvconf -a IFACE -m 0 -x` with resolv.conf lines on
    stdin. Undone by `resolvconf -d IFACE -f`.
  - file: /etc/resolv.conf rewritten in place, the old content kept in the host-state journal
    and written back unless someone changed the file since.
  - off: nothing.

Every change is recorded in the HostState journal before it is made, so whatever ends fz-trio
(an exception, a signal, `kill -9` followed by the next start or `fz-trio down IFACE`) gives the
host its resolver back. When applying fails part-way, what was done is undone before DnsError
is raised: DNS is either fully applied or not at all.

Blocking (subprocesses, file IO): the app calls it through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from fz_trio.ifname import check_interface_name
from fz_trio.shell.host_state import Change, HostState, command_change, file_change
from fz_trio.values import IPAddress, check_domain

__all__ = [
    "RESOLV_CONF",
    "DnsError",
    "DnsMode",
    "apply_dns",
    "choose_mode",
    "file_content",
    "resolvconf_input",
    "resolved_commands",
]

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_RUN_DIR = Path("/run/systemd/resolve")
NAMED_NETNS_DIR = Path("/run/netns")  # `ip netns add` binds its namespaces here
# Debian's resolvconf orders its records by this file; wg-quick names its record after the first
# plain "prefix*" pattern in it (resolvconf_iface_prefix) so that the tunnel's servers come first.
INTERFACE_ORDER = Path("/etc/resolvconf/interface-order")
COMMAND_TIMEOUT = 15.0
# glibc reads at most this many nameserver lines (MAXNS); the others are ignored.
GLIBC_MAXNS = 3
# Where resolv.conf points when another program owns it: writing through the link works until
# that program rewrites its file.
MANAGED_TARGETS = {
    "/run/systemd/resolve/": "systemd-resolved",
    "/run/resolvconf/": "resolvconf",
    "/etc/resolvconf/run/": "resolvconf",
    "/run/NetworkManager/": "NetworkManager",
}


class DnsMode(enum.Enum):
    RESOLVED = "systemd-resolved"
    RESOLVCONF = "resolvconf"
    FILE = "file"
    OFF = "off"


class DnsError(Exception):
    """DNS could not be applied; the one-line message says what failed. Nothing is left applied."""


# -- choosing ------------------------------------------------------------------------------------
def choose_mode(requested: DnsMode | None = None) -> tuple[DnsMode, str]:
    """The mode to use and why (for the log): `requested` as it is, else the first of
    systemd-resolved, resolvconf and file that this host (and network namespace) can use."""
    if requested is not None:
        mode, why = requested, "requested with --dns-mode"
    else:
        mode, why = _auto_mode()
    log.info("DNS mode %s: %s", mode.value, why)
    return mode, why


def _auto_mode() -> tuple[DnsMode, str]:
    resolved_missing = _resolved_unusable_reason()
    if resolved_missing is None:
        return DnsMode.RESOLVED, "systemd-resolved is running (resolvectl answers)"
    resolvconf = shutil.which("resolvconf")
    if resolvconf is not None:
        if Path(resolvconf).resolve().name == "resolvectl":
            # systemd's resolvconf compatibility: it only talks to systemd-resolved.
            why = f"{resolvconf} is systemd-resolved's, and {resolved_missing}"
        else:
            return DnsMode.RESOLVCONF, (f"{resolved_missing}; {resolvconf} is there "
                                        "(wg-quick's way)")
    else:
        why = f"{resolved_missing} and there is no resolvconf"
    return DnsMode.FILE, f"{why}: rewriting {RESOLV_CONF}"


def _resolved_unusable_reason() -> str | None:
    """None when systemd-resolved can take per-link DNS for this network namespace."""
    if not RESOLVED_RUN_DIR.is_dir():
        return f"systemd-resolved is not running ({RESOLVED_RUN_DIR} does not exist)"
    resolvectl = shutil.which("resolvectl")
    if resolvectl is None:
        return "systemd-resolved's resolvectl is not on PATH"
    if not _in_init_netns():
        # /run is shared, resolved's links are not: resolvectl would name a link of the host's.
        return "systemd-resolved serves another network namespace than this one"
    try:
        result = subprocess.run([resolvectl, "status", "--no-pager"], capture_output=True,
                                timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"resolvectl does not answer ({e})"
    if result.returncode != 0:
        return f"systemd-resolved does not answer resolvectl (exit {result.returncode})"
    return None


def _in_init_netns() -> bool:
    try:
        me = os.stat("/proc/self/ns/net")
    except OSError:
        return True  # no /proc: cannot tell, let resolvectl decide
    ours = (me.st_dev, me.st_ino)
    try:
        init = os.stat("/proc/1/ns/net")
        return (init.st_dev, init.st_ino) == ours
    except OSError:
        pass
    # PID 1's namespace is out of sight (a sandbox without ptrace rights): a namespace that
    # `ip netns` named is not it.
    try:
        named = list(NAMED_NETNS_DIR.iterdir())
    except OSError:
        return True
    for path in named:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ours:
            return False
    return True


# -- applying ------------------------------------------------------------------------------------
def apply_dns(state: HostState, ifname: str, servers: Sequence[IPAddress], search: Sequence[str],
              *, mode: DnsMode, full_tunnel: bool) -> list[Change]:
    """Hand `servers` and `search` for `ifname` to the host's resolver in `mode`, each change
    recorded in `state` first (undone by `state.undo_all()`). Returns the changes recorded, so a
    reload can undo just these. Raises DnsError, having undone its own changes."""
    _check(ifname, servers, search)
    if mode is DnsMode.OFF:
        if servers or search:
            log.info("%s: DNS mode off: leaving the resolver alone (DNS = %s not applied)",
                     ifname, ", ".join([*map(str, servers), *search]))
        return []
    if not servers:
        if search:
            # As wg-quick: search domains alone would send lookups nowhere new.
            log.warning("%s: DNS has search domains but no servers; not applied", ifname)
        return []
    done: list[Change] = []
    try:
        if mode is DnsMode.RESOLVED:
            _apply_resolved(state, ifname, servers, search, full_tunnel, done)
        elif mode is DnsMode.RESOLVCONF:
            _apply_resolvconf(state, ifname, servers, search, done)
        else:
            _apply_file(state, ifname, servers, search, full_tunnel, done)
    except Exception:
        for change in reversed(done):
            state.undo(change)
        raise
    log.info("%s: DNS %s via %s%s", ifname,
             " ".join([*map(str, servers), *(f"search {d}" for d in search)]), mode.value,
             " (full tunnel: every query)" if full_tunnel else "")
    return done


def _check(ifname: str, servers: Sequence[IPAddress], search: Sequence[str]) -> None:
    try:
        check_interface_name(ifname)
        for domain in search:
            check_domain(domain)
    except ValueError as e:
        raise DnsError(f"DNS for {ifname!r}: {e}") from None
    for server in servers:
        if not isinstance(server, IPAddress):
            raise DnsError(f"DNS for {ifname}: {server!r} is not an IP address")


def resolved_commands(ifname: str, servers: Sequence[IPAddress], search: Sequence[str],
                      full_tunnel: bool) -> list[list[str]]:
    """The resolvectl calls that give `ifname` its DNS.

    Full tunnel: the `~.` routing domain and the default route make resolved send every query
    through the tunnel. Split tunnel with search domains: no default route, so only names under
    those domains go to the tunnel's servers (split DNS). Split tunnel without domains: resolved
    decides (the link is then one default route among the others)."""
    commands = [["resolvectl", "dns", ifname, *map(str, servers)]]
    domains = [*search, "~."] if full_tunnel else list(search)
    if domains:
        commands.append(["resolvectl", "domain", ifname, *domains])
    if full_tunnel:
        commands.append(["resolvectl", "default-route", ifname, "yes"])
    elif search:
        commands.append(["resolvectl", "default-route", ifname, "no"])
    return commands


def _apply_resolved(state: HostState, ifname: str, servers: Sequence[IPAddress],
                    search: Sequence[str], full_tunnel: bool, done: list[Change]) -> None:
    if not _in_init_netns():
        # resolvectl turns the name into an index here, and resolved would apply it to whichever
        # of its own links has that index.
        raise DnsError("systemd-resolved serves PID 1's network namespace, not this one: use "
                       "--dns-mode resolvconf or file here")
    # After a crash the link is gone with the process, and resolved forgot it: nothing to revert.
    revert = command_change(
        f"systemd-resolved DNS of {ifname}",
        ["sh", "-c", 'ip link show dev "$1" >/dev/null 2>&1 || exit 0; exec resolvectl revert "$1"',
         "fz-trio-dns", ifname])
    state.record(revert)
    done.append(revert)
    for argv in resolved_commands(ifname, servers, search, full_tunnel):
        _run(argv)


def resolvconf_input(servers: Sequence[IPAddress], search: Sequence[str]) -> str:
    """The resolv.conf lines wg-quick pipes to `resolvconf -a`."""
    lines = [f"nameserver {server}" for server in servers]
    if search:
        lines.append("search " + " ".join(search))
    return "".join(f"{line}\n" for line in lines)


def resolvconf_record(ifname: str) -> str:
    """The record name for `ifname`, with Debian resolvconf's interface-order prefix (wg-quick's
    rule: the first line that is a plain `NAME*` pattern gives `NAME.`)."""
    try:
        order = INTERFACE_ORDER.read_text(errors="replace")
    except OSError:
        return ifname
    for line in order.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9-]+)\*", line)
        if match:
            return f"{match[1]}.{ifname}"
    return ifname


def _apply_resolvconf(state: HostState, ifname: str, servers: Sequence[IPAddress],
                      search: Sequence[str], done: list[Change]) -> None:
    record = resolvconf_record(ifname)
    remove = command_change(f"resolvconf record {record}", ["resolvconf", "-d", record, "-f"])
    state.record(remove)
    done.append(remove)
    _run(["resolvconf", "-a", record, "-m", "0", "-x"], stdin=resolvconf_input(servers, search))


def file_content(ifname: str, servers: Sequence[IPAddress], search: Sequence[str],
                 full_tunnel: bool, old: str) -> str:
    """The resolv.conf fz-trio writes. The old file's `options` lines stay (they tune the
    resolver, not where it asks). Full tunnel: only the tunnel's servers, so nothing leaks.
    Split tunnel: the old servers and search domains follow ours, for names the tunnel's servers
    cannot answer (glibc asks the next server on SERVFAIL, REFUSED or no answer)."""
    nameservers = [str(s) for s in servers]
    domains = list(search)
    options = []
    for line in old.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "options":
            options.append(line.strip())
        elif not full_tunnel and words[0] == "nameserver" and len(words) > 1:
            if words[1] not in nameservers:
                nameservers.append(words[1])
        elif not full_tunnel and words[0] in ("search", "domain"):
            # The last search or domain line is the one glibc uses.
            domains = [*search, *(d for d in words[1:] if d not in search)]
    mode = "full tunnel: every query goes through it" if full_tunnel else "split tunnel"
    lines = [f"# Written by fz-trio for {ifname} ({mode}); the previous content comes back when "
             f"{ifname} goes down.",
             *(f"nameserver {s}" for s in nameservers)]
    if domains:
        lines.append("search " + " ".join(domains))
    lines.extend(options)
    return "".join(f"{line}\n" for line in lines)


def _apply_file(state: HostState, ifname: str, servers: Sequence[IPAddress],
                search: Sequence[str], full_tunnel: bool, done: list[Change]) -> None:
    path = _resolv_conf_target()
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = ""  # restored as an empty file, which glibc reads like a missing one
    except (OSError, UnicodeDecodeError) as e:
        raise DnsError(f"cannot read {path}: {_reason(e)}") from None
    new = file_content(ifname, servers, search, full_tunnel, old)
    if sum(line.startswith("nameserver ") for line in new.splitlines()) > GLIBC_MAXNS:
        log.warning("%s: %s lists more than %d nameservers; glibc uses the first %d", ifname,
                    path, GLIBC_MAXNS, GLIBC_MAXNS)
    change = file_change(f"{path} for {ifname}", path, old, new)
    state.record(change)
    try:
        _write_in_place(path, new)
    except OSError as e:
        # Perhaps half written: the journal's undo would not recognise it as ours.
        try:
            _write_in_place(path, old)
        except OSError:
            log.warning("%s may be left half written: %s", path, _reason(e))
        state.forget(change)
        raise DnsError(f"cannot write {path}: {_reason(e)}") from None
    done.append(change)


def _write_in_place(path: Path, text: str) -> None:
    # Never by rename: under `ip netns exec` the file is a bind mount, and a symlinked one must
    # stay the link its owner made.
    with open(path, "w") as f:
        f.write(text)


def _resolv_conf_target() -> Path:
    """/etc/resolv.conf, or the file it links to (with a log line saying whose it is)."""
    if not RESOLV_CONF.is_symlink():
        return RESOLV_CONF
    target = Path(os.path.realpath(RESOLV_CONF))
    owner = next((name for prefix, name in MANAGED_TARGETS.items()
                  if str(target).startswith(prefix)), None)
    if owner is not None:
        hint = {"systemd-resolved": " (--dns-mode systemd-resolved avoids this)",
                "resolvconf": " (--dns-mode resolvconf avoids this)"}.get(owner, "")
        log.warning("%s links to %s, which %s manages: fz-trio writes that file in place, and "
                    "%s may replace it while fz-trio runs%s", RESOLV_CONF, target, owner, owner,
                    hint)
    else:
        log.info("%s links to %s: fz-trio writes that file in place", RESOLV_CONF, target)
    return target


def _run(argv: list[str], stdin: str | None = None) -> None:
    command = " ".join(argv[:3])
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                errors="replace", timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        raise DnsError(f"`{argv[0]}` is not installed (not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise DnsError(f"`{command}` did not finish within {COMMAND_TIMEOUT:g} s") from None
    except OSError as e:
        raise DnsError(f"`{command}` could not run: {_reason(e)}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DnsError(f"`{command}` failed (exit {result.returncode}): {tail[0].strip()[:200]}")


def _reason(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
