"""Where a peer is: a resolved UDP address, the one meaning `Endpoint` has in fz-trio."""

from __future__ import annotations

Endpoint = tuple[str, int]  # (IP literal without brackets, port)


def format_endpoint(endpoint: Endpoint) -> str:
    """host:port, with brackets around an IPv6 host (as `wg show` prints it)."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
