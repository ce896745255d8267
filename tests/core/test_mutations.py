"""The state-machine test bites: deliberately broken cores are each caught.

Every mutant is a plausible bug, applied with `monkeypatch` to the core's classes for the length
of one test (the core's source is never touched). Hypothesis then runs the state machine of
test_state_machine.py against it and must report a violation of the invariant that guards
against that bug. The runs are derandomized (the same examples every time, so this test is
deterministic) and skip shrinking: only the catch matters here. A mutant is usually caught in
its first few examples; MAX_EXAMPLES is the bound we allow.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from fz_trio.core import tunnel as tunnel_module
from fz_trio.core.peer import Peer
from fz_trio.core.session import Session
from fz_trio.core.tunnel import Tunnel
from fz_trio.datapath import Device, _pykernels, kernels, replay
from tests.core.machines import RecoveryMachine, TunnelMachine, Violation

MAX_EXAMPLES = 200

Mutation = Callable[[pytest.MonkeyPatch], None]


@pytest.fixture(autouse=True)
def python_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants of the data path are applied to its Python twin, so the Device must run it."""
    for name in ("seal_packets", "seal_segments", "open_run", "coalesce"):
        monkeypatch.setattr(kernels, name, getattr(_pykernels, name))


def replay_check_disabled(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(replay, "check", lambda words, counter: True)
    mp.setattr(replay, "mark", lambda words, counter: True)


def reject_after_time_ignored(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Session, "usable_for_sending",
               lambda self, now, timers: self.send_counter < timers.reject_after_messages)
    mp.setattr(Session, "receive_limit", lambda self, now, timers: timers.reject_after_messages)


def reject_after_messages_ignored(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Session, "usable_for_sending",
               lambda self, now, timers: now - self.created < timers.reject_after_time)
    mp.setattr(Session, "sendable", lambda self, count, timers: count)
    mp.setattr(Session, "receive_limit",
               lambda self, now, timers: 1 << 64 if now - self.created < timers.reject_after_time
               else 0)


def keepalive_after_rekey_timeout(mp: pytest.MonkeyPatch) -> None:
    """The passive keepalive armed with the wrong constant (REKEY_TIMEOUT, 5 s, not 10 s)."""

    def on_data_received(self: Peer, now: float) -> None:
        if self.send_keepalive_at is None:
            self.send_keepalive_at = now + self.timers.rekey_timeout
        else:
            self.need_another_keepalive = True

    mp.setattr(Peer, "_on_data_received", on_data_received)


def keepalive_never_armed(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Peer, "_on_data_received", lambda self, now: None)


def source_filter_skipped(mp: pytest.MonkeyPatch) -> None:
    """Inner packets are length-checked but their source is never matched to the peer."""
    mp.setattr(Tunnel, "source_allowed", lambda self, peer, address: True)


def nonce_counter_reused(mp: pytest.MonkeyPatch) -> None:
    """Every seventh reservation or so overlaps the one before by a counter."""
    reserve = Session.reserve

    def reserve_overlapping(self: Session, count: int) -> int:
        counter = reserve(self, count)
        if self.send_counter % 7 == 3:
            self.send_counter -= 1
        return counter

    mp.setattr(Session, "reserve", reserve_overlapping)


def initiation_timestamp_not_checked(mp: pytest.MonkeyPatch) -> None:
    """The responder forgets the last TAI64N timestamp (and the flood limit) it accepted."""
    answer = Peer.answer_initiation

    def answer_any(self: Peer, *args: object, **kwargs: object) -> bool:
        self.last_timestamp = bytes(12)
        self.last_initiation_consumed = float("-inf")
        return answer(self, *args, **kwargs)  # type: ignore[arg-type]

    mp.setattr(Peer, "answer_initiation", answer_any)


def endpoint_from_unauthenticated_packets(mp: pytest.MonkeyPatch) -> None:
    """Roaming follows any datagram naming a known index, before it is authenticated."""
    receive = Device.receive_batch

    def roam_first(self: Device, data: bytes, nbytes: int, size: int,
                   source: tuple[str, int], now: float, wall: float) -> None:
        if nbytes >= 8:
            entry = self.indices.get(struct.unpack_from("<I", data, 4)[0])
            if entry is not None:
                entry[0].endpoint = tunnel_module.normalise(source)
        receive(self, data, nbytes, size, source, now, wall)

    mp.setattr(Device, "receive_batch", roam_first)


def no_handshake_after_silence(mp: pytest.MonkeyPatch) -> None:
    """Data sent with nothing heard back never makes the sender suspect a dead session."""
    mp.setattr(Peer, "_on_data_sent", lambda self, now: None)


# mutation, the machine to run, what the violation must say
CASES: list[tuple[Mutation, type[RuleBasedStateMachine], str]] = [
    (replay_check_disabled, TunnelMachine, r"accepted a replayed datagram.*\(S2\)"),
    (reject_after_time_ignored, TunnelMachine, r"past REJECT_AFTER_TIME \(S3\)"),
    (reject_after_messages_ignored, TunnelMachine, r"past REJECT_AFTER_MESSAGES \(S3\)"),
    (keepalive_after_rekey_timeout, TunnelMachine, r"keepalive with no reason.*\(K1\)"),
    (keepalive_never_armed, TunnelMachine, r"owed a passive keepalive.*\(K2\)"),
    (source_filter_skipped, TunnelMachine, r"AllowedIPs do not give to .*\(S1\)"),
    (nonce_counter_reused, TunnelMachine, r"reused counter .*\(S4\)"),
    (initiation_timestamp_not_checked, TunnelMachine, r"accepted a replayed datagram.*\(S2\)"),
    (endpoint_from_unauthenticated_packets, TunnelMachine,
     r"moved a peer's endpoint on a datagram it did not accept.*\(S2\)"),
    # Only the liveness checks can see this one, and only from states the recovery machine
    # reaches quickly (a session the peer lost, then traffic in one direction).
    (no_handshake_after_silence, RecoveryMachine, r"lost two probes in a row.*\(liveness\)"),
]


def run(machine: type[RuleBasedStateMachine], max_examples: int) -> None:
    # Every setting is pinned (none from the profile), so that the examples are the same
    # under `ci` and `long`.
    run_state_machine_as_test(machine, settings=settings(
        max_examples=max_examples, stateful_step_count=50, derandomize=True, database=None,
        phases=[Phase.generate], deadline=None, print_blob=False,
        suppress_health_check=list(HealthCheck)))


@pytest.mark.parametrize("mutation, machine, expected", CASES,
                         ids=[case[0].__name__ for case in CASES])
def test_broken_core_is_caught(monkeypatch: pytest.MonkeyPatch, mutation: Mutation,
                               machine: type[RuleBasedStateMachine], expected: str) -> None:
    mutation(monkeypatch)
    with pytest.raises(Violation) as caught:
        run(machine, MAX_EXAMPLES)
    assert re.search(expected, str(caught.value)), str(caught.value)


# Derandomized runs draw the same examples in the same order whatever the core does, and every
# mutant above is caught within this many examples of its machine (measured; with room).
CONTROL_EXAMPLES = {TunnelMachine: 60, RecoveryMachine: 150}


@pytest.mark.parametrize("machine", list(CONTROL_EXAMPLES), ids=lambda m: m.__name__)
def test_the_correct_core_passes_the_same_examples(machine: type[RuleBasedStateMachine]) -> None:
    """The mutants fail those runs because of the mutation: unmutated, the examples pass."""
    run(machine, CONTROL_EXAMPLES[machine])
