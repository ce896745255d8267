"""wg-quick's hooks through fz_trio.shell.hooks, with the real bash, and beside wg-quick's own
`execute_hooks` (taken from the installed wg-quick) for the same commands."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
import trio

from fz_trio.shell.hooks import HookError, expand, run_hooks, run_hooks_async

IFNAME = "wgtest0"

Runner = Callable[..., None]


def run_async(kind: str, commands: Sequence[str], ifname: str, *, check: bool) -> None:
    trio.run(partial(run_hooks_async, kind, commands, ifname, check=check))


@pytest.fixture(params=["blocking", "async"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Both faces of the module: every behaviour below holds for each."""
    return run_hooks if request.param == "blocking" else run_async


def test_percent_i_is_the_interface_everywhere() -> None:
    assert expand("ip link set %i up; echo %i%i", "wg1") == "ip link set wg1 up; echo wg1wg1"
    assert expand("printf '%s\\n' 100%", "wg1") == "printf '%s\\n' 100%"


def test_commands_run_in_order_with_percent_i_expanded(run: Runner,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, "fz_trio.shell.hooks")
    run("PostUp", [f"echo one %i >> {out}", f"echo two >> {out}",
                         f"touch {tmp_path}/%i.up"], IFNAME, check=True)
    assert out.read_text() == f"one {IFNAME}\ntwo\n"
    assert (tmp_path / f"{IFNAME}.up").exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"[#] echo one {IFNAME} >> {out}", f"[#] echo two >> {out}",
        f"[#] touch {tmp_path}/{IFNAME}.up"]


def test_output_goes_to_our_stderr(run: Runner, capfd: pytest.CaptureFixture[str]) -> None:
    run("PreUp", ["echo to-stdout; echo to-stderr >&2"], IFNAME, check=True)
    captured = capfd.readouterr()
    assert "to-stdout\n" in captured.err and "to-stderr\n" in captured.err
    assert captured.out == ""


def test_environment_is_ours_plus_interface_and_no_stdin(run: Runner,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FZ_HOOK_TEST", "from the parent")
    out = tmp_path / "env"
    run("PreUp", [f'echo "$FZ_HOOK_TEST|$INTERFACE|$(cat)|$$" > {out}'], IFNAME,
              check=True)
    inherited, interface, stdin, pid = out.read_text().strip().split("|")
    assert (inherited, interface, stdin) == ("from the parent", IFNAME, "")
    assert pid.isdigit()


def test_a_failing_up_hook_stops_there(run: Runner, tmp_path: Path) -> None:
    with pytest.raises(HookError) as info:
        run("PostUp", [f"touch {tmp_path}/first", "exit 3", f"touch {tmp_path}/third"],
                  IFNAME, check=True)
    assert str(info.value) == "PostUp command failed with exit status 3: exit 3"
    assert (tmp_path / "first").exists() and not (tmp_path / "third").exists()


def test_a_failing_down_hook_is_logged_and_the_rest_run(run: Runner,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run("PreDown", ["exit 7", "kill -TERM $$", f"touch {tmp_path}/%i.down"], IFNAME,
              check=False)
    assert (tmp_path / f"{IFNAME}.down").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["PreDown command failed with exit status 7: exit 7; going on with the rest",
                        "PreDown command was killed by SIGTERM: kill -TERM $$; going on with "
                        "the rest"]


@pytest.mark.parametrize("command", ["false; echo ran > {out}", "false | true; echo ran > {out}"])
def test_wg_quicks_errexit_and_pipefail_apply(run: Runner, tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(HookError, match="exit status 1"):
        run("PreUp", [command.format(out=out)], IFNAME, check=True)
    assert not out.exists()


def test_extglob_is_on_as_under_wg_quick(run: Runner, tmp_path: Path) -> None:
    (tmp_path / "a.conf").touch()
    (tmp_path / "b.txt").touch()
    out = tmp_path / "out"
    run("PreUp", [f"cd {tmp_path} && echo !(*.txt|out) > {out}"], IFNAME, check=True)
    assert out.read_text() == "a.conf\n"


def test_no_bash_is_a_hook_error_for_up_and_a_warning_for_down(run: Runner,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bash to find
    with pytest.raises(HookError, match="PreUp command could not start bash"):
        run("PreUp", ["true"], IFNAME, check=True)
    run("PostDown", ["true"], IFNAME, check=False)
    assert "PostDown command could not start bash" in caplog.text


def test_no_commands_run_nothing(run: Runner, capfd: pytest.CaptureFixture[str]) -> None:
    run("PostUp", [], IFNAME, check=True)
    assert capfd.readouterr() == ("", "")


def test_the_loop_runs_while_an_async_hook_does() -> None:
    ticks = 0

    async def main() -> None:
        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            await run_hooks_async("PostUp", ["sleep 0.3"], IFNAME, check=True)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert ticks >= 5


def test_cancelling_an_async_hook_ends_its_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def main() -> None:
        with trio.move_on_after(0.5):
            await run_hooks_async("PreUp", [f"echo $$ > {pid_file}; exec sleep 30"], IFNAME,
                                  check=True)

    started = time.monotonic()
    trio.run(main)
    assert time.monotonic() - started < 5
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ---------------------------------------------------------------------------------------------
# The same hooks under wg-quick's own execute_hooks


def wg_quick_execute_hooks() -> str:
    path = shutil.which("wg-quick")
    if path is None:
        pytest.skip("wg-quick is not installed (apt-get install wireguard-tools)")
    match = re.search(r"^execute_hooks\(\) \{\n.*?^\}\n", Path(path).read_text(),
                      re.MULTILINE | re.DOTALL)
    assert match is not None, f"no execute_hooks function in {path}"
    return match.group(0)


PARITY_HOOKS = [
    "echo %i $INTERFACE >> {out}",
    "x='a  b'; echo \"$x\" %i%i >> {out}",
    "cd {dir} && echo !(out*) >> {out}",
    "echo piped | tr a-z A-Z >> {out}",
    "false | true; echo never >> {out}",
]


def test_same_effects_and_announcements_as_wg_quick(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    function = wg_quick_execute_hooks()
    caplog.set_level(logging.INFO, "fz_trio.shell.hooks")
    theirs_dir, ours_dir = tmp_path / "wg-quick", tmp_path / "fz-trio"
    for directory in (theirs_dir, ours_dir):
        directory.mkdir()
        (directory / "marker").touch()
    # wg-quick's preamble (set -e -o pipefail, extglob), its INTERFACE, then its function.
    script = (f"set -e -o pipefail\nshopt -s extglob\nINTERFACE={IFNAME}\n{function}"
              'execute_hooks "$@"\n')
    theirs = [hook.format(out=theirs_dir / "out", dir=theirs_dir) for hook in PARITY_HOOKS]
    result = subprocess.run(["bash", "-c", script, "wg-quick", *theirs], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1  # the last hook fails under wg-quick too
    ours = [hook.format(out=ours_dir / "out", dir=ours_dir) for hook in PARITY_HOOKS]
    with pytest.raises(HookError):
        run_hooks("PostUp", ours, IFNAME, check=True)
    assert (ours_dir / "out").read_text() == \
        (theirs_dir / "out").read_text().replace("wg-quick", "fz-trio")
    assert (ours_dir / "out").read_text() == f"{IFNAME} {IFNAME}\na  b {IFNAME}{IFNAME}\n" \
        "marker\nPIPED\n"
    announced = [line for line in result.stderr.splitlines() if line.startswith("[#] ")]
    assert announced == [f"[#] {expand(hook, IFNAME)}" for hook in theirs]
    assert [r.getMessage().replace("fz-trio", "wg-quick") for r in caplog.records
            if r.getMessage().startswith("[#] ")] == announced
    capfd.readouterr()
