"""sd_notify datagrams, received on real unix datagram sockets (a path and an abstract name)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fz_trio.shell.sd_notify import Notifier


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.settimeout(2)
    return sock


def test_each_message_is_one_datagram_of_key_value_lines(tmp_path: Path) -> None:
    address = str(tmp_path / "notify")
    with _receiver(address) as sock:
        notifier = Notifier(address)
        notifier.ready()
        notifier.status("1/2 peers up\nand a second line")
        notifier.stopping()
        notifier.reloading()
        assert sock.recv(4096) == b"READY=1\n"
        assert sock.recv(4096) == b"STATUS=1/2 peers up and a second line\n"
        assert sock.recv(4096) == b"STOPPING=1\n"
        reload = sock.recv(4096).decode()
        assert reload.startswith("RELOADING=1\nMONOTONIC_USEC=") and reload.endswith("\n")


def test_an_abstract_socket_and_the_environment() -> None:
    address = f"@fz-trio-test-{os.getpid()}"
    with _receiver(address) as sock:
        os.environ["NOTIFY_SOCKET"] = address
        try:
            Notifier.from_environment().ready()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        assert sock.recv(4096) == b"READY=1\n"


def test_without_a_manager_nothing_happens_and_a_gone_one_raises_nothing(tmp_path: Path) -> None:
    os.environ.pop("NOTIFY_SOCKET", None)
    assert not Notifier.from_environment().enabled
    Notifier.from_environment().ready()
    gone = Notifier(str(tmp_path / "nobody"))
    gone.ready()
    gone.status("still fine")
