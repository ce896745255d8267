"""UDP GSO and GRO against the real kernel, on loopback: the GSO path and the one-datagram-per-
syscall path put the same datagrams on the wire, and GRO hands them back intact."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from fz_trio.datapath.gso import GsoBatcher
from fz_trio.shell.udp import enable_gro, receive_segments, send_segments


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def _datagrams() -> list[bytes]:
    return [os.urandom(1000) for _ in range(20)] + [os.urandom(300)]


def _batch(datagrams: list[bytes], endpoint: tuple[str, int]):  # type: ignore[no-untyped-def]
    batcher = GsoBatcher()
    for d in datagrams:
        batcher.append((d, endpoint))
    (batch,) = batcher.take()
    return batch


def _receive(receiver: socket.socket, n: int) -> list[bytes]:
    return [receiver.recv(65535) for _ in range(n)]


def test_gso_and_plain_sends_put_the_same_datagrams_on_the_wire(sockets) -> None:  # type: ignore[no-untyped-def]
    sender, receiver = sockets
    endpoint = receiver.getsockname()
    datagrams = _datagrams()
    batch = _batch(datagrams, endpoint)
    assert batch.count == len(datagrams)

    send_segments(sender, batch.data, batch.segment_size, batch.count, endpoint)
    with_gso = _receive(receiver, len(datagrams))
    for d in batch.datagrams():
        sender.sendto(d, endpoint)
    without_gso = _receive(receiver, len(datagrams))
    assert with_gso == without_gso == datagrams


def test_gro_receive_splits_back_into_the_sent_datagrams(sockets) -> None:  # type: ignore[no-untyped-def]
    sender, receiver = sockets
    if not enable_gro(receiver):
        pytest.skip("kernel without UDP_GRO")
    endpoint = receiver.getsockname()
    datagrams = _datagrams()
    batch = _batch(datagrams, endpoint)
    send_segments(sender, batch.data, batch.segment_size, batch.count, endpoint)
    buffer = bytearray(65535)
    got: list[bytes] = []
    while len(got) < len(datagrams):
        nbytes, segment, source = receive_segments(receiver, buffer)
        assert source[0] == "127.0.0.1"
        got += [bytes(buffer[i:min(i + segment, nbytes)]) for i in range(0, nbytes, segment)]
    assert got == datagrams


async def test_sender_falls_back_when_the_kernel_refuses_gso(sockets) -> None:  # type: ignore[no-untyped-def]
    """With UDP checksums switched off (SO_NO_CHECK) Linux refuses UDP_SEGMENT with EINVAL: the
    sender must count the fallback, still deliver every datagram, and stop trying GSO."""
    from fz_trio.shell.stats import IoStats
    from fz_trio.shell.udp import BatchSender

    sender, receiver = sockets
    so_no_check = 11
    sender.setsockopt(socket.SOL_SOCKET, so_no_check, 1)
    sender.setblocking(False)
    endpoint = receiver.getsockname()
    datagrams = _datagrams()
    stats = IoStats()
    batch_sender = BatchSender(stats)
    await batch_sender.send(sender, _batch(datagrams, endpoint))
    assert _receive(receiver, len(datagrams)) == datagrams
    assert batch_sender.gso is False and stats.udp_gso_fallbacks == 1
    await batch_sender.send(sender, _batch(datagrams, endpoint))
    assert _receive(receiver, len(datagrams)) == datagrams
    assert stats.udp_gso_fallbacks == 1 and not stats.errors


async def test_sender_lets_many_tasks_wait_for_one_full_socket() -> None:
    """The packet loop's readers, timer and handshake task all send on the same socket; when
    its queue is full they must all wait for room (Trio admits one waiter per fd) and all get
    their datagram out. A datagram socket on an abstract Unix address fills up on its own, like
    a UDP socket behind a busy NIC."""
    import trio

    from fz_trio.shell.stats import IoStats
    from fz_trio.shell.udp import BatchSender

    address = f"\0fz-trio-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        receiver.bind(address)
        receiver.setblocking(False)
        sender.setblocking(False)
        queued = 0
        with pytest.raises(BlockingIOError):
            while True:
                sender.sendto(b"fill", address)
                queued += 1
        stats = IoStats()
        batch_sender = BatchSender(stats)
        datagrams = [bytes([k]) * 100 for k in range(3)]
        async with trio.open_nursery() as nursery:
            for datagram in datagrams:
                nursery.start_soon(batch_sender.send, sender, _batch([datagram], address))
            await trio.sleep(0.05)  # all three now wait for room
            received: list[bytes] = []
            while len(received) < queued + len(datagrams):
                try:
                    received.append(receiver.recv(65535))
                except BlockingIOError:
                    await trio.sleep(0.001)
        assert sorted(received[queued:]) == datagrams and not stats.errors
        assert stats.udp_plain_sends == len(datagrams)
    finally:
        sender.close()
        receiver.close()
