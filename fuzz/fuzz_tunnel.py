"""Coverage-guided fuzzing of the tunnel: datagrams into a live `fz_trio.datapath.Device`.

At start-up two Devices (an initiator and a responder) complete a real handshake in memory and
exchange a first transport message, so both have an established session; that state is pickled,
and every input starts from a fresh copy of it (inputs reproduce alone). The input's first byte
picks the Device under test (bit 0: the responder or the initiator); the rest is a sequence of
operations, each `kind (1 byte) | length (2 bytes, little-endian) | payload`:

    0 RAW         the payload as one datagram
    1 GRO         a GRO read: payload[:2] is the segment size, the rest the buffer; bit 0 of
                  payload[2] adds junk after the read's end (it must be ignored)
    2 TRANSPORT   payload[1:] sealed as one transport message by the other Device's session
                  (payload[0]: which session, which counter, whether a byte is then flipped)
    3 SEALED_GRO  payload[1:] cut into 1-8 plaintexts, sealed and delivered as one GRO read
    4 HANDSHAKE   a handshake-shaped message, payload[1:] its body; payload[0] picks the type
                  (bits 0-1: initiation, response, cookie reply) and what is made valid: mac1
                  (bit 2), the receiver index (bit 3: one of the target's, bits 5-7 say which),
                  mac2 (bit 4)
    5 GENUINE     a real initiation from the other Device, XORed with payload[1:] at an offset,
                  mac1 re-stamped if payload[0] says so
    6 PUMP        the two Devices exchange what they have to send until quiet
    7 TIME        the clock moves on payload[:2] / 8 seconds; both Devices' timers fire
    8 SOURCE      later datagrams come from another address (roaming, IPv6, IPv4-mapped)
    9 LOAD        force the under-load (cookie) mode on or off
    10 TUN        the payload as a packet from the Device's TUN

A crash is: any exception; a packet written to TUN that is not an IPv4/IPv6 packet of the length
it declares, or whose source the sending peer's AllowedIPs do not hold; a datagram sent that is
not a well-formed WireGuard message; or, after an input of only unauthenticated operations (RAW,
GRO, HANDSHAKE, SOURCE, LOAD), an established session that no longer delivers a fresh transport
message.

    pip install atheris
    python fuzz/fuzz_tunnel.py -max_total_time=60 /tmp/tunnel-corpus fuzz/corpus/tunnel
    python fuzz/fuzz_tunnel.py crash-<sha1>          # reproduce one input

The kernels are whichever `fz_trio.datapath.kernels` loads (the native extension when built);
`FZ_TRIO_PUREPYTHON=1` fuzzes the Python twin instead, whose code libFuzzer then also sees.
"""

from __future__ import annotations

import pickle
import random
import struct
from collections.abc import Iterator
from typing import Any

import atheris
import fuzzlib

with atheris.instrument_imports(include=["fz_trio"]):
    from fz_trio.core import generate_private_key, ip, messages, padded_length
    from fz_trio.core.cookie import mac1_key
    from fz_trio.core.crypto import mac
    from fz_trio.core.peer import Outbox
    from fz_trio.datapath import Device, ip_packet, kernels

WALL = 1_700_000_000.0
INITIATOR_ADDR = ("198.18.0.1", 51820)
RESPONDER_ADDR = ("198.18.0.2", 40000)
# Where datagrams may come from besides the other Device's own address.
SOURCES = (("198.18.0.9", 51820), ("::ffff:198.18.0.1", 51820), ("2001:db8::1", 51820),
           ("198.18.0.1", 1))
# AllowedIPs: the responder's peer (the initiator) may use only these sources.
INITIATOR_NETS = ["100.64.0.1/32", "fd00:64::1/128"]
RESPONDER_NETS = ["100.64.0.2/32", "fd00:64::2/128", "10.0.0.0/8"]
START = 2.0  # seconds; the handshake happened at 1.0

(RAW, GRO, TRANSPORT, SEALED_GRO, HANDSHAKE, GENUINE, PUMP, TIME, SOURCE, LOAD,
 TUN) = range(11)
KINDS = 11
UNAUTHENTICATED = frozenset({RAW, GRO, HANDSHAKE, SOURCE, LOAD})
MAX_OPS = 32
MAX_PLAIN = 65000


def op(kind: int, payload: bytes = b"") -> bytes:
    """One operation of an input (for fuzz/make_corpus.py)."""
    return bytes([kind]) + struct.pack("<H", len(payload)) + payload


def _ops(data: bytes) -> Iterator[tuple[int, bytes]]:
    i = 0
    for _ in range(MAX_OPS):
        if i + 3 > len(data):
            return
        kind = data[i] % KINDS
        (length,) = struct.unpack_from("<H", data, i + 1)
        yield kind, data[i + 3:i + 3 + length]
        i += 3 + length


def _deliver_all(src: Device, dst: Device, source: tuple[str, int], now: float) -> int:
    moved = 0
    for datagram, _ in src.take_transmits():
        dst.receive_datagram(datagram, source, now, WALL + now)
        moved += 1
    return moved


def _snapshot() -> bytes:
    initiator = Device(generate_private_key(random.Random("initiator").randbytes),
                       random_bytes=random.Random("i").randbytes)
    responder = Device(generate_private_key(random.Random("responder").randbytes),
                       random_bytes=random.Random("r").randbytes)
    assert initiator.public_key is not None and responder.public_key is not None
    initiator.add_peer(responder.public_key, allowed_ips=RESPONDER_NETS, endpoint=RESPONDER_ADDR)
    responder.add_peer(initiator.public_key, allowed_ips=INITIATOR_NETS, endpoint=INITIATOR_ADDR)
    now = 1.0
    initiator.send_packet(ip_packet("100.64.0.1", "100.64.0.2", b"hello", 17), now, WALL + now)
    while (_deliver_all(initiator, responder, INITIATOR_ADDR, now)
           + _deliver_all(responder, initiator, RESPONDER_ADDR, now)):
        pass
    assert len(responder.take_tun_packets()) == 1
    assert initiator.peers[responder.public_key].current is not None
    assert responder.peers[initiator.public_key].current is not None
    return pickle.dumps((initiator, responder))


SNAPSHOT = _snapshot()


class Failure(AssertionError):
    pass


class Run:
    """One input's operations on a fresh copy of the connected pair."""

    def __init__(self, responder_under_test: bool) -> None:
        initiator, responder = pickle.loads(SNAPSHOT)
        if responder_under_test:
            self.target, self.other = responder, initiator
            self.target_addr, self.other_addr = RESPONDER_ADDR, INITIATOR_ADDR
        else:
            self.target, self.other = initiator, responder
            self.target_addr, self.other_addr = INITIATOR_ADDR, RESPONDER_ADDR
        self.peer = self.target.peers[self.other.public_key]  # the target's view of the other
        self.view = self.other.peers[self.target.public_key]  # the other's view of the target
        self.source = self.other_addr
        # An inner source address the target accepts from its peer.
        self.peer_source = "100.64.0.1" if responder_under_test else "100.64.0.2"
        self.now = START
        self.outgoing: list[tuple[bytes, Any]] = []  # the target's datagrams, checked

    @property
    def wall(self) -> float:
        return WALL + self.now

    # --- operations -----------------------------------------------------------------------------

    def do(self, kind: int, payload: bytes) -> None:
        target = self.target
        if kind == RAW:
            target.receive_datagram(payload, self.source, self.now, self.wall)
        elif kind == GRO:
            size = int.from_bytes(payload[:2], "little")
            buffer = bytearray(payload[3:])
            nbytes = len(buffer)
            if payload[2:3] and payload[2] & 1:
                buffer += b"\x04\0\0\0" * 16
            target.receive_batch(buffer, nbytes, size, self.source, self.now, self.wall)
        elif kind == TRANSPORT:
            self._transport(payload)
        elif kind == SEALED_GRO:
            self._sealed_gro(payload)
        elif kind == HANDSHAKE:
            self._handshake(payload)
        elif kind == GENUINE:
            self._genuine(payload)
        elif kind == PUMP:
            self._pump()
        elif kind == TIME:
            self.now += int.from_bytes(payload[:2], "little") / 8
            target.handle_timeout(self.now, self.wall)
            self.other.handle_timeout(self.now, self.wall)
        elif kind == SOURCE:
            choice = payload[0] % (len(SOURCES) + 1) if payload else 0
            self.source = SOURCES[choice - 1] if choice else self.other_addr
        elif kind == LOAD:
            target.force_under_load = bool(payload[0] & 1) if payload else True
        elif kind == TUN:
            target.send_packet(payload, self.now, self.wall)
        self.check()

    def _session(self, choice: int) -> Any:
        sessions = [s for s in (self.view.current, self.view.previous, self.view.next) if s]
        return sessions[choice % len(sessions)] if sessions else None

    def _seal(self, session: Any, plains: list[bytes], counter: int) -> tuple[bytearray, int]:
        """`plains` sealed back to back as one GRO read: all but the last the same size."""
        padded = max(padded_length(len(p), self.other.mtu) for p in plains)
        stride = padded + 32
        last = padded_length(len(plains[-1]), self.other.mtu)
        buffer = bytearray(stride * (len(plains) - 1) + last + 32)
        counter = min(counter, 2**64 - len(plains))
        kernels.seal_packets(plains, 0, len(plains) - 1, buffer, 0, stride, padded,
                             session.sending_key, session.remote_index, counter)
        kernels.seal_packets(plains, len(plains) - 1, 1, buffer, stride * (len(plains) - 1),
                             last + 32, last, session.sending_key, session.remote_index,
                             counter + len(plains) - 1)
        return buffer, stride

    def _counter(self, session: Any, mode: int, count: int, extra: bytes) -> int:
        mode &= 3
        if mode == 0:
            return int(session.reserve(count))
        if mode == 1:  # the last one again: a replay
            return max(0, session.send_counter - 1)
        if mode == 2:  # at the limits of the session
            return int(self.other.timers.reject_after_messages) - 1 + (extra[:1] or b"\0")[0] % 3
        return int.from_bytes(extra[:8].ljust(8, b"\0"), "little")

    def _transport(self, payload: bytes) -> None:
        sel = payload[0] if payload else 0
        session = self._session(sel >> 2)
        if session is None:
            return
        plain = payload[1:1 + MAX_PLAIN]
        counter = self._counter(session, sel, 1, payload[1:])
        buffer, _ = self._seal(session, [plain], counter)
        if sel & 0x80:
            buffer[(sel * 7) % len(buffer)] ^= 1
        self.target.receive_datagram(bytes(buffer), self.source, self.now, self.wall)

    def _sealed_gro(self, payload: bytes) -> None:
        sel = payload[0] if payload else 0
        session = self._session(sel >> 6)
        if session is None:
            return
        body = payload[1:1 + MAX_PLAIN]
        count = sel % 8 + 1
        cut = -(-len(body) // count) if body else 0
        plains = [body[i * cut:(i + 1) * cut] for i in range(count)]
        counter = self._counter(session, sel >> 3, count, body)
        buffer, stride = self._seal(session, plains, counter)
        if sel & 0x20 and count > 1:  # one datagram in the middle is no transport message
            buffer[stride * ((sel >> 3) % (count - 1))] = 5
        self.target.receive_batch(buffer, len(buffer), stride, self.source, self.now, self.wall)

    def _handshake(self, payload: bytes) -> None:
        sel = payload[0] if payload else 0
        kind = (sel & 3) % 3 + 1
        length = (messages.INITIATION_LEN, messages.RESPONSE_LEN,
                  messages.COOKIE_REPLY_LEN)[kind - 1]
        message = bytearray(bytes([kind, 0, 0, 0]) + payload[1:length - 3].ljust(length - 4, b"\0"))
        if sel & 8:  # a receiver index the target knows (response, cookie reply)
            indices = self._local_indices()
            if indices and kind != messages.TYPE_INITIATION:
                offset = 8 if kind == messages.TYPE_RESPONSE else 4
                message[offset:offset + 4] = indices[(sel >> 5) % len(indices)].to_bytes(
                    4, "little")
        if sel & 4 and kind != messages.TYPE_COOKIE_REPLY:
            assert self.target.public_key is not None
            message[-32:-16] = mac(mac1_key(self.target.public_key), bytes(message[:-32]))
            if sel & 16 and self.target.cookie_checker is not None:
                cookie = self.target.cookie_checker._current_cookie(self.source, self.now)
                message[-16:] = mac(cookie, bytes(message[:-16]))
        self.target.receive_datagram(bytes(message), self.source, self.now, self.wall)

    def _local_indices(self) -> list[int]:
        peer = self.peer
        indices = [s.local_index for s in (peer.current, peer.previous, peer.next) if s]
        if peer.pending is not None:
            indices.append(peer.pending.local_index)
        return indices

    def _genuine(self, payload: bytes) -> None:
        sel = payload[0] if payload else 0
        out = Outbox()
        self.view.initiate_handshake(self.now, self.wall, out, retry=True)
        if not out.transmits:
            return
        message = bytearray(out.transmits[0][0])
        start = (sel >> 1) * 4 % len(message)
        for i, byte in enumerate(payload[1:len(message) - start + 1]):
            message[start + i] ^= byte
        if sel & 1:
            message = bytearray(self.view.cookies.stamp(bytes(message), self.now))
        self.target.receive_datagram(bytes(message), self.source, self.now, self.wall)

    def _pump(self) -> None:
        for _ in range(8):
            moved = 0
            for datagram, _ in self.outgoing:
                self.other.receive_datagram(datagram, self.target_addr, self.now, self.wall)
                moved += 1
            self.outgoing = []
            self.other.take_tun_packets()
            for datagram, _ in self.other.take_transmits():
                self.target.receive_datagram(datagram, self.source, self.now, self.wall)
                moved += 1
            self.check()
            if not moved:
                return

    # --- oracles --------------------------------------------------------------------------------

    def check(self) -> None:
        target = self.target
        for packet in target.take_tun_packets():
            # As open_run's contract (and wireguard-go) has it: the version and the length
            # the packet declares; a bad IPv4 header length is for the kernel to refuse.
            if ip.source(packet) is None or ip.declared_length(packet) != len(packet):
                raise Failure(f"not a whole IP packet written to TUN: {bytes(packet[:64]).hex()}")
            if target.route(ip.source(packet)) is not self.peer:
                raise Failure(f"a packet from a source the peer may not use written to TUN: "
                              f"{bytes(packet[:40]).hex()}")
        for datagram, endpoint in target.take_transmits():
            kind = messages.message_type(datagram)
            expected = {1: messages.INITIATION_LEN, 2: messages.RESPONSE_LEN,
                        3: messages.COOKIE_REPLY_LEN}.get(kind)
            if kind == 0 or (expected is not None and len(datagram) != expected) or (
                    kind == messages.TYPE_TRANSPORT and len(datagram) < messages.TRANSPORT_MIN_LEN):
                raise Failure(f"a malformed datagram sent: {datagram[:64].hex()}")
            if not (isinstance(endpoint, tuple) and isinstance(endpoint[0], str)
                    and isinstance(endpoint[1], int)):
                raise Failure(f"a datagram sent to {endpoint!r}")
            self.outgoing.append((datagram, endpoint))

    def still_delivers(self) -> None:
        """After unauthenticated input only: the established session still carries data."""
        session = self.view.current
        assert session is not None
        packet = ip_packet(self.peer_source, "100.64.0.9", b"still there", 17)
        buffer, _ = self._seal(session, [packet], session.reserve(1))
        self.target.receive_datagram(bytes(buffer), self.other_addr, self.now, self.wall)
        delivered = self.target.take_tun_packets()
        if [bytes(p) for p in delivered] != [packet]:
            raise Failure(f"unauthenticated input broke the session: drops "
                          f"{dict(self.target.counters.drops)}")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if not data:
        return
    run = Run(responder_under_test=not data[0] & 1)
    kinds = set()
    for kind, payload in _ops(data[1:]):
        kinds.add(kind)
        run.do(kind, payload)
    if kinds <= UNAUTHENTICATED:
        run.still_delivers()


if __name__ == "__main__":
    fuzzlib.main(TestOneInput, __file__)
