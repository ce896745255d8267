"""The fz-trio@.service template: systemd's own checker accepts it, its sandbox follows where
fz-trio is installed, and it installs.

That CAP_NET_ADMIN alone is enough, as the unit's CapabilityBoundingSet grants, is shown for
real in tests/interop/test_host_lifecycle.py (test_cap_net_admin_is_all_it_needs: `fz-trio up`
under `setpriv --bounding-set=-all,+net_admin`, CapEff checked, a full tunnel with DNS up,
pinged through, SIGTERM, exit 0, nothing left on the host).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fz_trio.service_unit import UNIT_NAME, install_unit, unit_text

# An interpreter outside /tmp and the homes, so that the unit has its full sandbox, and that
# exists, as verify checks ExecStart's program.
PROGRAM = os.path.realpath(sys.executable)


def _verify(directory: Path, text: str) -> list[str]:
    """systemd-analyze's complaints about our unit, instantiated as fz-trio@wg0.service.

    --recursive-errors=no: the exit status is about our unit alone, not systemd's own targets
    (multi-user.target, network-online.target) whose files are the machine's.
    --man=no: whether wg-quick(8) is installed is the machine's business too.
    Lines that start with another unit file's path are warnings about the machine's units,
    printed as verify loads our dependencies; they are dropped. What remains must be empty."""
    (directory / UNIT_NAME).write_text(text)
    instance = directory / "fz-trio@wg0.service"
    instance.write_text(text)
    # SYSTEMD_UNIT_PATH's trailing colon keeps systemd's own directories after ours.
    done = subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=no", "--man=no", str(instance)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:"})
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and not _about_another_unit(line, directory)]
    if done.returncode != 0:
        lines.append(f"exit status {done.returncode}")
    return lines


def _about_another_unit(line: str, ours: Path) -> bool:
    match = re.match(r"(/\S+?\.(?:service|target|socket|slice|mount|path|timer)):\d+:", line)
    return match is not None and Path(match.group(1)).parent != ours


verify_needed = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="needs systemd-analyze (apt-get install systemd)")


@verify_needed
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert _verify(tmp_path, unit_text(PROGRAM)) == []
    # The checker has teeth: a misspelt setting and a relative program are reported.
    typo = _verify(tmp_path, unit_text(PROGRAM).replace("NoNewPrivileges", "NoNewPrivilege"))
    assert any("NoNewPrivilege" in line for line in typo), typo
    assert _verify(tmp_path, unit_text("no-such-fz-trio")) != []


@verify_needed
def test_the_relaxed_variants_verify_too(tmp_path: Path) -> None:
    # A program under /tmp (this dev venv's, say): PrivateTmp=no, still a valid unit.
    assert _verify(tmp_path, unit_text(sys.executable)) == []


def test_the_unit_says_what_the_service_needs() -> None:
    text = unit_text("/usr/local/bin/fz-trio")
    for line in ["ExecStart=/usr/local/bin/fz-trio up /etc/wireguard/%i.conf",
                 "Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID",
                 "Restart=on-failure", "After=network-online.target nss-lookup.target",
                 "Wants=network-online.target", "WantedBy=multi-user.target",
                 "CapabilityBoundingSet=CAP_NET_ADMIN", "AmbientCapabilities=CAP_NET_ADMIN",
                 "NoNewPrivileges=yes", "ProtectSystem=yes", "ProtectHome=yes",
                 "PrivateTmp=yes", "DevicePolicy=closed", "DeviceAllow=/dev/net/tun rw",
                 "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
                 "ProtectKernelModules=yes", "ProtectControlGroups=yes",
                 "RestrictNamespaces=yes", "LockPersonality=yes", "RestrictRealtime=yes",
                 "SystemCallArchitectures=native"]:
        assert line in text.splitlines(), line
    settings = [line.split("=")[0] for line in text.splitlines()
                if line and not line.startswith(("#", "["))]
    # /etc (resolv.conf) and /proc/sys (src_valid_mark) must stay writable.
    assert "ProtectKernelTunables" not in settings
    assert "ProtectSystem=full" not in text and "ProtectSystem=strict" not in text


def test_the_sandbox_leaves_visible_what_fz_trio_runs_from(tmp_path: Path) -> None:
    # pipx's default: the venv under root's home (ProtectHome=yes would hide it).
    pipx = unit_text("/root/.local/bin/fz-trio")
    assert "ProtectHome=read-only" in pipx.splitlines() and "PrivateTmp=yes" in pipx
    # Through a symlink: PIPX_BIN_DIR=/usr/local/bin with the venvs still in a home; what
    # counts is where it points, not where the link is.
    link = tmp_path / "fz-trio"
    link.symlink_to("/root/.local/share/pipx/venvs/fz-trio/bin/fz-trio")
    linked = unit_text(str(link)).splitlines()
    assert "ProtectHome=read-only" in linked and "PrivateTmp=yes" in linked
    # This very install, with no argument: its prefix and package count, not just the program.
    default = unit_text()
    if any(os.path.realpath(p).startswith(("/tmp/", "/var/tmp/"))
           for p in (sys.prefix, sys.executable)):
        assert "PrivateTmp=no" in default.splitlines()


def test_the_default_program_is_this_fz_trio() -> None:
    exec_start = next(line for line in unit_text().splitlines()
                      if line.startswith("ExecStart="))
    program = exec_start.removeprefix("ExecStart=").split()[0]
    assert os.path.isabs(program) and os.access(program, os.X_OK), exec_start
    assert exec_start.endswith(" up /etc/wireguard/%i.conf")


def test_install_writes_the_template(tmp_path: Path) -> None:
    path = install_unit(tmp_path / "system", executable="/usr/local/bin/fz-trio")
    assert path == tmp_path / "system" / "fz-trio@.service"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert "ExecStart=/usr/local/bin/fz-trio up /etc/wireguard/%i.conf\n" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["fz-trio@.service"]
    # Again, over the old one (an upgrade): replaced, still 0644.
    path.chmod(0o600)
    install_unit(tmp_path / "system", executable="/opt/fz-trio")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert "ExecStart=/opt/fz-trio up" in path.read_text()


def test_the_command_line_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "fz_trio", "install-service", "--print"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out == unit_text()
