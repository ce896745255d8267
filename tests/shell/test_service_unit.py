"""The fz-trio@.service template: systemd's own checker accepts it, and it installs.

That CAP_NET_ADMIN alone is enough, as the unit's CapabilityBoundingSet grants, is shown for
real in tests/interop/test_host_lifecycle.py (`fz-trio up` under setpriv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fz_trio.service_unit import UNIT_NAME, install_unit, unit_text


def _verify(directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    # An instance of the template, found through SYSTEMD_UNIT_PATH (the trailing colon keeps
    # systemd's own directories for the targets it names).
    (directory / UNIT_NAME).write_text(text)
    instance = directory / "fz-trio@wg0.service"
    instance.write_text(text)
    return subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:"})


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    ours = _verify(tmp_path, unit_text(sys.executable))
    assert ours.returncode == 0 and ours.stderr == "" and ours.stdout == "", ours
    # The checker has teeth: a misspelt setting is reported.
    typo = _verify(tmp_path, unit_text(sys.executable).replace("NoNewPrivileges",
                                                               "NoNewPrivilege"))
    assert "NoNewPrivilege" in typo.stderr, typo


def test_install_writes_the_template(tmp_path: Path) -> None:
    path = install_unit(tmp_path, executable="/usr/local/bin/fz-trio")
    assert path == tmp_path / "fz-trio@.service"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    text = path.read_text()
    assert "ExecStart=/usr/local/bin/fz-trio up /etc/wireguard/%i.conf\n" in text
    assert "Type=notify\n" in text and "CapabilityBoundingSet=CAP_NET_ADMIN\n" in text


def test_the_command_line_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "fz_trio", "install-service", "--print"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.startswith("# fz-trio@.service") and "ExecReload=/bin/kill -HUP $MAINPID" in out
