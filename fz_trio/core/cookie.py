"""mac1/mac2 and the cookie mechanism that keeps a loaded responder from doing DH for spoofers.

Every handshake message carries mac1 = MAC(HASH("mac1----" || receiver's static), msg[:-32]),
which proves the sender knows whom it talks to. A responder under load answers an initiation
without a valid mac2 with a CookieReply instead of doing the handshake; the initiator then
adds mac2 = MAC(cookie, msg[:-16]) until the cookie expires.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import attrs

from fz_trio.core.crypto import (
    CryptoError,
    constant_time_equal,
    hash_,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)
from fz_trio.core.messages import CookieReply
from fz_trio.core.timers import COOKIE_REFRESH_TIME

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"


def mac1_key(static_public: bytes) -> bytes:
    return hash_(LABEL_MAC1, static_public)


def cookie_key(static_public: bytes) -> bytes:
    return hash_(LABEL_COOKIE, static_public)


def address_bytes(endpoint: tuple[str, int]) -> bytes:
    host, port = endpoint[0], endpoint[1]
    return ipaddress.ip_address(host).packed + port.to_bytes(2, "big")


@attrs.define
class CookieJar:
    """The initiator's side for one peer: stamps macs, remembers the last mac1 and the cookie."""

    remote_static: bytes
    _mac1_key: bytes = attrs.field(init=False)
    _cookie_key: bytes = attrs.field(init=False)
    last_mac1: bytes | None = None
    cookie: bytes | None = None
    cookie_time: float = 0.0

    def __attrs_post_init__(self) -> None:
        self._mac1_key = mac1_key(self.remote_static)
        self._cookie_key = cookie_key(self.remote_static)

    def stamp(self, message: bytes, now: float) -> bytes:
        """Fill in mac1 and (with a fresh cookie) mac2 of a packed handshake message."""
        body = message[:-32]
        mac1 = mac(self._mac1_key, body)
        self.last_mac1 = mac1
        if self.cookie is not None and now - self.cookie_time < COOKIE_REFRESH_TIME:
            mac2 = mac(self.cookie, body + mac1)
        else:
            mac2 = bytes(16)
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie of a valid reply; False when it does not decrypt with our last mac1."""
        if self.last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.encrypted_cookie,
                                   self.last_mac1)
        except CryptoError:
            return False
        self.cookie = cookie
        self.cookie_time = now
        return True


@attrs.define
class CookieChecker:
    """The responder's side for the local identity: verifies macs, issues cookies."""

    local_static: bytes
    random_bytes: Callable[[int], bytes]
    _mac1_key: bytes = attrs.field(init=False)
    _cookie_key: bytes = attrs.field(init=False)
    _secret: bytes = attrs.field(init=False, default=b"")
    _secret_time: float = attrs.field(init=False, default=float("-inf"))

    def __attrs_post_init__(self) -> None:
        self._mac1_key = mac1_key(self.local_static)
        self._cookie_key = cookie_key(self.local_static)

    def mac1_valid(self, message: bytes) -> bool:
        return constant_time_equal(mac(self._mac1_key, message[:-32]), message[-32:-16])

    def _current_cookie(self, source: tuple[str, int], now: float) -> bytes:
        if now - self._secret_time >= COOKIE_REFRESH_TIME:
            self._secret = self.random_bytes(32)
            self._secret_time = now
        return mac(self._secret, address_bytes(source))

    def mac2_valid(self, message: bytes, source: tuple[str, int], now: float) -> bool:
        expected = mac(self._current_cookie(source, now), message[:-16])
        return constant_time_equal(expected, message[-16:])

    def make_reply(self, message: bytes, sender_index: int, source: tuple[str, int],
                   now: float) -> CookieReply:
        nonce = self.random_bytes(24)
        cookie = self._current_cookie(source, now)
        encrypted = xaead_encrypt(self._cookie_key, nonce, cookie, message[-32:-16])
        return CookieReply(sender_index, nonce, encrypted)
