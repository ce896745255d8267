"""Linux interface names, checked once for the config file, the command line and the TUN open.

The rules are the kernel's dev_valid_name(), plus printable characters only (a name ends up in
logs and in `wg show`). Checked before the kernel sees the name because struct ifreq silently
truncates a long one and the kernel's EINVAL does not say what was wrong.
"""

from __future__ import annotations

IFNAMSIZ = 16  # struct ifreq's field, including the terminating NUL
MAX_NAME_BYTES = IFNAMSIZ - 1


def check_interface_name(name: str, *, template: bool = False) -> bytes:
    """`name` encoded for struct ifreq, or ValueError saying why the kernel would refuse it.

    With `template`, one "%d" (the kernel picks the number, as for any TUN device) is allowed.
    """
    raw = name.encode("utf-8", errors="surrogateescape")
    if not raw:
        raise ValueError("invalid interface name '': must not be empty")
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(
            f"invalid interface name {name!r}: {len(raw)} bytes, at most {MAX_NAME_BYTES} allowed"
        )
    if name in (".", ".."):
        raise ValueError(f"invalid interface name {name!r}")
    bad = sorted({c for c in name if c in "/:" or c.isspace() or not c.isprintable()})
    if bad:
        raise ValueError(f"invalid interface name {name!r}: must not contain {''.join(bad)!r}")
    if "%" in name and not (template and name.count("%") == 1 and "%d" in name):
        allowed = "the only template allowed is one '%d'" if template else "'%' is not allowed"
        raise ValueError(f"invalid interface name {name!r}: {allowed}")
    return raw
