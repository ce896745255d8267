"""The core alone: µs per packet through two Devices in memory, on either twin of the kernels.

Only the core's own work is timed — no syscalls, no threads — so the figure is what the data path
costs before any IO, and the Python and native twins of the kernels can be set side by side.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import attrs

from fz_trio.core import generate_private_key, public_key_of
from fz_trio.datapath import Device, _pykernels, kernels, udp_packet
from fz_trio.lab.testnet import TestNet

__all__ = ["TWINS", "CoreResult", "available_twins", "core_bench", "ipv4_packet", "kernels_twin"]

TWINS = ("python", "native")
# What the Device calls through `kernels`; swapping these swaps the twin under it.
_KERNEL_NAMES = ("seal_packets", "seal_segments", "open_run", "coalesce")


@attrs.frozen
class CoreResult:
    packet_size: int
    batch_size: int
    batches: int
    packets: int
    encrypt_us_per_packet: float
    decrypt_us_per_packet: float
    encrypt_gbits: float  # implied Gbit/s of IP packets on one core
    decrypt_gbits: float
    api: str = "batch"  # which core API moved the packets
    kernels: str = "native"  # which twin of the data path kernels


def available_twins() -> list[str]:
    """The twins this interpreter can run: always Python, native when the extension loaded."""
    return ["python"] + (["native"] if kernels.IMPLEMENTATION == "native" else [])


def ipv4_packet(size: int, src: str = TestNet.tunnel_b4, dst: str = TestNet.tunnel_a4) -> bytes:
    """An IPv4/UDP packet of exactly `size` bytes."""
    if size < 28:
        raise ValueError("an IPv4/UDP packet has at least 28 bytes")
    return udp_packet(src, dst, bytes(size - 28), dport=5201)


@contextlib.contextmanager
def kernels_twin(twin: str) -> Iterator[str]:
    """Run the Device on one twin of the data path kernels ("native" needs the extension)."""
    if twin not in TWINS:
        raise ValueError(f"unknown twin {twin!r}; choose from {', '.join(TWINS)}")
    if twin == "native" and kernels.IMPLEMENTATION != "native":
        raise RuntimeError(f"no native kernels: {kernels.REASON}")
    # kernels._module is the native extension whenever IMPLEMENTATION is "native".
    module = _pykernels if twin == "python" else kernels._module
    saved = {name: getattr(kernels, name) for name in _KERNEL_NAMES}
    for name in _KERNEL_NAMES:
        setattr(kernels, name, getattr(module, name))
    try:
        yield twin
    finally:
        for name, value in saved.items():
            setattr(kernels, name, value)


def core_bench(*, batches: int = 1000, batch_size: int = 64, packet_size: int = 1400,
               warmup: int = 20, twin: str | None = None) -> CoreResult:
    """Time encrypt and decrypt of `batches` batches of `batch_size` packets on `twin` (default:
    the active one), after `warmup` untimed batches."""
    twin = twin or kernels.IMPLEMENTATION
    with kernels_twin(twin):
        result = _core_bench(batches, batch_size, packet_size, warmup)
    return attrs.evolve(result, kernels=twin)


def _core_pair(packet: bytes) -> tuple[Device, Device, tuple[str, int], float]:
    """A client and a server Device in memory with a completed handshake (and confirmed session)."""
    wall = time.time()
    client_key, server_key = generate_private_key(), generate_private_key()
    client, server = Device(client_key), Device(server_key)
    client_addr = (TestNet.underlay_b, 40000)
    server_addr = (TestNet.underlay_a, 51820)
    client.add_peer(public_key_of(server_key), allowed_ips=[f"{TestNet.tunnel_a4}/32"],
                    endpoint=server_addr)
    server.add_peer(public_key_of(client_key), allowed_ips=[f"{TestNet.tunnel_b4}/32"])
    now = 1.0
    client.send_packet(packet, now, wall)  # staged; starts the handshake
    delivered: list[bytes] = []
    for _ in range(10):
        moved = False
        for data, _dst in client.take_transmits():
            server.receive_datagram(data, client_addr, now, wall)
            moved = True
        for data, _dst in server.take_transmits():
            client.receive_datagram(data, server_addr, now, wall)
            moved = True
        delivered += map(bytes, server.take_tun_packets())
        client.take_tun_packets()
        if not moved:
            break
    if delivered != [packet]:
        raise RuntimeError(f"core handshake did not complete: server got {len(delivered)} packets")
    return client, server, client_addr, now


def _core_bench(batches: int, batch_size: int, packet_size: int, warmup: int) -> CoreResult:
    """Time the core alone: encrypt through send_packets+take_batches on one Device, decrypt the
    result through receive_batch (one call per GSO batch, as a UDP GRO read would deliver it)
    +take_tun_packets on its peer, `batch_size` packets at a time.

    Each batch is encrypted then decrypted at once (the replay window forbids decrypting a
    datagram twice), and the two phases are timed separately with time.perf_counter.
    """
    if batches < 1 or batch_size < 1:
        raise ValueError("batches and batch_size must be positive")
    packet = ipv4_packet(packet_size)
    client, server, client_addr, now = _core_pair(packet)
    epoch = time.time() - now  # the wall clock at now == 0
    batch = [packet] * batch_size
    encrypt = decrypt = 0.0
    clock = time.perf_counter
    for i in range(warmup + batches):
        now += 1e-4
        t0 = clock()
        # The batch API, as the IO shell drives the core: a TUN batch in, GSO batches out;
        # each GSO batch in as one UDP GRO read, packets for TUN out.
        client.send_packets(batch, now, epoch + now)
        gso = client.take_batches()
        t1 = clock()
        for b in gso:
            server.receive_batch(b.buffer, b.used, b.segment_size, client_addr, now, epoch + now)
        plain = server.take_tun_packets()
        t2 = clock()
        sent = sum(b.count for b in gso)
        client.recycle(gso)
        server.take_transmits()  # nothing expected; never let it grow
        if sent != batch_size or len(plain) != batch_size:
            raise RuntimeError(f"core bench: batch {i}: {sent} encrypted, "
                               f"{len(plain)} decrypted, of {batch_size}")
        if i >= warmup:
            encrypt += t1 - t0
            decrypt += t2 - t1
    packets = batches * batch_size
    enc_us = encrypt / packets * 1e6
    dec_us = decrypt / packets * 1e6
    return CoreResult(
        packet_size=packet_size, batch_size=batch_size, batches=batches, packets=packets,
        encrypt_us_per_packet=enc_us, decrypt_us_per_packet=dec_us,
        encrypt_gbits=packet_size * 8 / (enc_us * 1e3),
        decrypt_gbits=packet_size * 8 / (dec_us * 1e3),
    )
