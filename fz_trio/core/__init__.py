"""The sans-IO WireGuard core: bytes and `now` in, bytes and deadlines out.

Nothing in this package opens a socket, reads a clock, sleeps, spawns a thread or imports Trio.
"""

from fz_trio.core import cookie, ip, messages, timers
from fz_trio.core.allowed_ips import Network, as_network
from fz_trio.core.crypto import CryptoError
from fz_trio.core.endpoint import Endpoint, format_endpoint
from fz_trio.core.keys import (
    KEY_LEN,
    clamp,
    decode_hex_key,
    decode_key,
    encode_hex_key,
    encode_key,
    generate_private_key,
    public_key_of,
)
from fz_trio.core.messages import (
    TRANSPORT_MIN_LEN,
    TYPE_TRANSPORT,
    MessageError,
    message_type,
    padded_length,
)
from fz_trio.core.peer import Outbox, Peer, SendGrant, Transmit
from fz_trio.core.session import Session
from fz_trio.core.stats import Counters
from fz_trio.core.timers import TimerConfig
from fz_trio.core.tunnel import Tunnel, TunnelError, check_peer_key

__all__ = [
    "KEY_LEN",
    "TRANSPORT_MIN_LEN",
    "TYPE_TRANSPORT",
    "Counters",
    "CryptoError",
    "Endpoint",
    "MessageError",
    "Network",
    "Outbox",
    "Peer",
    "SendGrant",
    "Session",
    "TimerConfig",
    "Transmit",
    "Tunnel",
    "TunnelError",
    "as_network",
    "check_peer_key",
    "clamp",
    "decode_hex_key",
    "decode_key",
    "cookie",
    "encode_hex_key",
    "encode_key",
    "format_endpoint",
    "generate_private_key",
    "ip",
    "message_type",
    "messages",
    "padded_length",
    "public_key_of",
    "timers",
]
