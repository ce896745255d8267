"""Installing without a compiler still gives a working fz-trio, on the Python twin, and says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_tree(tmp_path: Path) -> Path:
    # A stale build/ or in-place extension would leak a compiled module into the install.
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", "build", "*.so", "__pycache__", ".nox", ".hypothesis", "*.egg-info"))
    return tree


def test_install_with_a_failing_compiler_runs_the_python_twin(clean_tree: Path,
                                                              tmp_path: Path) -> None:
    target = tmp_path / "site"
    env = {**os.environ, "CC": "false", "LDSHARED": "false"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps",
         "--no-cache-dir", "--target", str(target), str(clean_tree)],
        env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    installed = target / "fz_trio" / "datapath"
    assert not list(installed.glob("_kernels*.so"))
    assert not list(installed.glob("*.c"))  # the C source is no package data
    run = subprocess.run(
        [sys.executable, "-c", "import fz_trio.cli; fz_trio.cli.main(['--version'])"],
        env={**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "python data path kernels" in run.stdout, run.stdout + run.stderr
    assert "not built" in run.stdout
