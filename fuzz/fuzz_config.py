"""Coverage-guided fuzzing of the wg-quick configuration parser (`fz_trio.config.parse_config`).

Each input is the bytes of a config file, decoded as UTF-8 (invalid sequences become U+FFFD, as
text a file could hold). A crash is: any exception other than `ConfigError`, or a ConfigError
whose message is longer than 300 characters or shows a key of the input, whole or in part (see
`fuzzlib.check_message`). A config that parses must also parse again to the same value.

    pip install atheris
    python fuzz/fuzz_config.py -max_total_time=60 /tmp/config-corpus fuzz/corpus/config
    python fuzz/fuzz_config.py crash-<sha1>          # reproduce one input

libFuzzer writes new inputs to the first directory (the seeds stay as committed) and a crash to
./crash-*; fuzz/fuzz_config.dict (the format's words) is used unless -dict= says otherwise.
"""

from __future__ import annotations

import atheris
import fuzzlib

with atheris.instrument_imports(include=["fz_trio"]):
    from fz_trio.config import ConfigError, parse_config


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    text = data.decode("utf-8", "replace")
    try:
        config = parse_config(text, "wg0.conf")
    except ConfigError as e:
        fuzzlib.check_message(e.message, text)
        # str() adds "wg0.conf:LINE: " to the message.
        fuzzlib.check_message(str(e), text, fuzzlib.MAX_MESSAGE + len(str(e)) - len(e.message))
        return
    if parse_config(text, "wg0.conf") != config:
        raise AssertionError("the same text parsed to two different configs")


if __name__ == "__main__":
    fuzzlib.main(TestOneInput, __file__)
