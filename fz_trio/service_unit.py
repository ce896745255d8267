"""The `fz-trio@.service` systemd template: `systemctl enable --now fz-trio@wg0` runs
`fz-trio up /etc/wireguard/wg0.conf` as a Type=notify service with only the privilege it needs.

Each sandbox setting was checked against what `fz-trio up` does: it opens /dev/net/tun, talks
netlink (addresses, routes, rules), writes /proc/sys/net/ipv4/conf/all/src_valid_mark (a net
sysctl: CAP_NET_ADMIN is enough), /run/fz-trio and /run/wireguard, and, for DNS and hooks, may
rewrite /etc/resolv.conf or run resolvconf, resolvectl, nft and bash. docs/service.md explains
each line.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["UNIT_NAME", "install_unit", "unit_text"]

UNIT_NAME = "fz-trio@.service"
SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(3)'s test
# What ProtectHome=yes and PrivateTmp=yes hide from the service.
HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
TMPS = (Path("/tmp"), Path("/var/tmp"))


def _executable() -> str:
    """The fz-trio that is running this: its console script when there is one (pipx puts it in
    ~/.local/bin or $PIPX_BIN_DIR), else the interpreter with -m."""
    beside = Path(sys.executable).parent / "fz-trio"
    if beside.exists():
        return str(beside)
    found = shutil.which("fz-trio")
    if found:
        return os.path.abspath(found)
    return f"{sys.executable} -m fz_trio"


def _install_paths(command: str, default: bool) -> list[Path]:
    """Where the files the service must read live: the program (through its symlinks: pipx's
    /usr/local/bin/fz-trio points into its venvs) and, when it is this very install, its
    interpreter's prefix and the package (an editable install's source)."""
    paths = [Path(os.path.realpath(shlex.split(command)[0]))]
    if default:
        import fz_trio

        paths += [Path(os.path.realpath(sys.prefix)),
                  Path(os.path.realpath(fz_trio.__file__))]
    return paths


def _under(paths: Iterable[Path], roots: Iterable[Path]) -> bool:
    return any(path.is_relative_to(root) for path in paths for root in roots)


def unit_text(executable: str | None = None) -> str:
    command = executable or _executable()
    paths = _install_paths(command, default=executable is None)
    if _under(paths, HOMES):
        home = ("# read-only, not yes: fz-trio is installed under a home directory\n"
                "# (pipx's default; `pipx install --global` puts it in /opt/pipx).\n"
                "ProtectHome=read-only")
    else:
        home = "ProtectHome=yes"
    if _under(paths, TMPS):
        tmp = ("# Not PrivateTmp: fz-trio is installed under /tmp, which it would hide.\n"
               "PrivateTmp=no")
    else:
        tmp = "PrivateTmp=yes"
    return f"""\
# fz-trio@.service: a WireGuard tunnel from /etc/wireguard/%i.conf, run by fz-trio.
# Written by `fz-trio install-service`; see docs/service.md.
[Unit]
Description=fz-trio WireGuard tunnel %i
Documentation=man:wg-quick(8)
# Endpoint names that do not resolve yet are retried, so the network is a help, not a must.
# nss-lookup.target is passive: ordered after, never pulled in.
Wants=network-online.target
After=network-online.target nss-lookup.target

[Service]
Type=notify
# READY=1, STATUS=, RELOADING=1 and STOPPING=1 come from fz-trio itself, never its hooks.
NotifyAccess=main
ExecStart={command} up /etc/wireguard/%i.conf
# SIGHUP: re-read the config and apply what changed; untouched peers keep their sessions.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# Least privilege: root's files, but of root's powers only the network's (TUN, netlink,
# nftables, and the src_valid_mark sysctl: net sysctls are CAP_NET_ADMIN's).
# Add CAP_NET_BIND_SERVICE with a drop-in for a ListenPort below 1024.
CapabilityBoundingSet=CAP_NET_ADMIN
AmbientCapabilities=CAP_NET_ADMIN
# Hooks and the tools fz-trio runs (resolvconf, nft, bash) cannot gain more through setuid.
NoNewPrivileges=yes
# /usr and /boot read-only; not full or strict: /etc stays writable for file-mode DNS
# (/etc/resolv.conf), /run for /run/fz-trio and /run/wireguard.
ProtectSystem=yes
{home}
{tmp}
# Of the devices, /dev/net/tun only (and the pseudo-devices: null, zero, random...).
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
# UAPI and sd_notify, netlink, the UDP sockets; no packet sockets.
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# Not ProtectKernelTunables: it would make /proc/sys read-only (src_valid_mark).

[Install]
WantedBy=multi-user.target
"""


def install_unit(directory: Path = Path("/etc/systemd/system"),
                 executable: str | None = None) -> Path:
    """Write the template (0644) and, when systemd runs, tell it (`daemon-reload`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / UNIT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(unit_text(executable))
    tmp.chmod(0o644)
    tmp.replace(path)
    if SYSTEMD_RUNNING.is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)
    return path
