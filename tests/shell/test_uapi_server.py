"""The UAPI listener over a real unix socket: permissions, stale and live sockets, requests split
anywhere, several on one connection, bad ones closed on, too many connections refused, and the
socket file removed on the way out (but never another process's)."""

from __future__ import annotations

import os
import secrets
import socket
import stat
from collections.abc import AsyncIterator

import pytest
import trio

from fz_trio.shell.uapi_server import (
    MAX_CONNECTIONS,
    UapiListener,
    UapiServerError,
    open_listener,
    serve,
)
from fz_trio.uapi import SOCKET_DIR, GetRequest, Request, UapiError, format_errno, socket_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the UAPI directory is root's")


def unique_name() -> str:
    return "fzu" + secrets.token_hex(4)


async def answer(request: Request | UapiError) -> bytes:
    """Replies that say which request arrived, so the test sees the parse."""
    if isinstance(request, UapiError):
        return format_errno(request.errno)
    if isinstance(request, GetRequest):
        return b"listen_port=1\nerrno=0\n\n"
    return format_errno(0)


@pytest.fixture
async def listening() -> AsyncIterator[tuple[UapiListener, list[str]]]:
    listener = open_listener(unique_name())
    errors: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: serve(listener, answer, on_error=errors.append))
            yield listener, errors
            nursery.cancel_scope.cancel()
    finally:
        listener.close()


async def exchange(path: str, data: bytes, *, chunk: int | None = None) -> bytes:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(path)
        step = chunk or len(data)
        for i in range(0, len(data), step):
            await sock.send(data[i:i + step])
            await trio.sleep(0)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk_in := await sock.recv(65536):
            out += chunk_in
        return out


async def test_permissions_are_wireguard_gos(listening: tuple[UapiListener, list[str]]) -> None:
    listener, _ = listening
    mode = os.lstat(listener.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o700
    assert stat.S_IMODE(os.stat(SOCKET_DIR).st_mode) == 0o755
    assert os.lstat(listener.path).st_uid == 0


async def test_requests_split_anywhere_and_several_per_connection(
        listening: tuple[UapiListener, list[str]]) -> None:
    listener, _ = listening
    data = b"get=1\n\nset=1\nlisten_port=x\n\nset=1\nfwmark=7\n\nget=1\n\n"
    expected = b"listen_port=1\nerrno=0\n\nerrno=-22\n\nerrno=0\n\nlisten_port=1\nerrno=0\n\n"
    assert await exchange(listener.path, data) == expected
    assert await exchange(listener.path, data, chunk=1) == expected


async def test_a_bad_operation_closes_the_connection_unanswered(
        listening: tuple[UapiListener, list[str]]) -> None:
    listener, errors = listening
    assert await exchange(listener.path, b"get=1\n\nfrobnicate=1\n\nget=1\n\n") \
        == b"listen_port=1\nerrno=0\n\n"
    assert errors == ["closed_bad_request"]


async def test_too_many_connections_are_refused(
        listening: tuple[UapiListener, list[str]]) -> None:
    listener, errors = listening
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.connect(listener.path)
            idle.append(sock)
        await trio.sleep(0.05)
        try:
            refused = await exchange(listener.path, b"get=1\n\n")
        except (BrokenPipeError, ConnectionResetError):
            refused = b""  # closed before our request was even written
        assert refused == b""
        assert "too_many_connections" in errors
        idle.pop().close()
        await trio.sleep(0.05)
        assert await exchange(listener.path, b"get=1\n\n") == b"listen_port=1\nerrno=0\n\n"
    finally:
        for sock in idle:
            sock.close()


def test_a_stale_socket_is_replaced_and_a_live_one_refused() -> None:
    name = unique_name()
    path = socket_path(name)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a process that died
    listener = open_listener(name)
    try:
        with pytest.raises(UapiServerError, match="in use"):
            open_listener(name)
    finally:
        listener.close()
    assert not os.path.exists(path)


def test_close_leaves_another_process_s_socket_alone() -> None:
    name = unique_name()
    listener = open_listener(name)
    os.unlink(listener.path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(listener.path)
        listener.close()
        assert os.path.exists(listener.path)
    finally:
        other.close()
        os.unlink(listener.path)


def test_a_path_that_is_not_a_socket_is_refused() -> None:
    name = unique_name()
    path = socket_path(name)
    with open(path, "w"):
        pass
    try:
        with pytest.raises(UapiServerError, match="not a socket"):
            open_listener(name)
    finally:
        os.unlink(path)
