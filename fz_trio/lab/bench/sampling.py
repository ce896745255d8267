"""What a process costs, read from /proc: CPU seconds over a span, and peak resident memory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType

__all__ = ["CLK_TCK", "CpuSampler", "cpu_seconds", "peak_rss_mb"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads, living and dead) in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces and parentheses; it ends at the last ")".
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a process in MB (MiB), or None if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class CpuSampler:
    """CPU seconds each of `pids` spent between entering and leaving; `used` after the exit."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = tuple(pids)
        self.used: dict[int, float] = {}
        self._before: dict[int, float] = {}

    def __enter__(self) -> CpuSampler:
        self._before = {pid: cpu_seconds(pid) for pid in self.pids}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:  # a failed run reports no figures; a dead pid must not mask why
            self.used = {pid: cpu_seconds(pid) - self._before[pid] for pid in self.pids}
