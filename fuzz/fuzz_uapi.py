"""Coverage-guided fuzzing of the UAPI parsers (`fz_trio.uapi`): the requests `wg` sends to the
socket, and the replies a client reads back.

Each input is the bytes of one connection. They go to a `RequestReader` whole and again in pieces
(both must give the same events), to `parse_request`, and to the client's `parse_get_reply` and
`parse_status_reply`. A crash is: any exception from the reader, any exception other than
`UapiError` from the parse functions, a UapiError whose message is longer than 300 characters or
shows a key of the input, whole or in part (see `fuzzlib.check_message`), an errno other than
EINVAL or EPROTO for a request, events after a CLOSE, or a set request that does not come back
the same through `format_set` and `parse_request`.

    pip install atheris
    python fuzz/fuzz_uapi.py -max_total_time=60 /tmp/uapi-corpus fuzz/corpus/uapi
    python fuzz/fuzz_uapi.py crash-<sha1>            # reproduce one input

libFuzzer writes new inputs to the first directory (the seeds stay as committed) and a crash to
./crash-*; fuzz/fuzz_uapi.dict (the protocol's words) is used unless -dict= says otherwise.
"""

from __future__ import annotations

from typing import Any

import atheris
import fuzzlib

with atheris.instrument_imports(include=["fz_trio"]):
    from fz_trio.uapi import (
        CLOSE,
        EINVAL,
        EPROTO,
        RequestReader,
        SetRequest,
        UapiError,
        format_set,
        parse_get_reply,
        parse_request,
        parse_status_reply,
    )


def _describe(event: Any) -> Any:
    if isinstance(event, UapiError):
        return ("error", event.errno, event.message)
    return event


def _check_error(error: UapiError, text: str) -> None:
    fuzzlib.check_message(error.message, text)
    # str() adds " (errno=N)" to the message.
    fuzzlib.check_message(str(error), text,
                          fuzzlib.MAX_MESSAGE + len(str(error)) - len(error.message))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    text = data.decode("utf-8", "replace")
    reader = RequestReader()
    events = reader.feed(data)
    if CLOSE in events[:-1]:
        raise AssertionError("events after a CLOSE")
    for event in events:
        if isinstance(event, UapiError):
            if event.errno not in (EINVAL, EPROTO):
                raise AssertionError(f"a request answered errno={event.errno}")
            _check_error(event, text)
        elif isinstance(event, SetRequest) and parse_request(format_set(event)) != event:
            raise AssertionError("a set request does not survive format_set and parse_request")
    if reader.close_reason is not None:
        fuzzlib.check_message(reader.close_reason, text)
    # The same bytes as they might arrive from a socket: in pieces of one size.
    step = len(data) % 13 + 1
    pieces = RequestReader()
    split = [e for i in range(0, len(data), step) for e in pieces.feed(data[i:i + step])]
    if [_describe(e) for e in split] != [_describe(e) for e in events]:
        raise AssertionError(f"fed in pieces of {step} bytes, the events differ")
    for parse in (parse_request, parse_get_reply, parse_status_reply):
        try:
            parse(data)
        except UapiError as e:
            _check_error(e, text)


if __name__ == "__main__":
    fuzzlib.main(TestOneInput, __file__)
