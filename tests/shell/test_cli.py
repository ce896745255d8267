"""The command line as a user meets it: keys compatible with wg(8), clear one-line errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fz_trio.core import encode_key, generate_private_key


def fz(*args: str, input: str | None = None,
       prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([*prefix, sys.executable, "-m", "fz_trio", *args], input=input,
                          capture_output=True, text=True, timeout=30, env=env)


def test_genkey_and_pubkey_match_wg() -> None:
    private = fz("genkey").stdout.strip()
    assert len(private) == 44
    public = fz("pubkey", input=private + "\n").stdout.strip()
    if shutil.which("wg"):
        wg = subprocess.run(["wg", "pubkey"], input=private + "\n", capture_output=True,
                            text=True, check=True)
        assert wg.stdout.strip() == public
    wg_key = subprocess.run(["wg", "genkey"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("wg") else private
    assert len(fz("pubkey", input=wg_key).stdout.strip()) == 44


def test_pubkey_rejects_garbage_without_a_traceback() -> None:
    result = fz("pubkey", input="not a key\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "32 bytes" in result.stderr


def test_up_with_a_broken_config_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "wg7.conf"
    conf.write_text("[Interface]\nPrivateKey = " + encode_key(generate_private_key())
                    + "\nListenPort = seventy\n")
    result = fz("up", str(conf))
    assert result.returncode == 1
    assert f"{conf}:3:" in result.stderr and "Traceback" not in result.stderr


def test_up_refuses_save_config_true_with_the_way_out(tmp_path: Path) -> None:
    conf = tmp_path / "wg8.conf"
    conf.write_text("[Interface]\nPrivateKey = " + encode_key(generate_private_key())
                    + "\nSaveConfig = true\n")
    result = fz("up", str(conf))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{conf}:3: SaveConfig = true is not supported" in result.stderr
    assert "wg showconf" in result.stderr


# ---------------------------------------------------------------------------------------------
# Capabilities, not root: processes with a cut-down bounding set (setpriv, util-linux)

SETPRIV = shutil.which("setpriv")
needs_setpriv = pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")


def without_net_admin() -> tuple[str, ...]:
    assert SETPRIV is not None
    return (SETPRIV, "--bounding-set=-net_admin")


def only(*caps: str) -> tuple[str, ...]:
    assert SETPRIV is not None
    return (SETPRIV, "--bounding-set=-all," + ",".join(f"+{cap}" for cap in caps))


def write_config(path: Path, *lines: str, mode: int = 0o600) -> Path:
    path.write_text("\n".join(["[Interface]", "PrivateKey = "
                               + encode_key(generate_private_key()), *lines]) + "\n")
    path.chmod(mode)
    return path


@needs_setpriv
def test_up_without_cap_net_admin_says_what_it_needs(tmp_path: Path) -> None:
    conf = write_config(tmp_path / "wgcap0.conf")
    result = fz("up", str(conf), prefix=without_net_admin())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "fz-trio: fz-trio up needs CAP_NET_ADMIN to create its TUN device and set its "
        "addresses and routes (run as root or give it the capability, e.g. "
        "AmbientCapabilities=CAP_NET_ADMIN in a systemd unit)")


@needs_setpriv
def test_launch_and_repl_without_cap_net_admin(tmp_path: Path) -> None:
    launch = fz("-f", "wgcap1", prefix=without_net_admin())
    assert launch.returncode == 1
    assert "fz-trio: fz-trio IFNAME needs CAP_NET_ADMIN" in launch.stderr
    conf = write_config(tmp_path / "wgcap1.conf")
    repl = fz("repl", str(conf), prefix=without_net_admin())
    assert repl.returncode == 1 and "fz-trio: fz-trio repl needs CAP_NET_ADMIN" in repl.stderr


def privileged_port() -> int:
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 1:
        pytest.skip(f"ip_unprivileged_port_start is {start}: no port needs a capability")
    return start - 1


@needs_setpriv
def test_a_privileged_listen_port_needs_cap_net_bind_service(tmp_path: Path) -> None:
    port = privileged_port()
    conf = write_config(tmp_path / "wgcap2.conf", f"ListenPort = {port}")
    result = fz("up", str(conf), prefix=only("net_admin"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"fz-trio: fz-trio up needs CAP_NET_BIND_SERVICE to listen on the privileged port "
        f"{port} (run as root or give it the capability, e.g. "
        f"AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit)")


CHECK = ("import sys\n"
         "from fz_trio import cli\n"
         "try:\n"
         "    cli._require_capabilities('fz-trio up', int(sys.argv[1]))\n"
         "except cli.CliError as e:\n"
         "    print(e)\n"
         "else:\n"
         "    print('passed')\n")


def check_as(prefix: tuple[str, ...], port: int) -> str:
    root = str(Path(__file__).resolve().parents[2])
    return subprocess.run([*prefix, sys.executable, "-c", CHECK, str(port)], capture_output=True,
                          text=True, timeout=30, check=True,
                          env=dict(os.environ, PYTHONPATH=root)).stdout.strip()


@needs_setpriv
def test_the_capability_check_passes_with_the_capabilities_alone() -> None:
    # Nothing is brought up: the check itself runs in a process with only these capabilities.
    port = privileged_port()
    assert check_as(only("net_admin"), 51820) == "passed"
    assert check_as(only("net_admin"), 0) == "passed"
    assert "CAP_NET_BIND_SERVICE" in check_as(only("net_admin"), port)
    assert check_as(only("net_admin", "net_bind_service"), port) == "passed"
    missing_both = check_as(only("net_raw"), port)
    assert "needs CAP_NET_ADMIN to create" in missing_both
    assert "and CAP_NET_BIND_SERVICE to listen" in missing_both
    assert "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE" in missing_both


def test_missing_capabilities_reads_the_effective_set() -> None:
    from fz_trio.shell.capabilities import (
        CAP_NET_ADMIN,
        CAP_NET_BIND_SERVICE,
        effective_capabilities,
        missing_capabilities,
    )

    have = effective_capabilities()
    expected = [name for cap, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                                       (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"))
                if not have >> cap & 1]
    assert missing_capabilities([CAP_NET_ADMIN, CAP_NET_BIND_SERVICE]) == expected
    assert missing_capabilities([]) == []


def test_effective_capabilities_parses_cap_eff(tmp_path: Path) -> None:
    from fz_trio.shell.capabilities import effective_capabilities

    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001400\n")
    assert effective_capabilities(str(status)) == (1 << 12) | (1 << 10)
    status.write_text("Name:\tx\n")
    with pytest.raises(OSError, match="CapEff"):
        effective_capabilities(str(status))


# ---------------------------------------------------------------------------------------------
# Warnings as wg and wg-quick print them


def genkey_into(path: Path, mode: int) -> subprocess.CompletedProcess[str]:
    path.touch()
    path.chmod(mode)
    root = str(Path(__file__).resolve().parents[2])
    with path.open("w") as out:
        return subprocess.run([sys.executable, "-m", "fz_trio", "genkey"], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=30, check=True,
                              env=dict(os.environ, PYTHONPATH=root))


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o601])
def test_genkey_into_a_world_accessible_file_warns_like_wg(tmp_path: Path, mode: int) -> None:
    result = genkey_into(tmp_path / "private.key", mode)
    assert result.stderr == ("Warning: writing to world accessible file.\n"
                             "Consider setting the umask to 077 and trying again.\n")
    assert len((tmp_path / "private.key").read_text().strip()) == 44
    if shutil.which("wg"):  # the same words as wg's own, byte for byte
        with (tmp_path / "wg.key").open("w") as out:
            (tmp_path / "wg.key").chmod(mode)
            wg = subprocess.run(["wg", "genkey"], stdout=out, stderr=subprocess.PIPE, text=True,
                                check=True)
        assert wg.stderr == result.stderr


def test_genkey_into_a_private_file_or_a_pipe_is_quiet(tmp_path: Path) -> None:
    assert genkey_into(tmp_path / "private.key", 0o640).stderr == ""
    piped = fz("genkey")
    assert piped.stderr == "" and len(piped.stdout.strip()) == 44


@pytest.mark.parametrize(("file_mode", "dir_mode", "warns"), [
    (0o644, 0o755, True),
    (0o640, 0o755, False),
    (0o604, 0o701, False),  # wg-quick's rule: file & directory & 0007
    (0o666, 0o777, True),
    (0o644, 0o700, False),
])
def test_a_world_accessible_config_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, file_mode: int, dir_mode: int,
        warns: bool) -> None:
    from fz_trio import cli

    directory = tmp_path / "etc"
    directory.mkdir()
    conf = write_config(directory / "wgw0.conf", mode=file_mode)
    directory.chmod(dir_mode)
    try:
        cli.warn_if_world_accessible(str(conf))
    finally:
        directory.chmod(0o700)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == ([f"Warning: '{conf}' is world accessible (others may read its "
                         f"private key; chmod o-rwx {conf})"] if warns else [])


def test_the_warning_follows_symbolic_links(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from fz_trio import cli

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    target = write_config(private / "real.conf", mode=0o644)
    link = tmp_path / "wgw1.conf"
    link.symlink_to(target)
    tmp_path.chmod(0o755)
    cli.warn_if_world_accessible(str(link))
    assert not caplog.records  # the file is not reachable through its 0700 directory
    private.chmod(0o755)
    cli.warn_if_world_accessible(str(link))
    assert [r.getMessage() for r in caplog.records][0].startswith(f"Warning: '{target}' is")


@needs_setpriv
def test_up_warns_then_goes_on(tmp_path: Path) -> None:
    # The config still loads (the next check, capabilities, is where this one stops).
    tmp_path.chmod(0o755)
    conf = write_config(tmp_path / "wgw2.conf", mode=0o644)
    result = fz("up", str(conf), prefix=without_net_admin())
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].endswith(f"WARNING fz_trio.cli: Warning: '{conf}' is world accessible "
                             f"(others may read its private key; chmod o-rwx {conf})")
    assert "needs CAP_NET_ADMIN" in lines[1]


# ---------------------------------------------------------------------------------------------
# Logging options


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("", "fz_trio", "pyroute2")
    levels = {name: logging.getLogger(name or None).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


def levels() -> tuple[int, int, int]:
    return (logging.getLogger().level, logging.getLogger("fz_trio").level,
            logging.getLogger("pyroute2").level)


@pytest.mark.parametrize(("argv", "expected"), [
    (["genkey"], (logging.INFO, logging.INFO, logging.WARNING)),
    (["-v", "genkey"], (logging.INFO, logging.DEBUG, logging.WARNING)),
    (["genkey", "-v"], (logging.INFO, logging.DEBUG, logging.WARNING)),
    (["genkey", "--verbose"], (logging.INFO, logging.DEBUG, logging.WARNING)),
    (["-v", "genkey", "-v"], (logging.DEBUG, logging.DEBUG, logging.DEBUG)),
    (["genkey", "-vv"], (logging.DEBUG, logging.DEBUG, logging.DEBUG)),
    (["-vvv", "genkey"], (logging.DEBUG, logging.DEBUG, logging.DEBUG)),
])
def test_verbosity_before_or_after_the_command(
        restore_logging: None, capsys: pytest.CaptureFixture[str], argv: list[str],
        expected: tuple[int, int, int]) -> None:
    from fz_trio import cli

    assert cli.main(argv) == 0
    assert levels() == expected


def test_subcommands_and_launch_mode_take_the_logging_options() -> None:
    from fz_trio import cli

    parser = cli.build_parser()
    for command in ("up x.conf", "show", "down wg0", "genkey", "pubkey", "demo", "repl --sim"):
        args = parser.parse_args([*command.split(), "-vv", "--log-format", "json"])
        assert (args.sub_verbose, args.sub_log_format) == (2, "json"), command
    args = cli.build_launch_parser().parse_args(["wg0", "-v", "--log-format", "json", "-v"])
    assert (args.verbose, args.log_format, args.ifname) == (2, "json", "wg0")
    for argv in (["--log-format", "json", "wg0"], ["--log-format=json", "-v", "wg0"],
                 ["--tun-io", "inline", "-f", "wg0"], ["wg0", "-v"]):
        assert cli._is_launch(argv), argv
    for argv in (["--log-format", "json", "up", "x.conf"], ["-v", "show"], ["up", "-v", "x"]):
        assert not cli._is_launch(argv), argv
    assert fz("genkey", "--log-format", "yaml").returncode == 2


@pytest.mark.parametrize(("flag", "shown"), [
    ("", ["fz_trio info", "fz_trio warning", "pyroute2 warning"]),
    ("-v", ["fz_trio debug", "fz_trio info", "fz_trio warning", "pyroute2 warning"]),
    ("-vv", ["fz_trio debug", "fz_trio info", "fz_trio warning", "pyroute2 debug",
             "pyroute2 info", "pyroute2 warning"]),
])
def test_pyroute2_stays_quiet_below_vv_even_when_imported_later(flag: str,
                                                                shown: list[str]) -> None:
    # pyroute2 sets its logger's level when it is imported: after the command line set ours.
    code = ("import logging, sys\n"
            "from fz_trio import cli\n"
            "cli._setup_logging(cli.build_parser().parse_args(sys.argv[1:]))\n"
            "import pyroute2\n"
            "for name in ('fz_trio.x', 'pyroute2.netlink'):\n"
            "    for level in ('debug', 'info', 'warning'):\n"
            "        getattr(logging.getLogger(name), level)(name.split('.')[0] + ' ' + level)\n")
    root = str(Path(__file__).resolve().parents[2])
    result = subprocess.run([sys.executable, "-c", code, *filter(None, [flag]), "genkey"],
                            capture_output=True, text=True, timeout=30, check=True,
                            env=dict(os.environ, PYTHONPATH=root))
    assert [line.split(": ", 1)[1] for line in result.stderr.splitlines()] == shown


def test_json_log_lines(restore_logging: None) -> None:
    import io
    import json

    from fz_trio.logs import setup_logging

    out = io.StringIO()
    setup_logging(1, "json", stream=out)
    log = logging.getLogger("fz_trio.test")
    log.debug("line %d\nwith a newline", 1)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")
    logging.getLogger("pyroute2.netlink").debug("a netlink dump nobody asked for")
    setup_logging(0, "text", stream=out)  # replaces its own handler: no line twice
    log.info("as text")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert set(first) == {"time", "level", "logger", "message"}
    assert (first["level"], first["logger"], first["message"]) == \
        ("DEBUG", "fz_trio.test", "line 1\nwith a newline")
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert (second["level"], second["message"]) == ("ERROR", "it failed")
    assert second["exception"].startswith("Traceback") and "RuntimeError: boom" in \
        second["exception"]
    assert lines[2].endswith("INFO fz_trio.test: as text")


def test_json_logging_end_to_end(tmp_path: Path) -> None:
    import json

    tmp_path.chmod(0o755)
    conf = write_config(tmp_path / "wgj0.conf", "SaveConfig = yes", mode=0o644)
    result = fz("up", "--log-format", "json", str(conf))
    assert result.returncode == 1  # the config does not load: no warning, one error line
    assert "invalid SaveConfig" in result.stderr
    conf = write_config(tmp_path / "wgj0.conf", mode=0o644)
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    result = fz("--log-format", "json", "up", str(conf), prefix=without_net_admin())
    warning = json.loads(result.stderr.splitlines()[0])
    assert (warning["level"], warning["logger"]) == ("WARNING", "fz_trio.cli")
    assert warning["message"].startswith(f"Warning: '{conf}' is world accessible")
