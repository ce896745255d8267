"""The IO shell: TUN devices, UDP sockets, netlink and the Trio tasks that drive the core."""
