"""Open a Linux TUN device by ioctl on /dev/net/tun.

We do not use pyroute2's tuntap helper: it closes its fd and leaves a *persistent* device behind.
A device created here is not persistent, so it vanishes when the last queue fd is closed — a crashed
process never leaves an interface behind.

Every device is multi-queue (IFF_MULTI_QUEUE) and all queues are attached at open, so the process
owns the device from the start. The first queue is opened with IFF_TUN_EXCL, so we never silently
join a device that another process created under the same name.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
from types import TracebackType

import attrs

from fz_trio.ifname import check_interface_name

__all__ = [
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_TUN",
    "IFF_TUN_EXCL",
    "IFF_VNET_HDR",
    "TUNGETFEATURES",
    "TUNSETIFF",
    "TUNSETOFFLOAD",
    "TUNSETVNETHDRSZ",
    "TUN_PATH",
    "TunDevice",
    "TunError",
    "open_tun",
    "set_nonblocking",
]

TUN_PATH = "/dev/net/tun"

# ioctl numbers from linux/if_tun.h: _IOW/_IOR('T', n, int) on x86-64 and arm64.
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETFEATURES = 0x800454CF
TUNSETVNETHDRSZ = 0x400454D8

IFF_TUN = 0x0001
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

_IFREQ = "16sH22x"  # struct ifreq: ifr_name, ifr_flags, padding to 40 bytes

# Flags open_tun always sets; callers may add others (IFF_VNET_HDR for offloads, later).
_BASE_FLAGS = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE
# Flags a caller may add through `flags=`. Anything else would change what kind of device we make.
_EXTRA_FLAGS_ALLOWED = IFF_VNET_HDR


class TunError(Exception):
    """A TUN device could not be opened; the message says why and what to check."""


@attrs.define
class TunDevice:
    """An open, non-persistent, multi-queue TUN device.

    `name` is the name the kernel actually gave the device (it differs from the requested one
    when a template like "fz%d" was asked for). `fds` holds one fd per queue; each fd carries raw
    IP packets (IFF_NO_PI: no 4-byte packet-info header). `flags` are the TUNSETIFF flags used.
    """

    name: str
    fds: list[int]
    flags: int = _BASE_FLAGS

    @property
    def closed(self) -> bool:
        return not self.fds

    def close(self) -> None:
        """Close every queue fd; the kernel removes the device with the last one. Idempotent."""
        fds, self.fds = self.fds, []
        first_error: OSError | None = None
        for fd in fds:
            try:
                os.close(fd)
            except OSError as exc:  # keep closing the rest: a leaked queue keeps the device alive
                first_error = first_error or exc
        if first_error is not None:
            raise TunError(
                f"closing TUN queue of {self.name!r} failed: {first_error}"
            ) from first_error

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def set_nonblocking(fd: int, flag: bool = True) -> None:
    """Switch a queue fd between blocking and non-blocking (O_NONBLOCK) mode."""
    os.set_blocking(fd, not flag)


def _open_queue_fd(name: str) -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise TunError(
            f"cannot open {TUN_PATH}: no such device node (is the tun module loaded? "
            "try `modprobe tun`; in a container, pass /dev/net/tun through)"
        ) from exc
    except PermissionError as exc:
        raise TunError(
            f"cannot open {TUN_PATH}: permission denied (are you root / do you have CAP_NET_ADMIN?)"
        ) from exc
    except OSError as exc:
        raise TunError(f"cannot open {TUN_PATH} for {name!r}: {exc.strerror}") from exc


def _tunsetiff_error(name: str, exc: OSError, first: bool) -> TunError:
    code = exc.errno
    if code == errno.EPERM or code == errno.EACCES:
        msg = "permission denied (are you root / do you have CAP_NET_ADMIN?)"
    elif code == errno.EBUSY:
        # With IFF_TUN_EXCL the kernel answers EBUSY for *any* existing device of that name.
        msg = "an interface with this name already exists (pick another name or delete it)"
    elif code == errno.EINVAL:
        msg = (
            "the kernel rejected the request (invalid name, or the name belongs to a "
            "non-TUN device or to a TUN device with different flags)"
            if first
            else "the kernel refused to attach another queue"
        )
    elif code == errno.E2BIG:
        msg = "too many queues for one TUN device"
    elif code == errno.ENFILE or code == errno.EMFILE:
        msg = "out of file descriptors"
    else:
        msg = exc.strerror or str(exc)
    what = "create TUN device" if first else "attach a queue to TUN device"
    return TunError(f"cannot {what} {name!r}: {msg} [{errno.errorcode.get(code or 0, code)}]")


def _check_features(fd: int, flags: int) -> None:
    """Fail clearly when the kernel lacks a flag we need, instead of a bare EINVAL later."""
    try:
        buf = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
    except OSError:
        return  # very old kernel without TUNGETFEATURES: let TUNSETIFF decide
    (features,) = struct.unpack("I", buf)
    missing = flags & ~features
    if missing:
        raise TunError(f"the kernel's TUN driver lacks required flags 0x{missing:x}")


def open_tun(name: str, queues: int = 1, *, flags: int = 0, nonblocking: bool = False) -> TunDevice:
    """Create a non-persistent multi-queue TUN device `name` with `queues` queue fds.

    `flags` are extra TUNSETIFF flags on top of IFF_TUN|IFF_NO_PI|IFF_MULTI_QUEUE; only
    IFF_VNET_HDR is accepted (the seam for TUN offloads — this function does not configure them;
    the caller then issues TUNSETVNETHDRSZ/TUNSETOFFLOAD on every fd). fds are blocking unless
    `nonblocking` is true. Raises TunError on any failure and leaves no fd or device behind.
    """
    if not isinstance(queues, int) or queues < 1:
        raise TunError(f"queues must be a positive integer, got {queues!r}")
    if flags & ~_EXTRA_FLAGS_ALLOWED:
        raise TunError(
            f"unsupported extra TUN flags 0x{flags & ~_EXTRA_FLAGS_ALLOWED:x} "
            f"(only IFF_VNET_HDR=0x{IFF_VNET_HDR:x} may be added)"
        )
    try:
        raw_name = check_interface_name(name, template=True)
    except ValueError as e:
        raise TunError(str(e)) from None
    all_flags = _BASE_FLAGS | flags

    fds: list[int] = []
    actual = name
    try:
        for i in range(queues):
            fd = _open_queue_fd(actual)
            fds.append(fd)
            if i == 0:
                _check_features(fd, all_flags)
            # Only the first queue is exclusive: it creates the device. Later queues must join the
            # device we just made, by its real name (the template is resolved now).
            req_flags = all_flags | IFF_TUN_EXCL if i == 0 else all_flags
            try:
                ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack(_IFREQ, raw_name, req_flags))
            except OSError as exc:
                raise _tunsetiff_error(actual, exc, first=(i == 0)) from exc
            if i == 0:
                raw_name = struct.unpack(_IFREQ, ifr)[0].rstrip(b"\0")
                actual = raw_name.decode("utf-8", errors="surrogateescape")
            if nonblocking:
                set_nonblocking(fd, True)
    except BaseException:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        raise
    return TunDevice(name=actual, fds=fds, flags=all_flags)


# --- offloads (IFF_VNET_HDR) ----------------------------------------------------------------
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
VNET_HDR_SIZE = 10



class OffloadMode(enum.Enum):
    """What a TUN device opened with IFF_VNET_HDR may hand us and take from us."""

    TSO_USO = "tso+uso"  # TCP and UDP super-packets, both ways
    TSO = "tso"  # TCP super-packets; UDP as plain packets (kernels before 6.2)
    CSUM = "csum"  # plain packets, checksums possibly left partial

    @property
    def uso(self) -> bool:
        return self is OffloadMode.TSO_USO


# Tried in order; the kernel refuses offloads it does not know (USO before 6.2) with EINVAL.
OFFLOAD_MODES: list[tuple[OffloadMode, int]] = [
    (OffloadMode.TSO_USO, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6),
    (OffloadMode.TSO, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6),
    (OffloadMode.CSUM, TUN_F_CSUM),
]


def enable_offloads(device: TunDevice) -> OffloadMode | None:
    """Turn on the richest offload mode the kernel accepts on a device opened with IFF_VNET_HDR.

    Returns the mode, or None when the kernel accepts none; the
    same mode is set on every queue fd (they share the device's features).
    """
    for fd in device.fds:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
    for mode, offloads in OFFLOAD_MODES:
        try:
            for fd in device.fds:
                fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise TunError(f"TUNSETOFFLOAD on {device.name} failed: {e.strerror}") from e
            continue
        return mode
    return None
