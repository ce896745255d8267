"""The command line as a user meets it: keys compatible with wg(8), clear one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fz_trio.core import encode_key, generate_private_key


def fz(*args: str, input: str | None = None,
       prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([*prefix, sys.executable, "-m", "fz_trio", *args], input=input,
                          capture_output=True, text=True, timeout=30, env=env)


def test_genkey_and_pubkey_match_wg() -> None:
    private = fz("genkey").stdout.strip()
    assert len(private) == 44
    public = fz("pubkey", input=private + "\n").stdout.strip()
    if shutil.which("wg"):
        wg = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True,
                            text=True, check=True)
        assert wg.stdout.strip() == public
    wg_key = subprocess.run(["wg", "genkey"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("wg") else private
    assert len(fz("pubkey", input=wg_key).stdout.strip()) == 44


def test_pubkey_rejects_garbage_without_a_traceback() -> None:
    result = fz("pubkey", input="not a key\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "32 bytes" in result.stderr


def test_up_with_a_broken_config_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "wg7.conf"
    conf.write_text("[Interface]\nPrivateKey = " + encode_key(generate_private_key())
                    + "\nListenPort = seventy\n")
    result = fz("up", str(conf))
    assert result.returncode == 1
    assert f"{conf}:3:" in result.stderr and "Traceback" not in result.stderr


def test_up_refuses_save_config_true_with_the_way_out(tmp_path: Path) -> None:
    conf = tmp_path / "wg8.conf"
    conf.write_text("[Interface]\nPrivateKey = " + encode_key(generate_private_key())
                    + "\nSaveConfig = true\n")
    result = fz("up", str(conf))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{conf}:3: SaveConfig = true is not supported" in result.stderr
    assert "wg showconf" in result.stderr


def test_up_as_an_unprivileged_user_says_it_needs_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # An unprivileged child could not even import the root-owned virtualenv here, so the uid
    # is the one thing faked; the config is read and checked for real first.
    from fz_trio import cli

    conf = tmp_path / "wg9.conf"
    conf.write_text("[Interface]\nPrivateKey = " + encode_key(generate_private_key()) + "\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["up", str(conf)]) == 1
    assert "must run as root" in capsys.readouterr().err
