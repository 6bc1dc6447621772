"""The old runtime's sandboxes, as far as `turbok down --stop-sandboxes` needs them: list, hibernated, stop
(a bubblewrap sandbox's init killed, only if it is still that process), remove (no runsc, no mounts)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from turbok.runtime.ids import ID_LENGTH, sandbox_id
from turbok.runtime.legacy import LegacySandboxes
from turbok.runtime.podio import start_time


def tree(root: Path, name: str) -> Path:
    path = root / sandbox_id(name)
    (path / "run").mkdir(parents=True)
    (path / "disk" / "app").mkdir(parents=True)
    (path / "disk" / "app" / "kept").write_text("x")
    return path


async def test_stop_kills_the_init_it_recorded_and_keeps_the_disk(tmp_path: Path) -> None:
    legacy = LegacySandboxes(tmp_path)
    path = tree(tmp_path, "bwrap")
    # Not our child, as bwrap's init never was a control plane's: its parent reaps it.
    pid = int(subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True,
                             check=True).stdout)
    try:
        (path / "run" / "bwrap.json").write_text(json.dumps({"init": pid, "start": start_time(pid)}))
        (path / "exit.json").write_text("{}")
        await legacy.stop(path.name)
        assert start_time(pid) is None
        assert not (path / "run" / "bwrap.json").exists() and not (path / "exit.json").exists()
        assert (path / "disk" / "app" / "kept").read_text() == "x"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_reused_pid_is_never_killed(tmp_path: Path) -> None:
    legacy = LegacySandboxes(tmp_path)
    path = tree(tmp_path, "stale")
    other = subprocess.Popen(["sleep", "60"])
    try:
        (path / "run" / "bwrap.json").write_text(json.dumps({"init": other.pid, "start": 1}))  # another process now
        await legacy.stop(path.name)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


async def test_hibernated_ones_are_told_apart_and_remove_deletes_everything(tmp_path: Path) -> None:
    legacy = LegacySandboxes(tmp_path)
    sleeping, plain = tree(tmp_path, "sleeping"), tree(tmp_path, "plain")
    (sleeping / "memory").mkdir()
    (sleeping / "memory.json").write_text("{}")
    (tmp_path / ".runsc").mkdir()
    (tmp_path / ("z" * ID_LENGTH)).write_text("a file, not a sandbox")
    assert legacy.list() == sorted([sleeping.name, plain.name])
    assert legacy.hibernated(sleeping.name) and not legacy.hibernated(plain.name)
    (tmp_path / ".runsc" / f"{sleeping.name}_sandbox:{sleeping.name}.state").write_text("{}")
    assert not legacy.hibernated(sleeping.name)  # registered with runsc: it ran after it was saved
    (tmp_path / ".runsc" / f"{sleeping.name}_sandbox:{sleeping.name}.state").unlink()
    await legacy.stop(sleeping.name)  # a stop throws the saved memory away (the caller skips hibernated ones)
    assert not (sleeping / "memory").exists() and not legacy.hibernated(sleeping.name)
    for path in (sleeping, plain):
        await legacy.remove(path.name)
        await legacy.remove(path.name)  # idempotent
    assert legacy.list() == []
