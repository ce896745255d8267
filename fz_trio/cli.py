"""The `fz-trio` command line: up, show, down, genkey, pubkey, demo, repl — and `fz-trio IFNAME`,
the userspace launch contract (`wireguard-go IFNAME`'s): create the interface, serve UAPI, go to
the background once both are ready (unless -f/--foreground or WG_PROCESS_FOREGROUND=1)."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from fz_trio import __version__
from fz_trio.core import decode_key, encode_key, generate_private_key, public_key_of
from fz_trio.shell.tun_io import DEFAULT_TUN_IO, DEFAULT_TUN_QUEUES, TunIo

if TYPE_CHECKING:
    from fz_trio.config import Config


# The subcommands build_parser() knows; any other first word is an interface name.
COMMANDS = ("up", "show", "down", "genkey", "pubkey", "install-service", "demo", "repl")


class CliError(Exception):
    """An error to print as one line, without a traceback."""


def _cmd_genkey(args: argparse.Namespace) -> int:
    _warn_if_stdout_world_accessible()
    print(encode_key(generate_private_key()))
    return 0


def _warn_if_stdout_world_accessible() -> None:
    # wg genkey's check and words: a private key about to land in a file others can read.
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):  # no real stdout (closed, or a test's StringIO)
        return
    if stat.S_ISREG(mode) and mode & stat.S_IRWXO:
        sys.stderr.write("Warning: writing to world accessible file.\n"
                         "Consider setting the umask to 077 and trying again.\n")
        sys.stderr.flush()


def _cmd_pubkey(args: argparse.Namespace) -> int:
    try:
        key = decode_key(sys.stdin.read().strip())
    except ValueError as e:
        raise CliError(f"pubkey: a private key is expected on standard input: {e}") from None
    print(encode_key(public_key_of(key)))
    return 0


def _require_capabilities(what: str, listen_port: int | None = None) -> None:
    """CAP_NET_ADMIN (the TUN device, addresses, routes, rules), and CAP_NET_BIND_SERVICE when
    the listen port is a privileged one: the capabilities, not root, since a service can be
    given exactly these."""
    from fz_trio.shell import capabilities as caps

    needed = [caps.CAP_NET_ADMIN]
    privileged_port = caps.needs_bind_service(listen_port)
    if privileged_port:
        needed.append(caps.CAP_NET_BIND_SERVICE)
    try:
        missing = caps.missing_capabilities(needed)
    except OSError:  # no /proc: fall back to the old rule
        missing = [] if os.geteuid() == 0 else [caps.capability_name(cap) for cap in needed]
    if not missing:
        return
    reasons = []
    if caps.capability_name(caps.CAP_NET_ADMIN) in missing:
        reasons.append("CAP_NET_ADMIN to create its TUN device and set its addresses and routes")
    if caps.capability_name(caps.CAP_NET_BIND_SERVICE) in missing:
        reasons.append(f"CAP_NET_BIND_SERVICE to listen on the privileged port {listen_port}")
    raise CliError(f"{what} needs {' and '.join(reasons)} (run as root or give it "
                   f"{'the capability' if len(missing) == 1 else 'these capabilities'}, "
                   f"e.g. AmbientCapabilities={' '.join(missing)} in a systemd unit)")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CliError(f"{what} must run as root: it creates network namespaces and runs "
                       f"wireguard-go, iperf3 and ping inside them")


def _cmd_up(args: argparse.Namespace) -> int:
    config = _load(args)
    _require_capabilities("fz-trio up", config.interface.listen_port)
    from fz_trio.app import Options, StartError, run_until_signalled
    from fz_trio.shell.dns import DnsMode
    from fz_trio.shell.sd_notify import Notifier

    notifier = Notifier.from_environment()  # systemd's Type=notify, when it runs us
    options = Options(tun_queues=args.tun_queues, gso=not args.no_gso,
                      tun_io=TunIo(args.tun_io), offload=not args.no_offload,
                      dns_mode=None if args.dns_mode == "auto" else DnsMode(args.dns_mode),
                      on_wait=notifier.status)
    try:
        trio.run(partial(run_until_signalled, config, options, reload=lambda: _load(args),
                         notifier=notifier))
    except StartError as e:
        raise CliError(str(e)) from e
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
    """`fz-trio [-f] IFNAME`: what wg-quick runs as WG_QUICK_USERSPACE_IMPLEMENTATION."""
    from fz_trio.ifname import check_interface_name

    try:
        check_interface_name(args.ifname)
    except ValueError as e:
        raise CliError(str(e)) from None
    _require_capabilities("fz-trio IFNAME")  # its listen port comes later, over UAPI
    from fz_trio.app import Options, StartError, empty_config, run_until_signalled
    from fz_trio.shell.daemon import ReadyNotifier, launch, wants_foreground

    config = empty_config(args.ifname)
    # wg-quick, which runs us this way, does the MTU, routes, DNS and hooks itself.
    options = Options(tun_queues=args.tun_queues, gso=not args.no_gso,
                      tun_io=TunIo(args.tun_io), offload=not args.no_offload,
                      host_integration=False)

    def daemon_main(notifier: ReadyNotifier) -> int:
        try:
            trio.run(run_until_signalled, config, options, notifier.ready)
        except StartError as e:
            notifier.failed(str(e))
            return 1
        return 0

    foreground = wants_foreground(args.foreground)
    # Detached, the logs go to --log-file, else where the command's stderr went when LOG_LEVEL
    # is set, else nowhere: wireguard-go's rule, and a caller reading our output through a pipe
    # (`$(fz-trio wg0)`) is not kept waiting for as long as the daemon lives.
    log_path = args.log_file or (None if os.environ.get("LOG_LEVEL") else os.devnull)
    return launch(daemon_main, foreground=foreground, log_path=None if foreground else log_path)


def _require_root_for_uapi(what: str) -> None:
    if os.geteuid() != 0:
        raise CliError(f"{what} must run as root: the UAPI sockets in /var/run/wireguard "
                       f"are root's")


def _cmd_show(args: argparse.Namespace) -> int:
    """`fz-trio show [IFACE | all | interfaces] [--json]`, as `wg show` (all when no IFACE)."""
    import json
    import time

    from fz_trio import show
    from fz_trio.shell import uapi_client

    _require_root_for_uapi("fz-trio show")
    if args.interface == "interfaces":
        names = uapi_client.list_interfaces()
        if args.json:
            print(json.dumps(names))
        elif names:
            print(" ".join(names))
        return 0
    single = args.interface not in (None, "all")
    names = [args.interface] if single else uapi_client.list_interfaces()
    sections = []
    failed = False
    for name in names:
        try:
            state = uapi_client.get(name)
        except uapi_client.UapiClientError as e:
            if single:
                raise CliError(f"show: {e}") from None
            if e.kind != uapi_client.NOT_RUNNING:  # gone since it was listed: nothing to show
                print(f"fz-trio: show: {e}", file=sys.stderr)
                failed = True
            continue
        now = time.time()
        try:
            status = uapi_client.status(name)
        except uapi_client.UapiClientError as e:  # wg's part is still worth showing
            print(f"fz-trio: show: no fz-trio status: {e}", file=sys.stderr)
            status = None
            failed = True
        if args.json:
            print(show.show_json(name, state, status), flush=True)
        else:
            sections.append(show.show_text(name, state, now=now, status=status))
    if sections:
        sys.stdout.write(show.show_interfaces(sections))
    return 1 if failed else 0


def _cmd_down(args: argparse.Namespace) -> int:
    """`fz-trio down IFACE`: ask the fz-trio serving IFACE to take it down and exit."""
    from fz_trio.shell import uapi_client

    _require_root_for_uapi("fz-trio down")
    name = args.interface
    try:
        status = uapi_client.status(name)
    except uapi_client.UapiClientError as e:
        if e.kind != uapi_client.NOT_RUNNING:
            raise CliError(f"down: {e}") from None
        return _undo_stale(name, e)
    try:
        if status is None:
            raise CliError(f"down: {name} is served by another WireGuard implementation, and "
                           f"`fz-trio down` only stops fz-trio; to remove the interface: "
                           f"ip link del {name} (in its network namespace)")
        uapi_client.stop(name, wait=uapi_client.STOP_WAIT)
    except uapi_client.UapiClientError as e:
        raise CliError(f"down: {e}") from None
    return 0


def _undo_stale(name: str, not_running: Exception) -> int:
    """`fz-trio down` for an interface whose fz-trio died (kill -9, a crash): undo the host
    changes its journal lists. Nothing running and no journal is the error it always was."""
    from fz_trio.shell.host_state import StateError, undo_stale

    try:
        undone = undo_stale(name)
    except StateError as e:
        raise CliError(f"down: {e}") from None
    if undone is None:
        raise CliError(f"down: {not_running}")
    if undone is False:
        raise CliError(f"down: {name}'s fz-trio is alive but does not answer on its UAPI "
                       f"socket; stop it with SIGTERM")
    print(f"fz-trio: {name} was not running; undid the host changes it left", file=sys.stderr)
    return 0


def _load(args: argparse.Namespace) -> Config:
    from fz_trio.config import ConfigError, load_config

    try:
        config = load_config(args.config, interface_name=args.interface)
    except ConfigError as e:
        raise CliError(str(e)) from e
    except OSError as e:
        raise CliError(f"cannot read {args.config}: {e.strerror}") from e
    warn_if_world_accessible(args.config)
    return config


def warn_if_world_accessible(path: str) -> None:
    """wg-quick's warning, on wg-quick's rule: the file and the directory it is in both grant
    others some access (`stat` of both, ANDed with 0007), after following symbolic links. The
    file holds a private key."""
    real = os.path.realpath(path)
    try:
        file_mode = os.stat(real).st_mode
        dir_mode = os.stat(os.path.dirname(real)).st_mode
    except OSError:
        return  # it was just read; a directory we cannot stat tells us nothing either way
    if file_mode & dir_mode & stat.S_IRWXO:
        logging.getLogger("fz_trio.cli").warning(
            "Warning: '%s' is world accessible (others may read its private key; "
            "chmod o-rwx %s)", real, real)


def _cmd_install_service(args: argparse.Namespace) -> int:
    """`fz-trio install-service [--print]`: the fz-trio@.service template, for systemd."""
    from fz_trio.service_unit import install_unit, unit_text

    if args.print:
        sys.stdout.write(unit_text())
        return 0
    try:
        path = install_unit()
    except OSError as e:
        raise CliError(f"install-service: cannot write the unit: {e.strerror}") from None
    print(f"wrote {path}; now: systemctl enable --now fz-trio@wg0 "
          f"(for /etc/wireguard/wg0.conf)", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fz_trio.lab.demo import run_demo

    _require_root("fz-trio demo")
    return run_demo(seconds=args.seconds, peer=args.peer)


def _cmd_repl(args: argparse.Namespace) -> int:
    if args.sim:
        from fz_trio.lab.sim_repl import run_sim_repl

        if args.config:
            raise CliError("repl: give a config file or --sim, not both")
        return run_sim_repl(seed=args.seed)
    if not args.config:
        raise CliError("repl: a config file is needed (or --sim for a simulated network)")
    config = _load(args)
    _require_capabilities("fz-trio repl", config.interface.listen_port)
    from fz_trio.app import StartError
    from fz_trio.repl import run_live_repl

    try:
        return trio.run(run_live_repl, config)
    except StartError as e:
        raise CliError(str(e)) from e


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tun-queues", type=_positive_int, default=DEFAULT_TUN_QUEUES,
                        metavar="N", help=f"TUN queues, each with a reader and a writer "
                                          f"(default {DEFAULT_TUN_QUEUES})")
    parser.add_argument("--tun-io", choices=[mode.value for mode in TunIo],
                        default=DEFAULT_TUN_IO.value,
                        help=f"TUN queue I/O on worker threads or on the event loop thread "
                             f"(default {DEFAULT_TUN_IO.value})")
    parser.add_argument("--no-offload", action="store_true",
                        help="plain TUN I/O: no vnet header, no TSO/USO super-packets")
    parser.add_argument("--no-gso", action="store_true",
                        help="send each UDP datagram with its own syscall (no UDP GSO)")


def _add_logging_options(parser: argparse.ArgumentParser, dest_prefix: str = "") -> None:
    from fz_trio.logs import FORMATS

    parser.add_argument("-v", "--verbose", action="count", dest=f"{dest_prefix}verbose",
                        default=0, help="more logging: -v debug lines of fz-trio, -vv of "
                                        "everything (pyroute2's netlink messages too)")
    parser.add_argument("--log-format", choices=FORMATS, dest=f"{dest_prefix}log_format",
                        help="text lines (the default) or one JSON object per line")


def build_launch_parser() -> argparse.ArgumentParser:
    """`fz-trio [-f] IFNAME`, the command line wg-quick and wg-quick@.service use."""
    parser = argparse.ArgumentParser(
        prog="fz-trio", description="Create the WireGuard interface IFNAME, configured over "
        "its UAPI socket (wg, wg-quick); runs in the background once ready.")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="stay in the foreground (also: WG_PROCESS_FOREGROUND=1)")
    _add_logging_options(parser)
    parser.add_argument("--log-file", help="where the background process logs")
    _add_runtime_options(parser)
    parser.add_argument("ifname", help="the interface to create, e.g. wg0")
    parser.set_defaults(func=_cmd_launch)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fz-trio", description="A WireGuard-compatible VPN client on Trio."
    )
    parser.add_argument("--version", action="version", version=_version())
    _add_logging_options(parser)
    # Each subcommand takes the logging options too (`fz-trio up -v wg0.conf`), under other
    # names: a subparser's defaults would otherwise overwrite what came before the command.
    logging_options = argparse.ArgumentParser(add_help=False)
    _add_logging_options(logging_options, dest_prefix="sub_")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[logging_options], **kwargs)

    up = command(
        "up", help="bring a tunnel up from a wg-quick config; runs until SIGINT/SIGTERM")
    up.add_argument("config", help="path to a wg-quick style config, e.g. wg0.conf")
    up.add_argument("--interface", help="interface name (default: the config file's stem)")
    _add_runtime_options(up)
    up.add_argument("--dns-mode", default="auto",
                    choices=["auto", "systemd-resolved", "resolvconf", "file", "off"],
                    help="how DNS = is applied (default auto: systemd-resolved when it runs, "
                         "else resolvconf when installed, else /etc/resolv.conf)")
    up.set_defaults(func=_cmd_up)

    show = command(
        "show", help="show running interfaces as `wg show` does, with fz-trio's own state")
    show.add_argument("interface", nargs="?",
                      help="the interface (default, or `all`: every one; `interfaces`: their "
                           "names)")
    show.add_argument("--json", action="store_true",
                      help="one JSON object per interface and line (never a private key)")
    show.set_defaults(func=_cmd_show)

    down = command(
        "down", help="take a running fz-trio interface down (the process exits)")
    down.add_argument("interface", help="the interface, e.g. wg0")
    down.set_defaults(func=_cmd_down)

    service = command("install-service",
                      help="install the systemd unit fz-trio@.service (fz-trio up "
                           "/etc/wireguard/IFACE.conf as a notify service)")
    service.add_argument("--print", action="store_true", help="print the unit instead")
    service.set_defaults(func=_cmd_install_service)

    genkey = command("genkey", help="print a new private key (like `wg genkey`)")
    genkey.set_defaults(func=_cmd_genkey)

    pubkey = command("pubkey", help="read a private key on stdin, print its public key")
    pubkey.set_defaults(func=_cmd_pubkey)

    demo = command("demo", help="build a test network in namespaces and show a live tunnel")
    demo.add_argument("--seconds", type=int, default=3, help="throughput test length")
    demo.add_argument("--peer", choices=["auto", "wireguard-go", "fz-trio"], default="auto",
                      help="what runs on the far end (default: wireguard-go when installed)")
    demo.set_defaults(func=_cmd_demo)

    repl = command("repl", help="an async Python REPL with the tunnel up (or, with --sim, "
                                       "peers on a simulated network)")
    repl.add_argument("config", nargs="?", help="wg-quick style config (omit with --sim)")
    repl.add_argument("--interface", help="interface name (default: the config file's stem)")
    repl.add_argument("--sim", action="store_true",
                      help="no root, no devices: alice, bob and carol on a simulated network")
    repl.add_argument("--seed", type=int, default=1, help="the simulation's seed (--sim)")
    repl.set_defaults(func=_cmd_repl)
    return parser


def _version() -> str:
    from fz_trio.datapath import kernels

    return f"fz-trio {__version__} ({kernels.IMPLEMENTATION} data path kernels: {kernels.REASON})"


def _options_with_values(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions if action.nargs != 0
            for option in action.option_strings}


def _is_launch(argv: list[str]) -> bool:
    """`fz-trio [options] IFNAME`: the first word that is neither an option nor an option's
    value names no command."""
    takes_value = _options_with_values(build_launch_parser())
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help", "--version"):
            return False
        if word in takes_value:
            next(words, None)
        elif not word.startswith("-"):
            return word not in COMMANDS
    return False


def _setup_logging(args: argparse.Namespace) -> None:
    from fz_trio.logs import setup_logging

    verbosity = args.verbose + getattr(args, "sub_verbose", 0)
    fmt = getattr(args, "sub_log_format", None) or args.log_format or "text"
    setup_logging(verbosity, fmt)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_launch_parser() if _is_launch(argv) else build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"fz-trio: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
