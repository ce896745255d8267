"""Type stub of the native batch kernels (`_kernels.c`); `_pykernels` is their specification."""

from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview

def init(encrypt_ptr: int, decrypt_ptr: int) -> None:
    """Take the addresses of libsodium's combined crypto_aead_chacha20poly1305_ietf_encrypt and
    _decrypt (`fz_trio.datapath.aead.pointers()`); the other functions raise RuntimeError
    before this was called."""

def seal_packets(packets: Sequence[Buffer], first: int, count: int, dst: bytearray, offset: int,
                 stride: int, padded_len: int, key: Buffer, remote_index: int,
                 counter: int) -> None: ...
def seal_segments(packet: Buffer, gso_size: int, first: int, count: int, dst: bytearray,
                  offset: int, stride: int, padded_len: int, key: Buffer, remote_index: int,
                  counter: int) -> None: ...
def open_run(buffer: Buffer, start: int, nbytes: int, size: int, receiver: int, key: Buffer,
             window: bytearray, counter_limit: int, allowed_v4: Buffer, allowed_v6: Buffer
             ) -> tuple[int, list[bytearray], list[int], int, int, int, int, int]: ...
def coalesce(packets: Sequence[Buffer], udp: bool) -> list[tuple[bytes, bytes | bytearray]]: ...
