"""PyNaCl's cffi-compiled libsodium module, which ships without types: only what fz_trio calls.

There is deliberately no `nacl/__init__.pyi` here: the rest of PyNaCl is typed (it has py.typed)
and must keep coming from the installed package; this directory only adds `_sodium` beside it.
"""

from typing import final

from _typeshed import ReadableBuffer

@final
class _CData:
    """A cffi pointer or array; pointer arithmetic gives another pointer, and an integer cdata
    (from `ffi.cast("uintptr_t", ...)`) converts with int()."""

    def __add__(self, offset: int, /) -> _CData: ...
    def __int__(self) -> int: ...

@final
class _FFI:
    NULL: _CData
    def from_buffer(self, python_buffer: ReadableBuffer, /) -> _CData: ...
    def cast(self, cdecl: str, value: _CData | int, /) -> _CData: ...
    def addressof(self, lib: _Lib, name: str, /) -> _CData: ...

# libsodium's own parameter names. cffi takes `bytes` for a `const unsigned char *` directly;
# anything writable goes through `ffi.from_buffer`. Both return 0, or -1 for a tag that fails.
@final
class _Lib:
    def crypto_aead_chacha20poly1305_ietf_encrypt(
        self, c: _CData, clen_p: _CData, m: _CData, mlen: int, ad: _CData | bytes, adlen: int,
        nsec: _CData, npub: bytes, k: bytes, /,
    ) -> int: ...
    def crypto_aead_chacha20poly1305_ietf_decrypt(
        self, m: _CData, mlen_p: _CData, nsec: _CData, c: _CData, clen: int,
        ad: _CData | bytes, adlen: int, npub: bytes, k: bytes, /,
    ) -> int: ...

ffi: _FFI
lib: _Lib
