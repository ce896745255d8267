"""A WireGuard tunnel across the test network: a server peer in namespace A, a client in B.

Either end is fz-trio (run as `python -m fz_trio up`, exactly as a user would) or wireguard-go.
The demo, the interop tests and the benchmark all build their tunnels here; fz_trio.lab.iperf
measures through them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal, get_args

import attrs

from fz_trio.core import encode_key, generate_private_key, public_key_of
from fz_trio.lab.testnet import TestNet, WgPeer, wait_for

Implementation = Literal["fz-trio", "wireguard-go"]
IMPLEMENTATIONS: tuple[Implementation, ...] = get_args(Implementation)
LISTEN_PORT = 51820


def implementation(name: str) -> Implementation:
    """`name` as an Implementation, for names that come from a command line."""
    for known in IMPLEMENTATIONS:
        if name == known:
            return known
    raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(IMPLEMENTATIONS)}")


@attrs.define
class Side:
    implementation: Implementation
    namespace: str
    ifname: str
    private_key: bytes
    addresses: list[str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def public_key(self) -> bytes:
        return public_key_of(self.private_key)

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


def write_config(path: Path, *, private_key: bytes, addresses: list[str], listen_port: int | None,
                 peer_public: bytes, allowed_ips: list[str], endpoint: str | None,
                 preshared_key: bytes | None, persistent_keepalive: int | None = None,
                 mtu: int = 1420) -> None:
    lines = ["[Interface]", f"PrivateKey = {encode_key(private_key)}",
             f"Address = {', '.join(addresses)}", f"MTU = {mtu}"]
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    lines += ["", "[Peer]", f"PublicKey = {encode_key(peer_public)}",
              f"AllowedIPs = {', '.join(allowed_ips)}"]
    if preshared_key is not None:
        lines.append(f"PresharedKey = {encode_key(preshared_key)}")
    if endpoint is not None:
        lines.append(f"Endpoint = {endpoint}")
    if persistent_keepalive:
        lines.append(f"PersistentKeepalive = {persistent_keepalive}")
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


@attrs.define
class TunnelPair:
    """Server (namespace A, listens on 51820) and client (namespace B, has the endpoint)."""

    net: TestNet
    server_impl: Implementation
    client_impl: Implementation
    use_psk: bool = False
    ipv6_underlay: bool = False
    full_tunnel: bool = False  # the client routes everything (0.0.0.0/0, ::/0) through the server
    extra_args: list[str] = attrs.Factory(list)
    # The client's Endpoint when it is not the server itself (e.g. an impairment relay's address).
    endpoint: str | None = None
    server: Side = attrs.field(init=False)
    client: Side = attrs.field(init=False)
    psk: bytes | None = attrs.field(init=False, default=None)
    restarts: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        net = self.net
        self.server = Side(self.server_impl, net.ns_a, f"fza{net.suffix}", generate_private_key(),
                           [f"{net.tunnel_a4}/24", f"{net.tunnel_a6}/64"])
        self.client = Side(self.client_impl, net.ns_b, f"fzb{net.suffix}", generate_private_key(),
                           [f"{net.tunnel_b4}/24", f"{net.tunnel_b6}/64"])
        if self.use_psk:
            self.psk = os.urandom(32)

    @property
    def server_endpoint(self) -> str:
        if self.endpoint is not None:
            return self.endpoint
        if self.ipv6_underlay:
            return f"[{self.net.underlay6_a}]:{LISTEN_PORT}"
        return f"{self.net.underlay_a}:{LISTEN_PORT}"

    @property
    def client_allowed_ips(self) -> list[str]:
        """The client's AllowedIPs for the server."""
        net = self.net
        return (["0.0.0.0/0", "::/0"] if self.full_tunnel
                else [f"{net.tunnel_a4}/32", f"{net.tunnel_a6}/128"])

    def start(self, timeout: float = 20.0) -> None:
        """Start both ends and wait until a ping crosses the tunnel both ways."""
        net = self.net
        self._start(self.server)
        self._start(self.client)
        wait_for(lambda: self.ping(self.client.namespace, net.tunnel_a4, count=1, check=False),
                 timeout, what=f"a ping through the tunnel\nserver log:\n{self.server.log_tail()}"
                               f"\nclient log:\n{self.client.log_tail()}")

    def _start(self, side: Side) -> None:
        if side is self.server:
            self._start_side(self.server, peer=self.client, listen_port=LISTEN_PORT,
                             endpoint=None, allowed=[f"{self.net.tunnel_b4}/32",
                                                     f"{self.net.tunnel_b6}/128"])
        else:
            self._start_side(self.client, peer=self.server, listen_port=None,
                             endpoint=self.server_endpoint, allowed=self.client_allowed_ips)

    def restart(self, side: Side, *, new_key: bool = False, timeout: float = 5.0) -> None:
        """Stop one end (SIGTERM) and start it again with the same private key or a new one;
        returns once it is up again. The other end is left alone: after a new key it still
        knows the old public key until it is told (`wg set`). A restarted wireguard-go gets a
        new interface name (TestNet keeps each control socket's name for itself); fz-trio is
        started again from the same config file name, as a user would."""
        assert side.process is not None
        side.process.send_signal(signal.SIGTERM)
        side.process.wait(timeout)
        if new_key:
            side.private_key = generate_private_key()
        if side.implementation == "wireguard-go":
            self.restarts += 1
            side.ifname = f"{side.ifname[:3]}{self.restarts}{self.net.suffix}"
        elif side.log_path is not None and side.log_path.exists():
            side.log_path.rename(side.log_path.with_suffix(f".{side.process.pid}.log"))
        self._start(side)

    def _start_side(self, side: Side, *, peer: Side, listen_port: int | None,
                    endpoint: str | None, allowed: list[str]) -> None:
        if side.implementation == "wireguard-go":
            side.process = self.net.start_wireguard_go(
                side.namespace, side.ifname, private_key=side.private_key, listen_port=listen_port,
                peers=[WgPeer(peer.public_key, allowed, endpoint=endpoint,
                              preshared_key=self.psk)],
                addresses=side.addresses,
            )
            side.log_path = self.net.tmpdir / f"wireguard-go-{side.namespace}-{side.ifname}.log"
            return
        conf = self.net.tmpdir / f"{side.ifname}.conf"
        write_config(conf, private_key=side.private_key, addresses=side.addresses,
                     listen_port=listen_port, peer_public=peer.public_key, allowed_ips=allowed,
                     endpoint=endpoint, preshared_key=self.psk)
        side.log_path = self.net.tmpdir / f"fz-trio-{side.ifname}.log"
        with open(side.log_path, "wb") as log:
            side.process = self.net.popen(
                side.namespace, sys.executable, "-m", "fz_trio", "up", str(conf), *self.extra_args,
                env=self.net.python_env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )

        def device_up() -> bool:
            if side.process is not None and side.process.poll() is not None:
                raise RuntimeError(f"fz-trio exited with {side.process.returncode}:\n"
                                   + side.log_tail())
            return "up: mtu" in side.log_tail()

        wait_for(device_up, 15.0, what=f"fz-trio {side.ifname} to come up")

    def ping(self, ns: str, address: str, *, count: int = 3, check: bool = True) -> bool:
        result = self.net.run(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", address,
                              check=False, timeout=10 + count)
        if check and result.returncode != 0:
            raise AssertionError(f"ping {address} from {ns} failed:\n{result.stdout}")
        return result.returncode == 0

    def stop_fz_trio(self, side: Side, timeout: float = 5.0) -> float:
        """SIGTERM an fz-trio end; returns how long it took to exit."""
        assert side.process is not None and side.implementation == "fz-trio"
        started = time.monotonic()
        side.process.send_signal(signal.SIGTERM)
        side.process.wait(timeout)
        return time.monotonic() - started
