"""A short run of each pure-Python fuzz harness (fuzz/fuzz_<name>.py) over its seed corpus.

Each runs as `nox -s fuzz` would run it, in its own interpreter (atheris instruments the modules
as it imports them), for a few hundred inputs with a fixed seed: the seeds must pass the
harness's oracles, and a harness or corpus broken by a change shows up here, not only in a long
fuzzing session. All four start at once and take a few seconds together. New inputs go to a
temporary directory, never to fuzz/corpus. Without atheris (`pip install atheris`) they are
skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ("tunnel", "config", "uapi", "offload")
RUNS = 200

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed (pip install atheris)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Every harness started at once; each test waits for its own."""
    pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    started = {}
    for name in HARNESSES:
        work = tmp_path_factory.mktemp(f"fuzz-{name}")
        (work / "corpus").mkdir()
        started[name] = subprocess.Popen(
            [sys.executable, str(ROOT / "fuzz" / f"fuzz_{name}.py"), f"-runs={RUNS}", "-seed=1",
             "-timeout=20", f"-artifact_prefix={work}/", str(work / "corpus"),
             str(ROOT / "fuzz" / "corpus" / name)],
            cwd=work, env={**os.environ, "PYTHONPATH": pythonpath}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_runs_its_seed_corpus_clean(runs: dict[str, subprocess.Popen[str]],
                                            name: str) -> None:
    assert (ROOT / "fuzz" / "corpus" / name).is_dir(), "run fuzz/make_corpus.py"
    seeds = len(list((ROOT / "fuzz" / "corpus" / name).iterdir()))
    assert seeds >= 3, f"fuzz/corpus/{name} has only {seeds} seeds"
    output, _ = runs[name].communicate(timeout=120)
    tail = "\n".join(line for line in output.splitlines()
                     if "Instrumenting" not in line)[-3000:]
    assert runs[name].returncode == 0, tail
    assert f"Done {RUNS} runs" in output, tail
