"""Which Linux capabilities this process lacks, from the kernel's own account of them.

Root is not the question: a systemd unit can give a non-root user CAP_NET_ADMIN alone, and a
root process can run with its bounding set cut down (`setpriv`, containers) and lack it. What
the kernel checks is the effective set, which `/proc/self/status` shows as `CapEff`.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "capability_name",
    "effective_capabilities",
    "missing_capabilities",
    "needs_bind_service",
]

# linux/capability.h
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12

_NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN"}

# Below this port a bind needs CAP_NET_BIND_SERVICE, unless the namespace's sysctl says else.
_UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
DEFAULT_UNPRIVILEGED_PORT_START = 1024


def capability_name(cap: int) -> str:
    return _NAMES.get(cap, f"capability {cap}")


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The effective set as a bit mask (bit N = capability N)."""
    with open(status_path, encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split(":", 1)[1].strip(), 16)
    raise OSError(f"no CapEff line in {status_path}")


def missing_capabilities(needed: Iterable[int]) -> list[str]:
    """The names of the capabilities in `needed` that the effective set lacks, in order."""
    have = effective_capabilities()
    return [capability_name(cap) for cap in needed if not have >> cap & 1]


def needs_bind_service(port: int | None) -> bool:
    """Whether binding UDP `port` needs CAP_NET_BIND_SERVICE in this network namespace."""
    if not port:
        return False  # the kernel picks an unprivileged port
    try:
        with open(_UNPRIVILEGED_PORT_START, encoding="ascii") as f:
            start = int(f.read().strip())
    except (OSError, ValueError):
        start = DEFAULT_UNPRIVILEGED_PORT_START
    return port < start
