"""Write the seed corpora of the pure-Python harnesses: fuzz/corpus/<harness>/<name>.

A handful of small valid inputs each (and a few near misses), the same bytes on every run: the
keys come from fixed seeds, never from the system's randomness. Run it after changing a
harness's input format, and commit the result:

    python fuzz/make_corpus.py            # rewrites fuzz/corpus/{config,uapi,tunnel,offload}
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzz_tunnel as T  # noqa: E402 - the harness's own encoder, after the path above

from fz_trio.core import clamp, encode_key, public_key_of  # noqa: E402
from fz_trio.datapath import ip_packet, udp_packet  # noqa: E402
from fz_trio.datapath.offload import (  # noqa: E402
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_HDR,
)
from fz_trio.uapi import (  # noqa: E402
    DeviceState,
    PeerState,
    format_get,
    format_status,
)


def key(name: str) -> bytes:
    return clamp(hashlib.sha256(name.encode()).digest())


def b64(name: str) -> str:
    return encode_key(key(name))


def pub(name: str) -> str:
    return encode_key(public_key_of(key(name)))


def hexpub(name: str) -> str:
    return public_key_of(key(name)).hex()


# --- config ---------------------------------------------------------------------------------

def config_seeds() -> dict[str, bytes]:
    minimal = f"[Interface]\nPrivateKey = {b64('me')}\nAddress = 100.64.0.2/24\n"
    full = f"""\
# a full tunnel
[Interface]
PrivateKey = {b64('me')}
Address = 100.64.0.2/24, fd00:64::2/64
ListenPort = 51820
MTU = 1420
DNS = 100.64.0.53, corp.example
Table = 1234
FwMark = 0xca6c
SaveConfig = false
PreUp = echo up %i
PostDown = echo down %i

[Peer]
PublicKey = {pub('gateway')}
PresharedKey = {b64('psk')}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = 198.18.0.1:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {pub('other')}
AllowedIPs = 100.64.0.7/32
Endpoint = [fd00:18::1]:51820
"""
    return {
        "minimal.conf": minimal,
        "full.conf": full,
        "dns-endpoint.conf": minimal + f"[Peer]\nPublicKey = {pub('gw')}\n"
                                       "Endpoint = vpn.example.com:4500\nAllowedIPs = 10.0.0.0/8\n",
        "crlf-bom.conf": "\ufeff" + minimal.replace("\n", "\r\n"),
        "key-on-wrong-line.conf": minimal + f"ListenPort = {b64('me')}\n",
        "hex-key-value.conf": minimal + f"FwMark = {key('me').hex()}\n",
        "key-as-name.conf": minimal + f"{b64('psk')} = 1\n",
        "key-in-prefix.conf": minimal + f"[Peer]\nPublicKey = {pub('gw')}\n"
                                        f"AllowedIPs = 10.0.0.0/8, {b64('psk')}\n",
        "bad-values.conf": minimal + "MTU = 70000\nTable = nowhere\n",
    }


# --- uapi -----------------------------------------------------------------------------------

def uapi_seeds() -> dict[str, bytes]:
    setconf = (f"set=1\nprivate_key={key('me').hex()}\nlisten_port=51820\nfwmark=0\n"
               f"replace_peers=true\npublic_key={hexpub('a')}\n"
               f"preshared_key={key('psk').hex()}\nprotocol_version=1\n"
               f"replace_allowed_ips=true\nallowed_ip=100.64.0.0/24\nallowed_ip=fd00::/64\n"
               f"endpoint=198.18.0.1:51820\npersistent_keepalive_interval=25\n"
               f"public_key={hexpub('b')}\nendpoint=[fd00:18::2]:51820\n"
               f"allowed_ip=10.0.0.0/8\n\n")
    state = DeviceState(key("me"), 51820, 0, (
        PeerState(public_key_of(key("a")), key("psk"), ("198.18.0.1", 51820),
                  (1_700_000_000, 5), 1372, 1428, 25,
                  (ipaddress.ip_network("100.64.0.0/24"), ipaddress.ip_network("fd00::/64"))),))
    return {
        "setconf": setconf,
        "set-peer": f"set=1\npublic_key={hexpub('a')}\nupdate_only=true\n"
                    f"allowed_ip=100.64.0.9/32\n\n",
        "remove-peer": f"set=1\npublic_key={hexpub('a')}\nremove=true\n\n",
        "get": "get=1\n\n",
        "status-stop": "fz_status=1\n\nfz_stop=1\n\n",
        "pipelined": f"get=1\n\nset=1\r\nlisten_port=0\r\n\r\n{setconf}",
        "key-on-wrong-line": f"set=1\nlisten_port={key('me').hex()}\n\n",
        "key-as-name": f"set=1\n{key('me').hex()}=1\n\n",
        "b64-key-value": f"set=1\npublic_key={hexpub('a')}\nendpoint={b64('psk')}\n\n",
        "get-reply": format_get(state),
        "status-reply": format_status({"interface": "wg0", "peers": []}),
    }


# --- tunnel ---------------------------------------------------------------------------------

RESPONDER, INITIATOR = b"\x00", b"\x01"


def tunnel_seeds() -> dict[str, bytes]:
    v4 = ip_packet("100.64.0.1", "100.64.0.2", b"ping" * 8, 17)
    v6 = ip_packet("fd00:64::1", "fd00:64::2", b"ping" * 8, 17)
    from_responder = ip_packet("100.64.0.2", "100.64.0.1", b"pong" * 8, 17)
    stranger = ip_packet("100.64.0.66", "100.64.0.2", b"spoofed", 17)
    return {
        "transport-v4": RESPONDER + T.op(T.TRANSPORT, b"\x00" + v4),
        "transport-v6": RESPONDER + T.op(T.TRANSPORT, b"\x00" + v6),
        "transport-spoofed": RESPONDER + T.op(T.TRANSPORT, b"\x00" + stranger),
        "transport-replayed": RESPONDER + T.op(T.TRANSPORT, b"\x00" + v4)
                              + T.op(T.TRANSPORT, b"\x01" + v4),
        "keepalive": INITIATOR + T.op(T.TRANSPORT, b"\x00"),
        "sealed-gro": RESPONDER + T.op(T.SEALED_GRO, b"\x03" + v4 * 4),
        "sealed-gro-mixed": INITIATOR + T.op(T.SEALED_GRO, b"\x22" + from_responder * 3),
        "raw-garbage": RESPONDER + T.op(T.RAW, b"\x04\x00\x00\x00" + bytes(40))
                       + T.op(T.RAW, b"\x01" + bytes(147)),
        "gro-raw": RESPONDER + T.op(T.GRO, struct.pack("<H", 64) + b"\x01"
                                    + (b"\x04\x00\x00\x00" + bytes(60)) * 3),
        "handshake-mac1": RESPONDER + T.op(T.HANDSHAKE, b"\x04" + bytes(144)),
        "response-mac1": INITIATOR + T.op(T.TIME, b"\x00\x04") + T.op(T.TUN, v4)
                         + T.op(T.HANDSHAKE, b"\x2d" + bytes(88)),
        "cookie-reply": INITIATOR + T.op(T.TIME, b"\x00\x04") + T.op(T.TUN, v4)
                        + T.op(T.HANDSHAKE, b"\x2a" + bytes(60)),
        "genuine-handshake": RESPONDER + T.op(T.GENUINE, b"\x00") + T.op(T.PUMP)
                             + T.op(T.TRANSPORT, b"\x00" + v4),
        "genuine-mutated": RESPONDER + T.op(T.GENUINE, b"\x03" + bytes(8) + b"\x01"),
        "under-load": RESPONDER + T.op(T.LOAD, b"\x01") + T.op(T.GENUINE, b"\x00")
                      + T.op(T.PUMP) + T.op(T.GENUINE, b"\x00") + T.op(T.PUMP),
        "rekey": INITIATOR + T.op(T.TIME, struct.pack("<H", 8 * 125)) + T.op(T.TUN, v4)
                 + T.op(T.PUMP) + T.op(T.TRANSPORT, b"\x00" + from_responder),
        "expired": RESPONDER + T.op(T.TIME, struct.pack("<H", 8 * 200))
                   + T.op(T.TRANSPORT, b"\x00" + v4),
        "roaming": RESPONDER + T.op(T.SOURCE, b"\x03") + T.op(T.TRANSPORT, b"\x00" + v4)
                   + T.op(T.TUN, from_responder) + T.op(T.PUMP),
    }


# --- offload --------------------------------------------------------------------------------

def tcp(src: str, dst: str, payload: bytes, seq: int, flags: int = 0x10,
        options: bytes = b"") -> bytes:
    header = struct.pack("!HHIIBBHHH", 40000, 443, seq, 1, (20 + len(options)) // 4 << 4,
                         flags, 512, 0, 0) + options
    return ip_packet(src, dst, header + payload, 6)


def vnet(flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int,
         csum_offset: int) -> bytes:
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def frame(packets: list[bytes]) -> bytes:
    return b"".join(struct.pack("<H", len(p)) + p for p in packets)


def offload_seeds() -> dict[str, bytes]:
    tso4 = tcp("10.0.0.1", "10.0.0.2", bytes(range(250)) * 4, 1000, 0x18)
    tso6 = tcp("fd00::1", "fd00::2", bytes(range(200)) * 3, 7, 0x10, b"\x01\x01\x08\x0a" + bytes(8))
    uso4 = udp_packet("10.0.0.1", "10.0.0.2", bytes(range(100)) * 7)
    uso6 = udp_packet("fd00::1", "fd00::2", bytes(300))
    segments = [tcp("10.0.0.1", "10.0.0.2", bytes([i]) * 100, 1000 + 100 * i) for i in range(4)]
    segments6 = [tcp("fd00::1", "fd00::2", bytes([i]) * 80, 5 + 80 * i) for i in range(3)]
    datagrams = [udp_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 50) for i in range(3)]
    return {
        "read-tso4": b"\x00" + vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 300, 20, 16) + tso4,
        "read-tso6": b"\x00" + vnet(F_NEEDS_CSUM, GSO_TCPV6, 72, 256, 40, 16) + tso6,
        "read-uso4": b"\x00" + vnet(F_NEEDS_CSUM, GSO_UDP_L4, 28, 200, 20, 6) + uso4,
        "read-uso6": b"\x00" + vnet(F_NEEDS_CSUM, GSO_UDP_L4, 48, 128, 40, 6) + uso6,
        "read-csum": b"\x00" + vnet(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6) + datagrams[0],
        "coalesce-tcp4": b"\x01\x00" + frame(segments),
        "coalesce-tcp6": b"\x01\x00" + frame(segments6),
        "coalesce-udp": b"\x01\x01" + frame(datagrams),
        "coalesce-mixed": b"\x01\x01" + frame([segments[0], datagrams[0], segments[1],
                                               tcp("10.0.0.1", "10.0.0.2", b"", 0, 0x02),
                                               segments6[0], segments[2]]),
        "seal-tso4": b"\x02" + struct.pack("<H", 300) + tso4,
        "seal-tso6": b"\x02" + struct.pack("<H", 256) + tso6,
        "seal-uso4": b"\x02" + struct.pack("<H", 200) + uso4,
    }


def main() -> None:
    for harness, seeds in (("config", config_seeds()), ("uapi", uapi_seeds()),
                           ("tunnel", tunnel_seeds()), ("offload", offload_seeds())):
        directory = os.path.join(HERE, "corpus", harness)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        for name, seed in seeds.items():
            data = seed.encode() if isinstance(seed, str) else seed
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        print(f"{directory}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
