"""A UAPI `set` applied to a running Tunnel: checked whole first, then applied in one go.

wireguard-go applies a `set` line by line and stops at the first bad one, leaving what came
before applied; here `check` finds every reason to refuse before `apply_to_tunnel` changes
anything, so a refused request changes nothing and an accepted one cannot fail half-way. What
the request asks of the sockets (listen port, fwmark) is the app's, which does it before
calling `apply_to_tunnel`. Pure: the Tunnel, the request, `now` and `wall` in; no IO.

The semantics are wireguard-go's (device/uapi.go): a peer block for the interface's own public
key is ignored; `update_only` leaves an unknown peer alone; `remove` ends the block;
`replace_allowed_ips` empties the peer's AllowedIPs before the block's `allowed_ip`s; an
AllowedIP another peer holds moves to this one; a persistent keepalive turned on sends a
keepalive at once; the same private key again changes nothing.
"""

from __future__ import annotations

from fz_trio.core import KEY_LEN, Tunnel, TunnelError, check_peer_key, public_key_of
from fz_trio.uapi import EINVAL, PeerChange, SetRequest, UapiError

_NO_KEY = bytes(KEY_LEN)


def new_private_key(tunnel: Tunnel, request: SetRequest) -> bytes | None:
    """The private key the tunnel has once `request` is applied (None: none)."""
    if request.private_key is None:
        return tunnel.private_key
    return None if request.private_key == _NO_KEY else request.private_key


def check(tunnel: Tunnel, request: SetRequest) -> None:
    """Raise UapiError (EINVAL) if applying `request` to `tunnel` would fail anywhere."""
    key = new_private_key(tunnel, request)
    own = None if key is None else public_key_of(key)
    for change in request.peers:
        if change.remove or change.public_key == own:
            continue
        try:
            check_peer_key(change.public_key)
        except TunnelError as e:
            raise UapiError(EINVAL, str(e)) from None


def apply_to_tunnel(tunnel: Tunnel, request: SetRequest, now: float, wall: float) -> None:
    """Apply a request `check` accepted. The caller flushes the tunnel's outbox afterwards (a
    keepalive turned on, a handshake for packets staged while a key was missing)."""
    check(tunnel, request)  # cheap, and it keeps "cannot fail half-way" true for any caller
    if request.private_key is not None:
        tunnel.set_private_key(new_private_key(tunnel, request))
    if request.replace_peers:
        for public_key in list(tunnel.peers):
            tunnel.remove_peer(public_key)
    for change in request.peers:
        _apply_peer(tunnel, change, now, wall)


def _apply_peer(tunnel: Tunnel, change: PeerChange, now: float, wall: float) -> None:
    key = change.public_key
    if key == tunnel.public_key:
        return
    if change.remove:
        tunnel.remove_peer(key)
        return
    if key not in tunnel.peers:
        if change.update_only:
            return
        tunnel.add_peer(key)
    if change.preshared_key is not None:
        tunnel.set_preshared_key(key, change.preshared_key)
    if change.endpoint is not None:
        tunnel.set_endpoint(key, change.endpoint)
    if change.replace_allowed_ips:
        tunnel.set_allowed_ips(key, ())
    if change.allowed_ips:
        tunnel.add_allowed_ips(key, change.allowed_ips)
    if change.persistent_keepalive is not None:
        tunnel.set_persistent_keepalive(key, change.persistent_keepalive, now, wall)
