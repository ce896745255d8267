"""What an error message may show of outside input: never key material, never much of anything.

The one home of the rule for the parsers of outside input: wg-quick files (`fz_trio.config`) and
the userspace API (`fz_trio.uapi`, and the socket around it). A message about a file or a request
quotes what it says only through `shown`, includes a value parser's reason only through
`reason`, and is cut by `bounded`, so a config file or a request pasted into a bug report, and
the logs, never give a key away:

- key-like: a run of `KEY_RUN` (32) or more characters of the base64 alphabet, with any "="
  after it. That holds a key in both spellings (44 base64 characters, 64 hex digits as the UAPI
  writes keys: a long enough number is one too) and also one with a few characters lost, or
  half of a hex key. Such a run is never shown.
- `shown(text)`: part of the input, fit to quote: key-like runs replaced by "<key not shown>",
  characters that are not printable escaped, at most `MAX_SHOWN` (40) characters and "…".
- `reason(value, error)`: a value parser's message, which may quote the value or pieces of it
  (a piece of a key is no key-like run any more), if the value holds no key-like run; else
  "a key-like value (not shown)".
- `bounded(message)`: key-like runs replaced, at most `MAX_MESSAGE` (300) characters, the "…"
  of a cut message included.

Pure: no IO.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["KEY_LIKE", "KEY_RUN", "MAX_MESSAGE", "MAX_SHOWN", "bounded", "has_key_like",
           "reason", "shown"]

KEY_RUN: Final = 32
MAX_SHOWN: Final = 40
MAX_MESSAGE: Final = 300
KEY_LIKE: Final = "a key-like value (not shown)"
_NOT_SHOWN: Final = "<key not shown>"
_CUT: Final = "…"

_KEY_LIKE_RE: Final = re.compile(rf"[A-Za-z0-9+/]{{{KEY_RUN},}}=*")


def has_key_like(text: str) -> bool:
    """Whether `text` holds a key-like run (see the module docstring)."""
    return _KEY_LIKE_RE.search(text) is not None


def _without_keys(text: str) -> str:
    return _KEY_LIKE_RE.sub(_NOT_SHOWN, text)


def _escaped(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(text: str) -> str:
    """Part of the input, fit to quote in a message."""
    text = _escaped(_without_keys(text))
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + _CUT


def reason(value: str, error: BaseException | str) -> str:
    """Why a value parser refused `value`: its message, unless `value` holds a key-like run."""
    return KEY_LIKE if has_key_like(value) else str(error)


def bounded(message: str) -> str:
    """A whole message: key-like runs replaced, at most MAX_MESSAGE characters."""
    message = _without_keys(message)
    if len(message) <= MAX_MESSAGE:
        return message
    return message[:MAX_MESSAGE - len(_CUT)] + _CUT
