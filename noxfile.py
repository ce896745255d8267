"""Developer sessions: `nox -s tests`, `props`, `lint`, `demo`, `bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite; the namespace interop tests need root, wireguard-go and iperf3."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def props(session: nox.Session) -> None:
    """The state-machine tests with the `long` hypothesis profile (thousands of runs), and the
    check that each deliberately broken core is caught."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_state_machine.py", "tests/test_mutations.py",
                *session.posargs, env={"HYPOTHESIS_PROFILE": "long"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "fz_trio", "tests", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("fz-trio", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Core micro-benchmark, then iperf3 through every tunnel pair (root, wireguard-go, iperf3).

    Options go after `--`: `nox -s bench -- --seconds 5 --pairs wggo-wggo,fz-fz`; see
    `python -m fz_trio.bench --help` and docs/performance.md.
    """
    session.install("-e", ".")
    session.run("python", "-m", "fz_trio.bench", *session.posargs)
