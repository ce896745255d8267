"""The sans-IO WireGuard core: bytes and `now` in, bytes and deadlines out.

Nothing in this package opens a socket, reads a clock, sleeps, spawns a thread or imports Trio.
"""
