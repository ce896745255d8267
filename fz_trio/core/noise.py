"""The Noise_IKpsk2 handshake of WireGuard, as pure functions and small state values.

The initiator builds an Initiation and keeps an `InitiatorState` until the Response arrives; the
responder turns an Initiation into a `ResponderState` and answers with a Response. Both ends finish
with a `TransportKeys`. mac1/mac2 and cookie handling live in `cookie.py`; who may talk to whom and
replay of timestamps are decided by the caller (`peer.py`).
"""

from __future__ import annotations

import struct

import attrs

from fz_trio.core.crypto import CryptoError, aead_decrypt, aead_encrypt, dh, hash_, kdf
from fz_trio.core.keys import public_key_of
from fz_trio.core.messages import Initiation, Response

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"

INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN_KEY, IDENTIFIER)

# TAI64 labels seconds from 1970 offset by 2^62 (plus the 10 leap seconds of 1970, as wireguard-go).
_TAI64_BASE = (1 << 62) + 10


class HandshakeError(Exception):
    """A handshake message that fails to decrypt or authenticate."""


def tai64n(wall_seconds: float) -> bytes:
    seconds = int(wall_seconds)
    nanos = int((wall_seconds - seconds) * 1e9)
    # Coarsen to ~16 ms, as wireguard-go does, so the timestamp leaks less about the clock.
    nanos -= nanos % (1 << 24)
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos)


@attrs.frozen
class TransportKeys:
    sending: bytes
    receiving: bytes
    local_index: int
    remote_index: int
    is_initiator: bool


@attrs.frozen
class InitiatorState:
    local_index: int
    chaining_key: bytes
    hash: bytes
    ephemeral_private: bytes


@attrs.frozen
class ConsumedInitiation:
    """What the responder learned from a valid Initiation, before it decides to answer."""

    remote_static: bytes
    remote_index: int
    timestamp: bytes
    remote_ephemeral: bytes
    chaining_key: bytes
    hash: bytes


def create_initiation(
    *,
    local_static_private: bytes,
    local_static_public: bytes,
    remote_static: bytes,
    static_static: bytes,
    local_index: int,
    ephemeral_private: bytes,
    timestamp: bytes,
) -> tuple[Initiation, InitiatorState]:
    """Build an Initiation without macs (the caller adds mac1/mac2)."""
    del local_static_private  # the static-static DH is precomputed per peer
    ck = INITIAL_CHAIN_KEY
    h = hash_(INITIAL_HASH, remote_static)
    ephemeral_public = public_key_of(ephemeral_private)
    (ck,) = kdf(ck, ephemeral_public, 1)
    h = hash_(h, ephemeral_public)
    ck, key = kdf(ck, dh(ephemeral_private, remote_static), 2)
    encrypted_static = aead_encrypt(key, 0, local_static_public, h)
    h = hash_(h, encrypted_static)
    ck, key = kdf(ck, static_static, 2)
    encrypted_timestamp = aead_encrypt(key, 0, timestamp, h)
    h = hash_(h, encrypted_timestamp)
    msg = Initiation(local_index, ephemeral_public, encrypted_static, encrypted_timestamp,
                     bytes(16), bytes(16))
    return msg, InitiatorState(local_index, ck, h, ephemeral_private)


def consume_initiation(
    msg: Initiation, *, local_static_private: bytes, local_static_public: bytes
) -> ConsumedInitiation:
    """Decrypt an Initiation addressed to us; the caller still checks the sender is a known peer."""
    try:
        ck = INITIAL_CHAIN_KEY
        h = hash_(INITIAL_HASH, local_static_public)
        (ck,) = kdf(ck, msg.ephemeral, 1)
        h = hash_(h, msg.ephemeral)
        ck, key = kdf(ck, dh(local_static_private, msg.ephemeral), 2)
        remote_static = aead_decrypt(key, 0, msg.encrypted_static, h)
        h = hash_(h, msg.encrypted_static)
        ck, key = kdf(ck, dh(local_static_private, remote_static), 2)
        timestamp = aead_decrypt(key, 0, msg.encrypted_timestamp, h)
        h = hash_(h, msg.encrypted_timestamp)
    except CryptoError as e:
        raise HandshakeError(f"initiation does not decrypt: {e}") from e
    return ConsumedInitiation(remote_static, msg.sender, timestamp, msg.ephemeral, ck, h)


def create_response(
    consumed: ConsumedInitiation,
    *,
    preshared_key: bytes,
    local_index: int,
    ephemeral_private: bytes,
) -> tuple[Response, TransportKeys]:
    """Answer a consumed Initiation: the Response (without macs) and the responder's keys."""
    ck, h = consumed.chaining_key, consumed.hash
    ephemeral_public = public_key_of(ephemeral_private)
    (ck,) = kdf(ck, ephemeral_public, 1)
    h = hash_(h, ephemeral_public)
    try:
        (ck,) = kdf(ck, dh(ephemeral_private, consumed.remote_ephemeral), 1)
        (ck,) = kdf(ck, dh(ephemeral_private, consumed.remote_static), 1)
    except CryptoError as e:
        raise HandshakeError(f"initiation carries a weak key: {e}") from e
    ck, tau, key = kdf(ck, preshared_key, 3)
    h = hash_(h, tau)
    encrypted_nothing = aead_encrypt(key, 0, b"", h)
    msg = Response(local_index, consumed.remote_index, ephemeral_public, encrypted_nothing,
                   bytes(16), bytes(16))
    receiving, sending = kdf(ck, b"", 2)
    return msg, TransportKeys(sending, receiving, local_index, consumed.remote_index, False)


def consume_response(
    msg: Response,
    state: InitiatorState,
    *,
    local_static_private: bytes,
    preshared_key: bytes,
) -> TransportKeys:
    ck, h = state.chaining_key, state.hash
    try:
        (ck,) = kdf(ck, msg.ephemeral, 1)
        h = hash_(h, msg.ephemeral)
        (ck,) = kdf(ck, dh(state.ephemeral_private, msg.ephemeral), 1)
        (ck,) = kdf(ck, dh(local_static_private, msg.ephemeral), 1)
        ck, tau, key = kdf(ck, preshared_key, 3)
        h = hash_(h, tau)
        aead_decrypt(key, 0, msg.encrypted_nothing, h)
    except CryptoError as e:
        raise HandshakeError(f"response does not decrypt: {e}") from e
    sending, receiving = kdf(ck, b"", 2)
    return TransportKeys(sending, receiving, state.local_index, msg.sender, True)
