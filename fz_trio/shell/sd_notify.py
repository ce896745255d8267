"""systemd's readiness protocol (sd_notify(3)): datagrams to the socket in $NOTIFY_SOCKET.

`Type=notify` units learn from us when the interface is up (READY=1), what it is doing
(STATUS=..., shown by `systemctl status`), and when it is going down (STOPPING=1) or reloading
(RELOADING=1 with MONOTONIC_USEC, as systemd 253's notify-reload wants; older ones ignore it).
Outside systemd NOTIFY_SOCKET is unset and every call does nothing. A leading `@` names a
socket in the abstract namespace. Sending never blocks and never raises: a service manager that
went away must not take the tunnel with it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None) -> None:
        self.address = address
        self._failed = False

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self) -> None:
        self.send(READY="1")

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def stopping(self) -> None:
        self.send(STOPPING="1")

    def reloading(self) -> None:
        self.send(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                                                     // 1000))

    def send(self, **fields: str) -> None:
        """One datagram of KEY=value lines (values without newlines)."""
        if self.address is None:
            return
        payload = "".join(f"{key}={value.replace(chr(10), ' ')}\n"
                          for key, value in fields.items()).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(payload, target)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.debug("cannot notify the service manager at %s: %s", self.address, e)
