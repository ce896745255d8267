"""The data path: the bytes in bulk, per run, never per packet — pure, like the core.

virtio_net_hdr parsing and TSO/USO segmentation (`offload`), checksums (`checksum`), GSO send
batches (`gso`), the replay window (`replay`), coalescing for TUN writes (`coalesce`), and the
batch kernels that seal and open whole runs (`kernels`: a native extension and its Python twin,
`_pykernels`, the specification). `Device` joins it to the protocol core. Nothing here opens a
socket, reads a clock or starts a thread.
"""

from fz_trio.datapath import kernels
from fz_trio.datapath.device import MAX_PLAINTEXT, DataPathStats, Device
from fz_trio.datapath.gso import MAX_BATCH_BYTES, MAX_SEGMENTS, Batch, GsoBatcher
from fz_trio.datapath.kernels import IMPLEMENTATION, REASON
from fz_trio.datapath.offload import (
    GSO_NONE,
    PLAIN_HDR,
    OffloadError,
    Segments,
    VnetHeader,
    segment,
)
from fz_trio.datapath.packets import (
    echo_reply_to,
    icmp_echo,
    icmp_echo_message,
    ip_packet,
    parse_echo,
    udp_packet,
)

__all__ = [
    "GSO_NONE",
    "IMPLEMENTATION",
    "MAX_BATCH_BYTES",
    "MAX_PLAINTEXT",
    "MAX_SEGMENTS",
    "PLAIN_HDR",
    "REASON",
    "Batch",
    "DataPathStats",
    "Device",
    "GsoBatcher",
    "OffloadError",
    "Segments",
    "VnetHeader",
    "echo_reply_to",
    "icmp_echo",
    "icmp_echo_message",
    "kernels",
    "ip_packet",
    "parse_echo",
    "segment",
    "udp_packet",
]
