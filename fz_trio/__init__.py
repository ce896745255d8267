"""fz_trio: a WireGuard-compatible VPN client for Linux, on Trio, with a sans-IO core."""

__version__ = "0.1.0"
