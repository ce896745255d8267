"""Logging for the command line: how loud (`-v`, `-vv`) and in which shape (text or JSON lines).

Levels by verbosity: 0 — INFO for everything; 1 — DEBUG for fz_trio's own loggers, INFO for the
rest, and pyroute2 at WARNING always below 2 (at DEBUG it dumps every netlink message, which
buries our own lines); 2 and more — DEBUG for everything, pyroute2 included.

The JSON format is one object per line: time (UTC, ISO 8601, milliseconds), level, logger,
message, and `exception` (the formatted traceback) when there is one — for journald or a log
shipper that wants fields rather than a line to parse.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["FORMATS", "JsonFormatter", "levels_for", "setup_logging"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The loggers whose DEBUG output is noise unless asked for twice.
NOISY_LOGGERS = ("pyroute2",)
_HANDLER_NAME = "fz-trio"  # how setup_logging finds its own handler again


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped by json)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class _BelowLevelOf(logging.Filter):
    """Drops the records of `names` (and their children) below `level`. Levels alone do not
    hold: pyroute2 resets its logger to NOTSET when it is imported, which is after we start."""

    def __init__(self, names: tuple[str, ...], level: int) -> None:
        super().__init__()
        self.prefixes = tuple(f"{name}." for name in names)
        self.names = names
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = record.name in self.names or record.name.startswith(self.prefixes)
        return not noisy or record.levelno >= self.level


def levels_for(verbosity: int) -> dict[str, int]:
    """The level of the root logger ("") and of the loggers set apart from it."""
    if verbosity >= 2:
        return {"": logging.DEBUG, "fz_trio": logging.DEBUG,
                **dict.fromkeys(NOISY_LOGGERS, logging.DEBUG)}
    own = logging.DEBUG if verbosity == 1 else logging.INFO
    return {"": logging.INFO, "fz_trio": own, **dict.fromkeys(NOISY_LOGGERS, logging.WARNING)}


def setup_logging(verbosity: int = 0, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send log records to `stream` (standard error by default) at `verbosity`'s levels.

    Called again, it replaces the handler it installed before and leaves others alone (a test
    runner's capture handler, say)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_BelowLevelOf(NOISY_LOGGERS, levels_for(verbosity)[NOISY_LOGGERS[0]]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    for name, level in levels_for(verbosity).items():
        logging.getLogger(name or None).setLevel(level)

