"""Stopping a home's sandboxes first lets the boots a stopped control plane left running finish."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from turbok.embedded import daemon


def _command(root: Path, *args: str, seconds: float = 1.5) -> subprocess.Popen[bytes]:
    """A process whose command line reads like ``runsc --root=ROOT ARGS``: it sleeps ``seconds``."""
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})", f"--root={root}", *args])


def test_a_boot_under_the_home_is_waited_for_and_other_commands_are_not(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    boot = _command(home / "pods" / ".runsc", "--network=sandbox", "run", "--detach", "cid")
    waits = _command(home / "pods" / ".runsc", "wait", "cid", seconds=30)  # ends with its sandbox: never waited for
    elsewhere = _command(other / "pods" / ".runsc", "run", "cid", seconds=30)  # another home's
    try:
        deadline = time.monotonic() + 5
        while boot.pid not in daemon.boots_in_flight(home) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the interpreter's command line is readable
        assert daemon.boots_in_flight(home) == [boot.pid]
        t0 = time.monotonic()
        daemon.wait_for_boots(home, timeout=10)
        assert boot.poll() is not None, "returned while the boot still ran"
        assert time.monotonic() - t0 < 5
        assert daemon.boots_in_flight(home) == []
    finally:
        for p in (boot, waits, elsewhere):
            p.kill()
            p.wait()


def test_a_boot_that_does_not_end_is_given_up_on(tmp_path: Path) -> None:
    stuck = _command(tmp_path / "pods" / ".runsc", "restore", "cid", seconds=30)
    try:
        deadline = time.monotonic() + 5
        while not daemon.boots_in_flight(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        daemon.wait_for_boots(tmp_path, timeout=0.5)
        assert 0.5 <= time.monotonic() - t0 < 3 and stuck.poll() is None
    finally:
        stuck.kill()
        stuck.wait()
