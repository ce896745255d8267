"""Shared fixtures.

Tests that need root, namespaces, TUN and wireguard-go carry `pytest.mark.netns` (or request
`needs_root_netns` / `testnet`) and are skipped with a reason where those are missing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import settings as _hypothesis_settings

from fz_trio.lab import testnet as _tn


def _skip_reason() -> str | None:
    return _tn.netns_unavailable_reason(need_wireguard=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        reason = _skip_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture
def needs_root_netns() -> None:
    """Skip unless root with `ip netns`, /dev/net/tun, wireguard-go and wg."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def testnet(needs_root_netns: None) -> Iterator[_tn.TestNet]:
    """A created TestNet (two namespaces + veth), destroyed in teardown even if the test failed."""
    net = _tn.TestNet()
    try:
        net.create()
        yield net
    finally:
        net.destroy()


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_namespaces() -> Iterator[None]:
    """After the session, none of the namespaces this process created may still exist.

    Only our own names are judged, so parallel runs (or other people's namespaces) never fail
    this check. Leftovers are deleted so the machine stays clean, then reported as an error.
    """
    yield
    if not _tn.created_namespaces() or os.geteuid() != 0:
        return
    leaked = sorted(_tn.created_namespaces() & _tn.list_namespaces())
    for ns in leaked:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
    if leaked:
        pytest.fail(f"test network namespaces leaked (now deleted): {', '.join(leaked)}")


# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (default "ci"). "ci" keeps hypothesis's 100
# examples per test (the state machines then take about a minute in all); "long" is `nox -s
# props`. Failures print the shrunk steps and a @reproduce_failure blob; failing examples are
# also kept in .hypothesis/ (git-ignored) and replayed first on the next local run.
_hypothesis_settings.register_profile("ci", max_examples=100, stateful_step_count=150,
                                      print_blob=True)
# The second run on the Python twin (noxfile's PUREPYTHON_TESTS): the same examples, state-machine
# runs half as long — the twins' byte-for-byte agreement is test_twins' at full strength, and the
# suite must stay inside CI's 15 minutes.
_hypothesis_settings.register_profile("twin", max_examples=100, stateful_step_count=75,
                                      print_blob=True)
_hypothesis_settings.register_profile("long", max_examples=1000, stateful_step_count=200,
                                      print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
