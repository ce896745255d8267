"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s demo`."""

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
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "fz_trio", "tests", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("fz-trio", "demo", *session.posargs)
