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
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["UNIT_NAME", "install_unit", "unit_text"]

UNIT_NAME = "fz-trio@.service"
SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(3)'s test


def _executable() -> str:
    """The fz-trio that is running this: its console script when there is one (pipx puts it in
    ~/.local/bin or $PIPX_BIN_DIR), else the interpreter with -m."""
    beside = Path(sys.executable).parent / "fz-trio"
    if beside.exists():
        return str(beside)
    found = shutil.which("fz-trio")
    if found:
        return os.path.realpath(found)
    return f"{sys.executable} -m fz_trio"


def unit_text(executable: str | None = None) -> str:
    command = executable or _executable()
    return f"""\
# fz-trio@.service: a WireGuard tunnel from /etc/wireguard/%i.conf, run by fz-trio.
# Written by `fz-trio install-service`; see docs/service.md.
[Unit]
Description=fz-trio WireGuard tunnel %i
Documentation=man:wg-quick(8)
# Endpoint names that do not resolve yet are retried, so the network is a help, not a must.
Wants=network-online.target nss-lookup.target
After=network-online.target nss-lookup.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={command} up /etc/wireguard/%i.conf
# SIGHUP: re-read the config and apply what changed; untouched peers keep their sessions.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# Least privilege: root's files, but of root's powers only the network's.
# Add CAP_NET_BIND_SERVICE with a drop-in for a ListenPort below 1024.
CapabilityBoundingSet=CAP_NET_ADMIN
AmbientCapabilities=CAP_NET_ADMIN
NoNewPrivileges=yes
# /usr and /boot read-only; /etc stays writable for file-mode DNS (/etc/resolv.conf).
ProtectSystem=yes
ProtectHome=yes
PrivateTmp=yes
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
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
