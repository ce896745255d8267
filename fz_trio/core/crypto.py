"""The cryptographic primitives WireGuard is built from, as plain functions over bytes.

Handshake primitives go through PyNaCl's public bindings and hashlib. The transport AEAD calls
libsodium through PyNaCl's cffi handle (`nacl._sodium`, a private API: that is why PyNaCl is pinned)
so that packets are sealed and opened in place in caller-owned buffers, without a `bytes` object per
packet.
"""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings
import nacl.exceptions
from nacl._sodium import ffi, lib

TAG_LEN = 16
HASH_LEN = 32
MAC_LEN = 16

_ZERO_NONCE = bytes(12)


class CryptoError(Exception):
    """Authentication failed or a key agreement produced a weak result."""


def hash_(*parts: bytes | bytearray | memoryview) -> bytes:
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=MAC_LEN).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf(chaining_key: bytes, data: bytes, outputs: int) -> list[bytes]:
    """HKDF with HMAC-BLAKE2s, returning 1 to 3 32-byte outputs."""
    prk = hmac_(chaining_key, data)
    out: list[bytes] = []
    previous = b""
    for i in range(1, outputs + 1):
        previous = hmac_(prk, previous + bytes([i]))
        out.append(previous)
    return out


def dh(private_key: bytes, public_key: bytes) -> bytes:
    """X25519; a low-order peer point (all-zero result) is refused as the protocol requires."""
    try:
        shared = nacl.bindings.crypto_scalarmult(private_key, public_key)
    except (RuntimeError, nacl.exceptions.RuntimeError) as e:  # libsodium refuses all-zero output
        raise CryptoError("X25519 produced a low-order result") from e
    if not any(shared):
        raise CryptoError("X25519 produced a low-order result")
    return shared


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    nonce = b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")
    return nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    nonce = b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")
    try:
        return nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except nacl.exceptions.CryptoError as e:
        raise CryptoError("authentication failed") from e


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, aad, nonce, key
        )
    except nacl.exceptions.CryptoError as e:
        raise CryptoError("authentication failed") from e


# --- transport data, in place -------------------------------------------------------------------

# No module-level scratch buffers: later data paths seal from several threads at once.


def seal_in_place(key: bytes, counter: int, buffer: bytearray, offset: int, length: int) -> int:
    """Encrypt `buffer[offset:offset+length]` in place and write the tag right after it.

    Returns the ciphertext length (length + 16); the buffer must have room for the tag.
    """
    nonce = b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")
    ptr = ffi.from_buffer(buffer) + offset
    lib.crypto_aead_chacha20poly1305_ietf_encrypt(
        ptr, ffi.NULL, ptr, length, ffi.NULL, 0, ffi.NULL, nonce, key
    )
    return length + TAG_LEN


def seal_many(key: bytes, counter: int, buffer: bytearray, offset: int, stride: int,
              length: int, count: int) -> None:
    """`seal_in_place` for `count` equal-sized plaintexts `stride` bytes apart, the first at
    `offset`, under counters `counter`, `counter + 1`, ... (one loop, one buffer lookup)."""
    base = ffi.from_buffer(buffer)
    encrypt = lib.crypto_aead_chacha20poly1305_ietf_encrypt
    null = ffi.NULL
    for k in range(count):
        ptr = base + (offset + k * stride)
        encrypt(ptr, null, ptr, length, null, 0, null,
                b"\x00\x00\x00\x00" + (counter + k).to_bytes(8, "little"), key)


def open_into(key: bytes, counter: int, out: bytearray, message: bytes | bytearray | memoryview,
              offset: int, length: int) -> int:
    """Decrypt and authenticate `message[offset:offset+length]` into `out`; returns the
    plaintext length. Raises CryptoError when the tag does not verify (`out` is then garbage)."""
    nonce = b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")
    rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
        ffi.from_buffer(out), ffi.NULL, ffi.NULL, ffi.from_buffer(message) + offset, length,
        ffi.NULL, 0, nonce, key,
    )
    if rc != 0:
        raise CryptoError("authentication failed")
    return length - TAG_LEN


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
