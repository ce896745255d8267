"""Noise IKpsk2 as WireGuard uses it, plus mac1/mac2 and cookie replies.

Besides self-consistency (both ends derive matching keys), a known-answer test re-derives every
byte of the handshake with an independent, straight-from-the-whitepaper implementation written
here from hashlib, a hand-rolled HMAC and nacl.bindings: a mistake made symmetrically on both
ends of the core (a swapped key, a wrong label, a missing hash step) would still interoperate with
itself, but not with this.
"""

from __future__ import annotations

import hashlib
import struct

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fz_trio.core import crypto, generate_private_key, keys, noise
from fz_trio.core.cookie import CookieChecker, CookieJar
from fz_trio.core.messages import CookieReply, Initiation, Response, parse_handshake
from fz_trio.core.timers import COOKIE_REFRESH_TIME
from fz_trio.lab.sim import det_key, det_random

# --- an independent reference implementation (whitepaper, section 5.4) ------------------------


def ref_hash(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def ref_hmac(key: bytes, data: bytes) -> bytes:
    """RFC 2104 HMAC over BLAKE2s-256 (block size 64), written out by hand."""
    block = 64
    if len(key) > block:
        key = ref_hash(key)
    key = key.ljust(block, b"\x00")
    inner = ref_hash(bytes(k ^ 0x36 for k in key), data)
    return ref_hash(bytes(k ^ 0x5C for k in key), inner)


def ref_kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = ref_hmac(key, data)
    t1 = ref_hmac(t0, b"\x01")
    t2 = ref_hmac(t0, t1 + b"\x02")
    t3 = ref_hmac(t0, t2 + b"\x03")
    return [t1, t2, t3][:n]


def ref_aead(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    nonce = bytes(4) + struct.pack("<Q", counter)
    return nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def ref_dh(private: bytes, public: bytes) -> bytes:
    return nacl.bindings.crypto_scalarmult(private, public)


def ref_pub(private: bytes) -> bytes:
    return nacl.bindings.crypto_scalarmult_base(private)


def ref_mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def ref_handshake(si: bytes, sr: bytes, ei: bytes, er: bytes, psk: bytes, ts: bytes,
                  i_index: int, r_index: int) -> dict[str, bytes]:
    """The initiation and response datagrams (mac2 zero) and the four transport keys."""
    spub_i, spub_r, epub_i, epub_r = ref_pub(si), ref_pub(sr), ref_pub(ei), ref_pub(er)
    # Initiator -> responder
    c = ref_hash(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
    h = ref_hash(c, b"WireGuard v1 zx2c4 Jason@zx2c4.com")
    h = ref_hash(h, spub_r)
    (c,) = ref_kdf(c, epub_i, 1)
    h = ref_hash(h, epub_i)
    c, k = ref_kdf(c, ref_dh(ei, spub_r), 2)
    enc_static = ref_aead(k, 0, spub_i, h)
    h = ref_hash(h, enc_static)
    c, k = ref_kdf(c, ref_dh(si, spub_r), 2)
    enc_ts = ref_aead(k, 0, ts, h)
    h = ref_hash(h, enc_ts)
    body = struct.pack("<BxxxI", 1, i_index) + epub_i + enc_static + enc_ts
    mac1 = ref_mac(ref_hash(b"mac1----", spub_r), body)
    initiation = body + mac1 + bytes(16)
    # Responder -> initiator
    (c,) = ref_kdf(c, epub_r, 1)
    h = ref_hash(h, epub_r)
    (c,) = ref_kdf(c, ref_dh(er, epub_i), 1)
    (c,) = ref_kdf(c, ref_dh(er, spub_i), 1)
    c, tau, k = ref_kdf(c, psk, 3)
    h = ref_hash(h, tau)
    enc_nothing = ref_aead(k, 0, b"", h)
    body = struct.pack("<BxxxII", 2, r_index, i_index) + epub_r + enc_nothing
    mac1 = ref_mac(ref_hash(b"mac1----", spub_i), body)
    response = body + mac1 + bytes(16)
    t_send_i, t_recv_i = ref_kdf(c, b"", 2)
    return {"initiation": initiation, "response": response,
            "i_send": t_send_i, "i_recv": t_recv_i, "r_send": t_recv_i, "r_recv": t_send_i}


# --- helpers driving the core -----------------------------------------------------------------


class Side:
    def __init__(self, seed: str) -> None:
        self.private = det_key(seed)
        self.public = keys.public_key_of(self.private)


def initiate(i: Side, r: Side, *, ei: bytes, ts: bytes = noise.tai64n(1_700_000_000.0),
             index: int = 1) -> tuple[Initiation, noise.InitiatorState]:
    return noise.create_initiation(
        local_static_private=i.private, local_static_public=i.public, remote_static=r.public,
        static_static=crypto.dh(i.private, r.public), local_index=index, ephemeral_private=ei,
        timestamp=ts,
    )


def full_handshake(i: Side, r: Side, *, psk_i: bytes = bytes(32), psk_r: bytes = bytes(32),
                   seed: str = "eph") -> tuple[noise.TransportKeys, noise.TransportKeys]:
    rnd = det_random(seed)
    msg, state = initiate(i, r, ei=generate_private_key(rnd), index=11)
    consumed = noise.consume_initiation(msg, local_static_private=r.private,
                                        local_static_public=r.public)
    assert consumed.remote_static == i.public
    response, r_keys = noise.create_response(consumed, preshared_key=psk_r, local_index=22,
                                             ephemeral_private=generate_private_key(rnd))
    i_keys = noise.consume_response(response, state, local_static_private=i.private,
                                    preshared_key=psk_i)
    return i_keys, r_keys


ALICE, BOB, EVE = Side("alice"), Side("bob"), Side("eve")
PSK = bytes(range(32))


# --- primitives -------------------------------------------------------------------------------


def test_primitives_match_the_reference() -> None:
    key, data = bytes(range(32)), b"some data" * 20
    assert crypto.hash_(data[:5], data[5:]) == ref_hash(data)
    assert crypto.hmac_(key, data) == ref_hmac(key, data)
    for n in (1, 2, 3):
        assert crypto.kdf(key, data, n) == ref_kdf(key, data, n)
    assert crypto.mac(key, data) == ref_mac(key, data)
    assert crypto.aead_encrypt(key, 7, data, b"ad") == ref_aead(key, 7, data, b"ad")
    assert crypto.aead_decrypt(key, 7, ref_aead(key, 7, data, b"ad"), b"ad") == data
    with pytest.raises(crypto.CryptoError):
        crypto.aead_decrypt(key, 8, ref_aead(key, 7, data, b"ad"), b"ad")
    assert noise.INITIAL_CHAIN_KEY == ref_hash(noise.CONSTRUCTION)


# --- known answer -----------------------------------------------------------------------------


@pytest.mark.parametrize("psk", [bytes(32), PSK], ids=["no-psk", "psk"])
def test_known_answer_against_independent_implementation(psk: bytes) -> None:
    ei, er = det_key("ei"), det_key("er")
    ts = noise.tai64n(1_712_345_678.5)
    expected = ref_handshake(ALICE.private, BOB.private, ei, er, psk, ts, 0x11223344, 0x55667788)

    msg, state = initiate(ALICE, BOB, ei=ei, ts=ts, index=0x11223344)
    initiation = CookieJar(BOB.public).stamp(msg.pack(), now=0.0)
    assert initiation == expected["initiation"]

    consumed = noise.consume_initiation(parse_handshake(initiation),  # type: ignore[arg-type]
                                        local_static_private=BOB.private,
                                        local_static_public=BOB.public)
    assert consumed.remote_static == ALICE.public
    assert consumed.timestamp == ts
    assert consumed.remote_index == 0x11223344
    resp, r_keys = noise.create_response(consumed, preshared_key=psk, local_index=0x55667788,
                                         ephemeral_private=er)
    response = CookieJar(ALICE.public).stamp(resp.pack(), now=0.0)
    assert response == expected["response"]

    i_keys = noise.consume_response(parse_handshake(response), state,  # type: ignore[arg-type]
                                    local_static_private=ALICE.private, preshared_key=psk)
    assert (i_keys.sending, i_keys.receiving) == (expected["i_send"], expected["i_recv"])
    assert (r_keys.sending, r_keys.receiving) == (expected["r_send"], expected["r_recv"])
    assert (i_keys.local_index, i_keys.remote_index, i_keys.is_initiator) == (
        0x11223344, 0x55667788, True)
    assert (r_keys.local_index, r_keys.remote_index, r_keys.is_initiator) == (
        0x55667788, 0x11223344, False)



# --- self-consistency -------------------------------------------------------------------------


@pytest.mark.parametrize("psk", [bytes(32), PSK], ids=["no-psk", "psk"])
def test_both_ends_derive_matching_keys(psk: bytes) -> None:
    i_keys, r_keys = full_handshake(ALICE, BOB, psk_i=psk, psk_r=psk)
    assert i_keys.sending == r_keys.receiving
    assert i_keys.receiving == r_keys.sending
    assert i_keys.sending != i_keys.receiving
    assert (i_keys.local_index, i_keys.remote_index) == (11, 22)
    assert (r_keys.local_index, r_keys.remote_index) == (22, 11)


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.text(min_size=1, max_size=8))
def test_every_handshake_gives_fresh_matching_keys(psk: bytes, seed: str) -> None:
    i_keys, r_keys = full_handshake(ALICE, BOB, psk_i=psk, psk_r=psk, seed=seed)
    assert (i_keys.sending, i_keys.receiving) == (r_keys.receiving, r_keys.sending)
    other_i, _ = full_handshake(ALICE, BOB, psk_i=psk, psk_r=psk, seed=seed + "x")
    assert other_i.sending != i_keys.sending


def test_psk_changes_the_keys() -> None:
    with_psk, _ = full_handshake(ALICE, BOB, psk_i=PSK, psk_r=PSK)
    without, _ = full_handshake(ALICE, BOB)
    assert with_psk.sending != without.sending


@pytest.mark.parametrize(("psk_i", "psk_r"), [(PSK, bytes(32)), (bytes(32), PSK),
                                              (PSK, PSK[::-1])])
def test_psk_mismatch_fails(psk_i: bytes, psk_r: bytes) -> None:
    with pytest.raises(noise.HandshakeError):
        full_handshake(ALICE, BOB, psk_i=psk_i, psk_r=psk_r)


def test_initiation_for_someone_else_fails() -> None:
    msg, _ = initiate(ALICE, BOB, ei=det_key("e"))
    with pytest.raises(noise.HandshakeError):
        noise.consume_initiation(msg, local_static_private=EVE.private,
                                 local_static_public=EVE.public)


def test_tampered_initiation_fails() -> None:
    data = initiate(ALICE, BOB, ei=det_key("e"))[0].pack()
    for position in range(8, 116):  # ephemeral, encrypted static, encrypted timestamp
        for bit in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[position] ^= bit
            msg = parse_handshake(bytes(tampered))
            with pytest.raises(noise.HandshakeError):
                noise.consume_initiation(msg, local_static_private=BOB.private,  # type: ignore[arg-type]
                                         local_static_public=BOB.public)


def test_tampered_response_fails() -> None:
    msg, state = initiate(ALICE, BOB, ei=det_key("e"))
    consumed = noise.consume_initiation(msg, local_static_private=BOB.private,
                                        local_static_public=BOB.public)
    response, _ = noise.create_response(consumed, preshared_key=PSK, local_index=5,
                                        ephemeral_private=det_key("r"))
    data = response.pack()
    for position in range(12, 60):  # ephemeral, encrypted nothing
        for bit in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[position] ^= bit
            with pytest.raises(noise.HandshakeError):
                noise.consume_response(parse_handshake(bytes(tampered)), state,  # type: ignore[arg-type]
                                       local_static_private=ALICE.private, preshared_key=PSK)
    # The untouched response still completes (the state was not consumed by failures).
    noise.consume_response(response, state, local_static_private=ALICE.private, preshared_key=PSK)


def test_response_to_another_initiation_fails() -> None:
    msg1, state1 = initiate(ALICE, BOB, ei=det_key("e1"))
    _, state2 = initiate(ALICE, BOB, ei=det_key("e2"))
    consumed = noise.consume_initiation(msg1, local_static_private=BOB.private,
                                        local_static_public=BOB.public)
    response, _ = noise.create_response(consumed, preshared_key=bytes(32), local_index=5,
                                        ephemeral_private=det_key("r"))
    with pytest.raises(noise.HandshakeError):
        noise.consume_response(response, state2, local_static_private=ALICE.private,
                               preshared_key=bytes(32))
    noise.consume_response(response, state1, local_static_private=ALICE.private,
                           preshared_key=bytes(32))


# Curve25519 points of small order (libsodium's blacklist): DH with any of them gives all zeros.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p - 1
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p + 1
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_points_are_refused_by_dh(point: bytes) -> None:
    with pytest.raises(crypto.CryptoError):
        crypto.dh(ALICE.private, point)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:4], ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_in_initiation_is_rejected(point: bytes) -> None:
    msg, _ = initiate(ALICE, BOB, ei=det_key("e"))
    forged = Initiation(msg.sender, point, msg.encrypted_static, msg.encrypted_timestamp,
                        msg.mac1, msg.mac2)
    with pytest.raises(noise.HandshakeError):
        noise.consume_initiation(forged, local_static_private=BOB.private,
                                 local_static_public=BOB.public)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:4], ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_in_response_is_rejected(point: bytes) -> None:
    msg, state = initiate(ALICE, BOB, ei=det_key("e"))
    consumed = noise.consume_initiation(msg, local_static_private=BOB.private,
                                        local_static_public=BOB.public)
    response, _ = noise.create_response(consumed, preshared_key=bytes(32), local_index=5,
                                        ephemeral_private=det_key("r"))
    forged = Response(response.sender, response.receiver, point, response.encrypted_nothing,
                      response.mac1, response.mac2)
    with pytest.raises(noise.HandshakeError):
        noise.consume_response(forged, state, local_static_private=ALICE.private,
                               preshared_key=bytes(32))


def test_low_order_static_in_initiation_is_rejected() -> None:
    # A correctly encrypted initiation claiming an all-zero static key: the responder's
    # static-static DH yields zeros and must be refused rather than used.
    ei = det_key("e")
    msg, _ = noise.create_initiation(
        local_static_private=ALICE.private, local_static_public=bytes(32),
        remote_static=BOB.public, static_static=bytes(32), local_index=1, ephemeral_private=ei,
        timestamp=noise.tai64n(1.0))
    with pytest.raises(noise.HandshakeError):
        noise.consume_initiation(msg, local_static_private=BOB.private,
                                 local_static_public=BOB.public)


# --- TAI64N -----------------------------------------------------------------------------------


def test_tai64n_layout() -> None:
    stamp = noise.tai64n(1_700_000_000.25)
    assert len(stamp) == 12
    seconds, nanos = struct.unpack(">QI", stamp)
    assert seconds == (1 << 62) + 10 + 1_700_000_000
    assert nanos <= 250_000_000 and 250_000_000 - nanos < 1 << 24  # coarsened, never rounded up
    assert nanos % (1 << 24) == 0


@settings(max_examples=200)
@given(st.floats(0, 4e9), st.floats(0, 1e6))
def test_tai64n_is_monotonic(t: float, dt: float) -> None:
    a, b = noise.tai64n(t), noise.tai64n(t + dt)
    assert len(a) == len(b) == 12
    assert a <= b  # byte order is time order
    if dt >= 0.02:  # more than the ~16.8 ms coarsening: strictly newer
        assert a < b


# --- mac1, mac2 and cookie replies ------------------------------------------------------------


def stamped_initiation(jar: CookieJar, now: float = 0.0) -> bytes:
    msg, _ = initiate(ALICE, BOB, ei=det_key("e"))
    return jar.stamp(msg.pack(), now)


def test_mac1_verifies_and_covers_the_body() -> None:
    checker = CookieChecker(BOB.public, det_random(1))
    data = stamped_initiation(CookieJar(BOB.public))
    assert checker.mac1_valid(data)
    assert data[-16:] == bytes(16)  # no cookie yet: no mac2
    assert data[-32:-16] == ref_mac(ref_hash(b"mac1----", BOB.public), data[:-32])
    for position in (0, 4, 8, 60, 115, 116, 131):
        tampered = bytearray(data)
        tampered[position] ^= 1
        assert not checker.mac1_valid(bytes(tampered))
    # mac2 is not covered by mac1.
    tampered = bytearray(data)
    tampered[140] ^= 1
    assert checker.mac1_valid(bytes(tampered))
    # Addressed to someone else: Eve's checker refuses it.
    assert not CookieChecker(EVE.public, det_random(1)).mac1_valid(data)


def test_cookie_reply_round_trip_gives_a_valid_mac2() -> None:
    source = ("192.0.2.7", 51820)
    checker = CookieChecker(BOB.public, det_random(2))
    jar = CookieJar(BOB.public)
    data = stamped_initiation(jar, now=10.0)
    assert not checker.mac2_valid(data, source, 10.0)
    reply = checker.make_reply(data, 1, source, 10.0)
    packed = reply.pack()
    assert len(packed) == 64 and packed[0] == 3
    assert parse_handshake(packed) == reply
    # The reply is the responder's cookie, sealed with XChaCha20-Poly1305 to our mac1.
    cookie = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        reply.encrypted_cookie, data[116:132], reply.nonce, ref_hash(b"cookie--", BOB.public))
    assert len(cookie) == 16
    assert jar.consume_reply(reply, 10.5)
    assert jar.cookie == cookie

    again = stamped_initiation(jar, now=11.0)
    assert again[-16:] == ref_mac(cookie, again[:-16])
    assert checker.mac2_valid(again, source, 11.0)
    assert checker.mac1_valid(again)
    assert not checker.mac2_valid(again, ("192.0.2.8", 51820), 11.0)  # cookie is per address
    assert not checker.mac2_valid(again, ("192.0.2.7", 51821), 11.0)
    # The initiator stops using a cookie older than COOKIE_REFRESH_TIME.
    stale = stamped_initiation(jar, now=10.5 + COOKIE_REFRESH_TIME)
    assert stale[-16:] == bytes(16)


def test_cookie_reply_with_wrong_aad_is_rejected() -> None:
    source = ("192.0.2.7", 51820)
    checker = CookieChecker(BOB.public, det_random(3))
    jar = CookieJar(BOB.public)
    assert not jar.consume_reply(CookieReply(1, bytes(24), bytes(32)), 0.0)  # nothing sent yet
    data = stamped_initiation(jar)
    other = bytearray(data)
    other[-32:-16] = bytes(16)  # a reply bound to a mac1 we never sent
    reply = checker.make_reply(bytes(other), 1, source, 0.0)
    assert not jar.consume_reply(reply, 0.0)
    assert jar.cookie is None
    # A reply sealed by someone else (Eve's cookie key) is refused too.
    forged = CookieChecker(EVE.public, det_random(4)).make_reply(data, 1, source, 0.0)
    assert not jar.consume_reply(forged, 0.0)
    assert jar.cookie is None
    # A bit flip in the sealed cookie fails authentication.
    good = checker.make_reply(data, 1, source, 0.0)
    flipped = CookieReply(good.receiver, good.nonce,
                          bytes([good.encrypted_cookie[0] ^ 1]) + good.encrypted_cookie[1:])
    assert not jar.consume_reply(flipped, 0.0)
    assert jar.consume_reply(good, 0.0)
