"""The import rules that keep the layers apart, checked on the source and on a live interpreter.

- The runtime (`fz-trio up`, the live REPL, the command line) never loads the lab.
- The protocol core imports nothing of the data path, the shell, the app or the lab, and neither
  core nor data path touches IO: no Trio, sockets, threads, selectors or clocks.
- Everything outside a layer imports it through its face (`fz_trio.core`, `fz_trio.datapath`).
- No test module imports another test module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fz_trio
import fz_trio.core
import fz_trio.datapath

PACKAGE = Path(fz_trio.__file__).parent
TESTS = Path(__file__).parent

# Modules whose import means IO, threads or a clock: not for the sans-IO layers.
IO_MODULES = {"trio", "trio_util", "socket", "select", "selectors", "threading", "asyncio",
              "time", "pyroute2", "subprocess", "signal", "fcntl"}
# The lab's benchmark switches between the data path's two kernel twins: that is what it measures.
FACE_EXCEPTIONS = {("lab/bench/core.py", "fz_trio.datapath._pykernels"),
                   ("lab/bench/core.py", "fz_trio.datapath.kernels")}


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, absolute, including imports inside functions."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def sources(*parts: str) -> list[Path]:
    return sorted(PACKAGE.joinpath(*parts).rglob("*.py"))


def loaded_after(code: str) -> set[str]:
    """The fz_trio modules a fresh interpreter holds after running `code`."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if " \
        "m.startswith('fz_trio'))))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_runtime_never_loads_the_lab() -> None:
    loaded = loaded_after(
        "import fz_trio.cli, fz_trio.app, fz_trio.repl, fz_trio.shell.runner\n"
        "fz_trio.cli.build_parser()\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    fz_trio.cli.main(['genkey'])\n")
    assert {"fz_trio.app", "fz_trio.repl", "fz_trio.shell.runner"} <= loaded
    assert not {m for m in loaded if m.startswith("fz_trio.lab")}, loaded


def test_the_core_loads_nothing_but_itself() -> None:
    loaded = loaded_after("import fz_trio.core")
    assert loaded <= {"fz_trio"} | {m for m in loaded if m.startswith("fz_trio.core")}, loaded


@pytest.mark.parametrize("layer, allowed", [
    ("core", ("fz_trio.core",)),
    ("datapath", ("fz_trio.core", "fz_trio.datapath")),
])
def test_sans_io_layers_import_no_io_and_no_higher_layer(layer: str, allowed: tuple[str, ...]
                                                         ) -> None:
    for path in sources(layer):
        for name in imports(path):
            top = name.split(".")[0]
            assert top not in IO_MODULES, f"{path.relative_to(PACKAGE)} imports {name}"
            if top == "fz_trio" and name != "fz_trio":
                assert name.startswith(allowed), f"{path.relative_to(PACKAGE)} imports {name}"


def test_other_layers_use_the_faces() -> None:
    """Outside a layer only its face is imported: `from fz_trio.core import Tunnel`, never
    `fz_trio.core.tunnel` (the data path, itself a layer, may use the core's face only too)."""
    for path in sources():
        rel = path.relative_to(PACKAGE).as_posix()
        for layer in ("core", "datapath"):
            if rel.startswith(f"{layer}/"):
                continue
            for name in imports(path):
                if not name.startswith(f"fz_trio.{layer}."):
                    continue
                face_name = name.removeprefix(f"fz_trio.{layer}.")
                if "." not in face_name and face_name in getattr(fz_trio, layer).__all__:
                    continue  # `from fz_trio.core import ip`: a name the face exports
                assert (rel, name) in FACE_EXCEPTIONS, f"{rel} imports {name} past the face"


@pytest.mark.parametrize("face", [fz_trio.core, fz_trio.datapath])
def test_faces_export_what_they_name(face: object) -> None:
    names = face.__all__  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(face, name), name


def test_no_test_imports_another_test_module() -> None:
    for path in sorted(TESTS.rglob("*.py")):
        for name in imports(path):
            assert not any(part.startswith("test_") for part in name.split(".")), \
                f"{path.relative_to(TESTS)} imports {name}"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                named = [node.module or ""] + [alias.name for alias in node.names]
                assert not any(n.startswith("test_") for n in named), \
                    f"{path.relative_to(TESTS)} imports a test module relatively"
