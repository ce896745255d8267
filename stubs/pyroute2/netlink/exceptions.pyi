class NetlinkError(Exception):
    """An error the kernel answered a netlink request with; `code` is the errno."""

    code: int
    extra_code: int
    def __init__(self, code: int, msg: str | None = None) -> None: ...
