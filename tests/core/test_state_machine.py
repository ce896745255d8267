"""The tunnel as a state machine: hypothesis runs `TunnelMachine` and `RecoveryMachine`
(tests/core/machines.py, whose docstring lists every invariant) on the simulated network."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.core.machines import RecoveryMachine, TunnelMachine

# Steps vary in cost (a liveness check simulates a minute): no per-example deadline.
_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
TunnelMachine.TestCase.settings = _SETTINGS
RecoveryMachine.TestCase.settings = _SETTINGS
TestTunnelStateMachine = TunnelMachine.TestCase
TestRecoveryMachine = RecoveryMachine.TestCase
