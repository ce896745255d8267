"""The host-state journal: written before each change, undone by the next start after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fz_trio.shell.host_state import (
    HostState,
    StateError,
    command_change,
    file_change,
    journal_path,
    undo_stale,
)


def test_a_change_is_on_disk_before_it_is_made_and_gone_after_undo(tmp_path: Path) -> None:
    target = tmp_path / "setting"
    target.write_text("0\n")
    state = HostState("wg7", tmp_path)
    state.claim()
    change = file_change("setting=1", target, "0\n", "1\n")
    state.record(change)
    body = json.loads(journal_path("wg7", tmp_path).read_text())
    assert body["pid"] == os.getpid() and body["changes"][0]["what"] == "setting=1"
    assert oct(journal_path("wg7", tmp_path).stat().st_mode & 0o777) == "0o600"
    target.write_text("1\n")
    assert state.undo_all() == []
    assert target.read_text() == "0\n"
    state.release()
    assert not journal_path("wg7", tmp_path).exists()


def test_a_file_changed_by_someone_else_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "resolv.conf"
    target.write_text("nameserver 100.64.0.53\n")
    state = HostState("wg7", tmp_path)
    state.claim()
    state.record(file_change("dns", target, "old\n", "ours\n"))
    assert state.undo_all() == []
    assert target.read_text() == "nameserver 100.64.0.53\n"


def test_a_dead_owners_changes_are_undone_by_the_next_claim(tmp_path: Path) -> None:
    marker = tmp_path / "undone"
    script = f"""
import os, sys
from pathlib import Path
from fz_trio.shell.host_state import HostState, command_change
state = HostState("wg7", Path({str(tmp_path)!r}))
state.claim()
state.record(command_change("marker", ["touch", {str(marker)!r}]))
os._exit(9)  # like kill -9: no cleanup
"""
    subprocess.run([sys.executable, "-c", script], check=False)
    assert journal_path("wg7", tmp_path).exists() and not marker.exists()
    state = HostState("wg7", tmp_path)
    state.claim()
    assert marker.exists()
    assert json.loads(journal_path("wg7", tmp_path).read_text())["changes"] == []


def test_a_live_owner_keeps_its_journal(tmp_path: Path) -> None:
    first = HostState("wg7", tmp_path)
    first.claim()
    first.record(command_change("never", ["false"]))
    with pytest.raises(StateError, match="in use: fz-trio pid"):
        HostState("wg7", tmp_path).claim()
    assert undo_stale("wg7", tmp_path) is False
    assert undo_stale("wg8", tmp_path) is None


def test_undo_stale_undoes_a_dead_owners_journal(tmp_path: Path) -> None:
    marker = tmp_path / "undone"
    path = journal_path("wg7", tmp_path)
    path.write_text(json.dumps({"pid": 2**22 + 7, "started": 1, "changes": [
        command_change("marker", ["touch", str(marker)]).as_json()]}))
    assert undo_stale("wg7", tmp_path) is True
    assert marker.exists() and not path.exists()


def test_a_failed_undo_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    marker = tmp_path / "undone"
    state = HostState("wg7", tmp_path)
    state.claim()
    state.record(command_change("marker", ["touch", str(marker)]))
    state.record(command_change("broken", ["false"]))
    failures = state.undo_all()
    assert len(failures) == 1 and "broken" in failures[0] and marker.exists()


def test_a_corrupt_journal_is_moved_aside(tmp_path: Path) -> None:
    path = journal_path("wg7", tmp_path)
    path.write_text("{not json")
    HostState("wg7", tmp_path).claim()
    assert path.with_suffix(".corrupt").read_text() == "{not json"
