"""Developer sessions: `nox` (= `typecheck` then `tests`), `props`, `lint`, `demo`, `bench`,
`sanitize`, `fuzz`."""

from __future__ import annotations

import nox

nox.options.sessions = ["typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

# What runs a second time with FZ_TRIO_PUREPYTHON=1: the twins' own tests and the replay window
# (both on the kernels), the core driven through the data path, and interop with real peers.
PUREPYTHON_TESTS = ["tests/datapath/test_twins.py", "tests/datapath/test_replay.py",
                    "tests/datapath/test_batched_core.py", "tests/core/test_tunnel.py",
                    "tests/core/test_state_machine.py", "tests/interop/test_offload_interop.py",
                    "tests/interop/test_interop.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite; the namespace interop tests need root, wireguard-go and iperf3."""
    session.install("-e", ".[test]")
    if not session.posargs:
        # The editable install builds the native kernels; the suite must not quietly run the
        # Python twin twice.
        session.run("python", "-c", "import fz_trio.datapath as d, sys; "
                    "sys.exit(0 if d.IMPLEMENTATION == 'native' else d.REASON)")
    # The slowest tests listed at the end: the suite has a 15-minute budget in CI.
    session.run("pytest", *(session.posargs or ["--durations=15"]))
    if not session.posargs:
        # The data path and every test that moves packets again, on the Python twin.
        session.run("pytest", "-p", "no:cacheprovider", *PUREPYTHON_TESTS,
                    env={"FZ_TRIO_PUREPYTHON": "1", "HYPOTHESIS_PROFILE": "twin"})


@nox.session
def props(session: nox.Session) -> None:
    """The state-machine tests with the `long` hypothesis profile (thousands of runs), and the
    check that each deliberately broken core is caught."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/core/test_state_machine.py", "tests/core/test_mutations.py",
                *session.posargs, env={"HYPOTHESIS_PROFILE": "long"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "fz_trio", "tests", "noxfile.py", "fuzz")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over fz_trio, as pyproject.toml's [tool.mypy] says (so plain `mypy` agrees).

    mypy is pinned: a new release's new checks should arrive with a deliberate bump, not break
    an unrelated change.
    """
    session.install("-e", ".", "mypy==2.4.1")
    session.run("mypy", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("fz-trio", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Core micro-benchmark, then iperf3 through every tunnel pair (root, wireguard-go, iperf3).

    Options go after `--`: `nox -s bench -- --seconds 5 --pairs wggo-wggo,fz-fz`; see
    `python -m fz_trio.lab.bench --help` and docs/performance.md.
    """
    session.install("-e", ".")
    session.run("python", "-m", "fz_trio.lab.bench", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """fz-trio against wireguard-go for `--minutes` (10) with TCP both ways: throughput over
    time, rekeys, drops by reason, memory and fds at start and end (root, wireguard-go, iperf3).
    `nox -s soak -- --minutes 10 --output soak.json`; see docs/soak.md."""
    session.install("-e", ".")
    session.run("python", "-m", "fz_trio.lab.soak", *session.posargs)


# --- sanitizers and fuzzing of the native kernels -----------------------------------------------
# Both build `fz_trio.datapath._kernels` with sanitizers into a temporary directory, next to a
# copy of the `fz_trio` sources, and put that first on PYTHONPATH: the source tree, its normal
# extension and `build/` are never touched, so nothing needs rebuilding or cleaning afterwards.

_SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=undefined"
_SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:allocator_may_return_null=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    "PYTHONSAFEPATH": "1",  # no cwd first on sys.path: fz_trio comes from PYTHONPATH
}


def _sanitized_tree(session: nox.Session, cc: str, extra: str = "") -> str:
    """Build the extension with sanitizers (and `extra` flags) into a temp dir holding a copy of
    fz_trio; returns the directory to put on PYTHONPATH."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix=f"fz-trio-{session.name}-")
    lib = f"{root}/lib"
    flags = f"{_SANITIZE} {extra} -fno-omit-frame-pointer -O1 -g".strip()
    session.run("python", "setup.py", "build_ext", "--build-lib", lib, "--build-temp",
                f"{root}/obj", env={"CC": cc, "LDSHARED": f"{cc} -shared", "CFLAGS": flags,
                                    "LDFLAGS": f"{_SANITIZE} {extra}".strip()})
    shutil.copytree("fz_trio", f"{lib}/fz_trio", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    if not list(__import__("pathlib").Path(lib).glob("fz_trio/datapath/_kernels*.so")):
        session.error("the sanitized extension did not build (see the compiler output above)")
    return root


def _runtime(session: nox.Session, cc: str, name: str) -> str:
    path = session.run(cc, f"-print-file-name={name}", silent=True, external=True).strip()
    if "/" not in path:
        session.error(f"{cc} has no {name}")
    return path


@nox.session
def sanitize(session: nox.Session) -> None:
    """tests/datapath against the native kernels built with ASan + UBSan (gcc, or CC)."""
    import os

    session.install("-e", ".[test]")
    cc = os.environ.get("CC", "gcc")
    root = _sanitized_tree(session, cc)
    asan = _runtime(session, cc, "libasan.so" if "clang" not in cc
                    else "libclang_rt.asan-x86_64.so")
    env = {"PYTHONPATH": f"{root}/lib", "LD_PRELOAD": asan, **_SAN_ENV}
    try:
        session.run("python", "-c", "import sys, fz_trio.datapath._kernels as k; "
                    f"sys.exit(0 if k.__file__.startswith({root!r}) else 'not the sanitized "
                    "build: ' + k.__file__)", env=env)
        session.run("pytest", "-p", "no:cacheprovider", "tests/datapath", *session.posargs,
                    env=env)
    finally:
        __import__("shutil").rmtree(root, ignore_errors=True)


# The harnesses `nox -s fuzz` runs: fuzz/fuzz_<target>.py. All but kernels are pure Python and
# need only atheris' PyPI wheel; their seeds are fuzz/corpus/<target>/ (fuzz/make_corpus.py).
FUZZ_TARGETS = ("kernels", "tunnel", "config", "uapi", "offload")


def _fuzz_options(session: nox.Session) -> tuple[str, list[str], bool, list[str]]:
    """(--seconds, the targets, whether they were named, the other arguments for libFuzzer)."""
    args = list(session.posargs)
    seconds, targets, named = "600", list(FUZZ_TARGETS), False
    for flag in ("--seconds", "--targets"):
        if flag in args:
            i = args.index(flag)
            if i + 1 == len(args):
                session.error(f"{flag} needs a value")
            value = args[i + 1]
            del args[i:i + 2]
            if flag == "--seconds":
                seconds = value
            else:
                targets, named = [t.strip() for t in value.split(",") if t.strip()], True
    unknown = [t for t in targets if t not in FUZZ_TARGETS]
    if unknown or not targets:
        session.error(f"unknown fuzz targets {unknown}; choose from {','.join(FUZZ_TARGETS)}")
    if not seconds.isdigit():
        session.error(f"--seconds wants a whole number, got {seconds!r}")
    return seconds, targets, named, args


def _fuzz_kernels(session: nox.Session, seconds: str, args: list[str]) -> None:
    """fuzz/fuzz_kernels.py against the extension built with clang, ASan + UBSan and libFuzzer
    coverage of the C code (see that file)."""
    import os
    import shutil

    root = _sanitized_tree(session, "clang", "-fsanitize=fuzzer-no-link")
    try:
        # ASan (it carries UBSan's handlers) and libFuzzer in one preload, built as atheris'
        # installer does when it finds clang: ASan's weak coverage hooks must not win.
        rt = os.path.dirname(_runtime(session, "clang", "libclang_rt.asan-x86_64.a"))
        shutil.copy(f"{rt}/libclang_rt.asan-x86_64.a", f"{root}/asan.a")
        session.run("ar", "d", f"{root}/asan.a", "asan_preinit.cpp.o", external=True)
        preload = f"{root}/asan_with_fuzzer.so"
        session.run("clang", "-shared", "-o", preload, "-Wl,--whole-archive", f"{root}/asan.a",
                    f"{rt}/libclang_rt.fuzzer_no_main-x86_64.a",
                    f"{rt}/libclang_rt.ubsan_standalone_cxx-x86_64.a", "-Wl,--no-whole-archive",
                    "-lpthread", "-ldl", "-lrt", "-lm", "-lstdc++", external=True)
        env = {"PYTHONPATH": f"{root}/lib", "LD_PRELOAD": preload, **_SAN_ENV}
        session.run("python", "-c", "import sys, fz_trio.datapath._kernels as k; "
                    f"sys.exit(0 if k.__file__.startswith({root!r}) else 'not the sanitized "
                    "build: ' + k.__file__)", env=env)
        session.run("python", "fuzz/fuzz_kernels.py", f"-max_total_time={seconds}",
                    "-max_len=8192", *args, env=env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Every fuzz/fuzz_<target>.py for `--seconds` each (600), one after the other:
    `nox -s fuzz -- --seconds 60 [--targets tunnel,config] [more libFuzzer flags]`.

    tunnel, config, uapi and offload are pure Python (atheris only); each starts from its seeds
    in fuzz/corpus/<target>/ and what earlier runs found in .nox/fuzz/tmp/corpus-<target>/ (new
    inputs go there: the seeds stay as committed). kernels needs clang (`apt-get install clang`)
    for ASan + UBSan and libFuzzer coverage of the C code; without clang it is skipped with a
    warning, unless named in --targets. A crash is written to ./fuzz-<target>-crash-<sha1>
    (`python fuzz/fuzz_<target>.py that-file` reproduces it); every target runs, and the session
    fails at the end naming those that crashed. See docs/fuzzing.md.
    """
    import os
    import shutil

    from nox.command import CommandFailed

    seconds, targets, named, args = _fuzz_options(session)
    if "kernels" in targets and shutil.which("clang") is None:
        if named:
            session.error("the kernels target needs clang (apt-get install clang)")
        session.warn("fuzz: no clang, so no kernels target (apt-get install clang)")
        targets.remove("kernels")
    session.install("-e", ".", "atheris")
    crashed = []
    for target in targets:
        session.log(f"fuzz: {target} for {seconds} s")
        try:
            if target == "kernels":
                _fuzz_kernels(session, seconds, args)
                continue
            found = os.path.join(session.create_tmp(), f"corpus-{target}")
            os.makedirs(found, exist_ok=True)
            # -timeout: an input that takes seconds is a finding too (the config parser's
            # cubic regex was one); given in `args`, libFuzzer takes the last.
            session.run("python", f"fuzz/fuzz_{target}.py", f"-max_total_time={seconds}",
                        "-timeout=10", f"-artifact_prefix=fuzz-{target}-", *args, found,
                        f"fuzz/corpus/{target}")
        except CommandFailed:
            crashed.append(target)
    if crashed:
        session.error(f"fuzz: crashes in {', '.join(crashed)} (see ./fuzz-*-crash-* above)")
