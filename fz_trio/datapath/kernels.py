"""Which twin of the batch kernels runs: the native extension, or the Python specification.

The native module `fz_trio.datapath._kernels` is built by setuptools when a compiler is present
(an optional extension); it calls libsodium through the function pointers of PyNaCl's bundled
library, checked here with a known-answer test before it is trusted. `FZ_TRIO_PUREPYTHON=1` forces
the Python twin. `IMPLEMENTATION` says which one is active ("native" or "python") and `REASON`
why, for the start-up log, `fz-trio --version` and the stats.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import nacl.bindings

from fz_trio.datapath import _pykernels, aead, replay
from fz_trio.datapath._pykernels import Buffer, OpenResult


class _Twin(Protocol):
    """What both twins provide, in `_pykernels`' terms (the native stub accepts as much or
    more): typing the chosen module by it holds both twins to one contract, and gives the
    callers real signatures instead of a module's Any attributes."""

    def seal_packets(self, packets: Sequence[Buffer], first: int, count: int, dst: bytearray,
                     offset: int, stride: int, padded_len: int, key: bytes, remote_index: int,
                     counter: int) -> None: ...

    def seal_segments(self, packet: Buffer, gso_size: int, first: int, count: int,
                      dst: bytearray, offset: int, stride: int, padded_len: int, key: bytes,
                      remote_index: int, counter: int) -> None: ...

    def open_run(self, buffer: Buffer, start: int, nbytes: int, size: int, receiver: int,
                 key: bytes, window: bytearray, counter_limit: int, allowed_v4: bytes,
                 allowed_v6: bytes) -> OpenResult: ...

    def coalesce(self, packets: Sequence[bytearray], udp: bool
                 ) -> list[tuple[bytes, bytes | bytearray]]: ...


_KAT_KEY = bytes(range(32))
_KAT_COUNTER = 0x0102030405060708
_KAT_PLAIN = bytes(range(48)) * 3


def _known_answer(module: _Twin) -> bool:
    """Seal and open one message with `module` and compare with PyNaCl's own AEAD."""
    expected = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        _KAT_PLAIN, None, aead.nonce(_KAT_COUNTER), _KAT_KEY)
    out = bytearray(len(_KAT_PLAIN) + 32)
    module.seal_packets([_KAT_PLAIN], 0, 1, out, 0, len(out), len(_KAT_PLAIN), _KAT_KEY, 7,
                        _KAT_COUNTER)
    if bytes(out[16:]) != expected or bytes(out[:4]) != b"\x04\x00\x00\x00":
        return False
    opened = module.open_run(bytes(out), 0, len(out), len(out), 7, _KAT_KEY,
                             bytearray(replay.WINDOW_BYTES), 1 << 64, b"", b"")
    tampered = bytearray(out)
    tampered[-1] ^= 1
    forged = module.open_run(bytes(tampered), 0, len(out), len(out), 7, _KAT_KEY,
                             bytearray(replay.WINDOW_BYTES), 1 << 64, b"", b"")
    # The plaintext is no IP packet: authenticated, then dropped as not_ip.
    return opened[3] == len(out) and opened[7] == 1 and forged[6] == 1 and forged[3] == 0


def _load() -> tuple[_Twin, str, str]:
    if os.environ.get("FZ_TRIO_PUREPYTHON") == "1":
        return _pykernels, "python", "FZ_TRIO_PUREPYTHON=1"
    try:
        from fz_trio.datapath import _kernels
    except ImportError:
        return _pykernels, "python", "the native extension was not built (no compiler?)"
    _kernels.init(*aead.pointers())
    if not _known_answer(_kernels):
        return _pykernels, "python", "the native extension failed its known-answer test"
    return _kernels, "native", "native extension"


_module, IMPLEMENTATION, REASON = _load()

seal_packets = _module.seal_packets
seal_segments = _module.seal_segments
open_run = _module.open_run
coalesce = _module.coalesce
