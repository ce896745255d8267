"""Cryptokey routing: AllowedIPs prefixes to peers, by longest-prefix match.

Each family keeps one dict per prefix length; a lookup tries the lengths present, longest first.
Configs have few distinct lengths, so a lookup is a handful of dict probes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


def as_network(prefix: Network | str) -> Network:
    """A prefix as the kernel and wg(8) read one: host bits are masked, so "10.0.0.1/24" is
    10.0.0.0/24, and an address without a length is a single host."""
    if isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return prefix
    return ipaddress.ip_network(prefix, strict=False)


class _FamilyTable(Generic[T]):
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, T]] = {}
        self.lengths: list[int] = []  # descending

    def insert(self, network: int, length: int, value: T) -> None:
        table = self.by_length.get(length)
        if table is None:
            table = self.by_length[length] = {}
            self.lengths = sorted(self.by_length, reverse=True)
        table[network] = value

    def remove(self, network: int, length: int) -> None:
        table = self.by_length.get(length)
        if table is not None:
            table.pop(network, None)
            if not table:
                del self.by_length[length]
                self.lengths = sorted(self.by_length, reverse=True)

    def lookup(self, address: int) -> T | None:
        bits = self.bits
        for length in self.lengths:
            value = self.by_length[length].get(address >> (bits - length) if length else 0)
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[T]):
    """A map from IP prefixes to values (peers) with longest-prefix lookup."""

    def __init__(self) -> None:
        self._v4: _FamilyTable[T] = _FamilyTable(32)
        self._v6: _FamilyTable[T] = _FamilyTable(128)
        self._entries: dict[Network, T] = {}

    def _table(self, network: Network) -> _FamilyTable[T]:
        return self._v4 if network.version == 4 else self._v6

    def insert(self, network: Network, value: T) -> None:
        """Map `network` to `value`; an existing identical prefix moves to the new value (as wg)."""
        length = network.prefixlen
        key = int(network.network_address) >> (network.max_prefixlen - length) if length else 0
        self._table(network).insert(key, length, value)
        self._entries[network] = value

    def remove(self, network: Network) -> None:
        length = network.prefixlen
        key = int(network.network_address) >> (network.max_prefixlen - length) if length else 0
        self._table(network).remove(key, length)
        self._entries.pop(network, None)

    def remove_value(self, value: T) -> None:
        for network in [n for n, v in self._entries.items() if v is value]:
            self.remove(network)

    def networks_of(self, value: T) -> list[Network]:
        return [n for n, v in self._entries.items() if v is value]

    def lookup(self, address: bytes | bytearray | memoryview) -> T | None:
        """The value of the longest prefix containing a 4- or 16-byte address."""
        table = self._v4 if len(address) == 4 else self._v6
        return table.lookup(int.from_bytes(address, "big"))

    def __iter__(self) -> Iterator[tuple[Network, T]]:
        return iter(list(self._entries.items()))

    def __len__(self) -> int:
        return len(self._entries)
