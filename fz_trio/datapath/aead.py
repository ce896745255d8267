"""ChaCha20-Poly1305 (IETF) in place in caller-owned buffers, from the libsodium PyNaCl bundles.

The calls go through PyNaCl's cffi handle (`nacl._sodium`, a private API: that is why PyNaCl is
pinned), so packets are sealed and opened where they lie, without a `bytes` object per packet.
The native kernels call the very same libsodium functions through the pointers `pointers()` gives.
No cipher is implemented here.
"""

from __future__ import annotations

from nacl._sodium import ffi, lib

TAG_LEN = 16
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_ENCRYPT = "crypto_aead_chacha20poly1305_ietf_encrypt"
_DECRYPT = "crypto_aead_chacha20poly1305_ietf_decrypt"


def nonce(counter: int) -> bytes:
    """WireGuard's transport nonce: 32 zero bits, then the counter as 64-bit little-endian."""
    return _NONCE_PREFIX + counter.to_bytes(8, "little")


def seal_in_place(key: bytes, counter: int, buffer: bytearray, offset: int, length: int) -> None:
    """Encrypt `buffer[offset:offset+length]` in place and write the tag right after it (the
    caller has checked that the buffer has room for it)."""
    ptr = ffi.from_buffer(buffer) + offset
    lib.crypto_aead_chacha20poly1305_ietf_encrypt(
        ptr, ffi.NULL, ptr, length, ffi.NULL, 0, ffi.NULL, nonce(counter), key)


def open_into(key: bytes, counter: int, out: bytearray, message: bytes | bytearray | memoryview,
              offset: int, length: int) -> bool:
    """Decrypt and authenticate `message[offset:offset+length]` (ciphertext + tag) into `out`;
    False when the tag does not verify (`out` is then garbage)."""
    rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
        ffi.from_buffer(out), ffi.NULL, ffi.NULL, ffi.from_buffer(message) + offset, length,
        ffi.NULL, 0, nonce(counter), key)
    return rc == 0


def pointers() -> tuple[int, int]:
    """The addresses of libsodium's combined encrypt and decrypt functions, for the kernels."""
    return (int(ffi.cast("uintptr_t", ffi.addressof(lib, _ENCRYPT))),
            int(ffi.cast("uintptr_t", ffi.addressof(lib, _DECRYPT))))
