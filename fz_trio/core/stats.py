"""Counters the core keeps so that every drop is visible (stats, logs, the REPL)."""

from __future__ import annotations

from collections import Counter

import attrs


@attrs.define
class Counters:
    drops: Counter[str] = attrs.Factory(Counter)
    handshake_initiations_sent: int = 0
    handshake_responses_sent: int = 0
    handshakes_completed: int = 0
    handshake_timeouts: int = 0
    cookie_replies_sent: int = 0
    under_load_periods: int = 0  # times the responder started demanding cookies
    packets_to_network: int = 0
    packets_to_tun: int = 0

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

    def as_dict(self) -> dict[str, object]:
        data = attrs.asdict(self)
        data["drops"] = dict(self.drops)
        return data
