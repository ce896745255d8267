"""The IO shell and the program around it: TUN, UDP GSO, netlink, config, command line, REPL."""
