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

from collections.abc import Mapping

import attrs

from fz_trio.config import Config
from fz_trio.core import KEY_LEN, Endpoint, Tunnel, TunnelError, check_peer_key, public_key_of
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


def reload_request(running: Config, new: Config,
                   endpoints: Mapping[bytes, Endpoint]) -> SetRequest:
    """The `set` that turns the tunnel `running` configured into what `new` says (SIGHUP), the
    way `wg syncconf` does: a peer whose lines did not change is not touched (its sessions and
    roamed endpoint stay), a changed one is set whole, a vanished one removed. `endpoints` holds
    the new config's endpoints, resolved."""
    old_iface, iface = running.interface, new.interface
    old_peers = {peer.public_key: peer for peer in running.peers}
    changes = []
    for peer in new.peers:
        old = old_peers.pop(peer.public_key, None)
        if old is not None and attrs.evolve(old, line=peer.line) == peer:
            continue
        endpoint = endpoints.get(peer.public_key)
        if old is not None and old.endpoint == peer.endpoint:
            endpoint = None  # unchanged: keep where the peer roamed to
        changes.append(PeerChange(
            peer.public_key, preshared_key=peer.preshared_key or _NO_KEY, endpoint=endpoint,
            persistent_keepalive=peer.persistent_keepalive or 0, replace_allowed_ips=True,
            allowed_ips=peer.allowed_ips))
    changes += [PeerChange(key, remove=True) for key in old_peers]
    return SetRequest(
        private_key=(iface.private_key if iface.private_key != old_iface.private_key
                     else None),
        listen_port=(iface.listen_port or 0 if iface.listen_port != old_iface.listen_port
                     else None),
        fwmark=(iface.fwmark or 0 if iface.fwmark != old_iface.fwmark else None),
        peers=tuple(changes))


# What a reload cannot change on a running interface (they need `down` and `up` again).
RESTART_ONLY = ("addresses", "mtu", "dns_servers", "dns_search", "table", "pre_up", "post_up",
                "pre_down", "post_down")


def needs_restart(running: Config, new: Config) -> list[str]:
    """The [Interface] settings that differ but are only applied at start."""
    return [name for name in RESTART_ONLY
            if getattr(running.interface, name) != getattr(new.interface, name)]
