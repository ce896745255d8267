"""What the pure-Python harnesses share: starting libFuzzer, and the oracle for error messages.

`main(test_one_input, __file__)` runs libFuzzer through atheris with the command line's flags
(`-runs=N`, `-max_total_time=S`, corpus directories, a crash file to reproduce) and, unless the
command line names one, the harness's dictionary `fuzz/<harness>.dict` if it exists.

`check_message(message, text)` is the redaction rule seen from outside: an error message about
input `text` is at most MAX_MESSAGE characters and holds no key that appears in `text` (44
base64 characters decoding to 32 bytes, or 64 hex digits as the UAPI writes keys), nor a piece of
one (FRAGMENT characters of it, not all decimal digits) that the input does not also hold outside
its keys.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

MAX_MESSAGE = 300
FRAGMENT = 16

# Overlapping windows: every key that a longer run of such characters contains.
_B64_KEY = re.compile(r"(?=([A-Za-z0-9+/]{43}=))")
_HEX_KEY = re.compile(r"(?=([0-9a-fA-F]{64}))")


class Leak(AssertionError):
    """An error message that is too long or shows key material from the input."""


def key_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every key-shaped window of `text`."""
    spans = [(m.start(), m.start() + 44) for m in _B64_KEY.finditer(text)]
    spans += [(m.start(), m.start() + 64) for m in _HEX_KEY.finditer(text)]
    return spans


def check_message(message: str, text: str, limit: int = MAX_MESSAGE) -> None:
    if len(message) > limit:
        raise Leak(f"a message of {len(message)} characters: {message[:400]!r}")
    spans = key_spans(text)
    if not spans:
        return
    masked = list(text)
    for start, end in spans:
        masked[start:end] = "\0" * (end - start)
    elsewhere = "".join(masked)
    for start, end in spans:
        key = text[start:end]
        if key in message or key.rstrip("=") in message:
            raise Leak(f"a key of the input in the message: {message!r}")
        for i in range(len(key) - FRAGMENT + 1):
            piece = key[i:i + FRAGMENT]
            # All digits: messages print numbers of their own (2**64 - 1 has 20 digits).
            if piece in message and piece not in elsewhere and not piece.isdigit():
                raise Leak(f"{piece!r}, part of a key of the input, in the message: {message!r}")


def main(test_one_input: Callable[[bytes], None], harness_file: str) -> None:
    import atheris

    argv = list(sys.argv)
    dictionary = os.path.splitext(os.path.abspath(harness_file))[0] + ".dict"
    if os.path.exists(dictionary) and not any(a.startswith("-dict=") for a in argv[1:]):
        argv.insert(1, f"-dict={dictionary}")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
