"""The protocol's time and message-count constants (WireGuard whitepaper, section 6).

Kept as module constants so that the whole core reads them from one place; tests that need faster
timers build a `TimerConfig` with scaled values instead of patching these.
"""

from __future__ import annotations

import attrs

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 1 / 3
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
# A responder ignores initiations from one peer that come faster than this (flood protection).
INITIATIONS_MIN_INTERVAL = 0.05


@attrs.frozen
class TimerConfig:
    """The timer constants one Tunnel uses; the defaults are the protocol's."""

    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    rekey_timeout_jitter_max: float = REKEY_TIMEOUT_JITTER_MAX
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    initiations_min_interval: float = INITIATIONS_MIN_INTERVAL

    @property
    def max_handshake_attempts(self) -> int:
        # wireguard-go gives up once attempts exceed REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
        return int(self.rekey_attempt_time / self.rekey_timeout)

    @property
    def new_handshake_after_silence(self) -> float:
        """Data sent but nothing heard back for this long: the session is presumed dead."""
        return self.keepalive_timeout + self.rekey_timeout

    @property
    def receive_side_rekey_age(self) -> float:
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout

    def scaled(self, factor: float) -> TimerConfig:
        """Every time constant multiplied by `factor` (message counts unchanged); for tests."""
        return attrs.evolve(
            self,
            rekey_after_time=self.rekey_after_time * factor,
            reject_after_time=self.reject_after_time * factor,
            rekey_attempt_time=self.rekey_attempt_time * factor,
            rekey_timeout=self.rekey_timeout * factor,
            rekey_timeout_jitter_max=self.rekey_timeout_jitter_max * factor,
            keepalive_timeout=self.keepalive_timeout * factor,
            initiations_min_interval=self.initiations_min_interval * factor,
        )
