"""WireGuard keys, once: generate, clamp, derive the public key, and the two text forms: base64
(config files, wg(8)'s output) and lowercase hex (the userspace API).

Config, the command line, the core's ephemeral keys and the lab's test keys all come here.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import nacl.bindings

KEY_LEN = 32
_KEY_B64_LEN = 44  # 32 bytes -> 43 base64 characters + one '='
_KEY_HEX_LEN = 2 * KEY_LEN
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def clamp(raw: bytes) -> bytes:
    """32 bytes made into an X25519 private key, as `wg genkey` and Curve25519 clamp them."""
    if len(raw) != KEY_LEN:
        raise ValueError(f"a key must be {KEY_LEN} bytes, got {len(raw)}")
    key = bytearray(raw)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def generate_private_key(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A new private key, the same form `wg genkey` prints; `random_bytes` for determinism."""
    return clamp(random_bytes(KEY_LEN))


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key of `private_key` (like `wg pubkey`)."""
    if len(private_key) != KEY_LEN:
        raise ValueError(f"a key must be {KEY_LEN} bytes, got {len(private_key)}")
    return nacl.bindings.crypto_scalarmult_base(private_key)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Decode a key: canonical base64 of exactly 32 bytes, as wg(8) requires. The message of the
    ValueError never echoes the text (it may be a private key)."""
    if len(text) != _KEY_B64_LEN:
        raise ValueError(
            f"a key must be {_KEY_B64_LEN} base64 characters encoding {KEY_LEN} bytes, "
            f"got {len(text)} characters"
        )
    if text[-1] != "=" or "=" in text[:-1]:
        raise ValueError(f"a key must be {_KEY_B64_LEN} base64 characters ending in one '='")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise ValueError("a key must be valid base64") from None
    # b64decode ignores the two spare bits of the last character; wg(8) rejects keys where they
    # are set, so two spellings of one key cannot both be accepted.
    if len(raw) != KEY_LEN or encode_key(raw) != text:
        raise ValueError("a key must be canonical base64 of 32 bytes")
    return raw


def encode_hex_key(key: bytes) -> str:
    """The UAPI's spelling of a key: 64 lowercase hex digits."""
    if len(key) != KEY_LEN:
        raise ValueError(f"a key must be {KEY_LEN} bytes, got {len(key)}")
    return key.hex()


def decode_hex_key(text: str) -> bytes:
    """Decode a UAPI key: exactly 64 hex digits, either case (as wireguard-go reads them). The
    message of the ValueError never echoes the text (it may be a private key)."""
    if len(text) != _KEY_HEX_LEN:
        raise ValueError(
            f"a key must be {_KEY_HEX_LEN} hex digits, got {len(text)} characters")
    # bytes.fromhex alone would also skip blanks between the digit pairs.
    if not _HEX_DIGITS.issuperset(text):
        raise ValueError(f"a key must be {_KEY_HEX_LEN} hex digits (0-9, a-f)")
    return bytes.fromhex(text)
