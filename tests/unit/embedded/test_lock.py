"""One control plane per home: the flock on turbok.pid, its holder's pid, release on exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from turbok.embedded import daemon
from turbok.embedded.lock import SERVE, STOP_SANDBOXES, Holder, HomeLock, HomeLocked, holder
from turbok.home import Home


def test_acquire_writes_the_pid_and_a_second_acquire_names_it(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    assert holder(home) is None
    with HomeLock.acquire(home):
        assert holder(home) == Holder(os.getpid(), SERVE)
        assert home.pidfile.stat().st_mode & 0o777 == 0o600
        with pytest.raises(HomeLocked, match=f"pid {os.getpid()}") as e:
            HomeLock.acquire(home)
        assert e.value.pid == os.getpid() and str(home.root) in str(e.value)
    assert holder(home) is None, "released on exit of the with block"
    with HomeLock.acquire(home):  # and taken again
        pass


def test_a_stale_pid_in_the_file_means_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    home.pidfile.write_text("1\n")  # what an older `turbok up` left behind
    assert holder(home) is None
    with HomeLock.acquire(home):
        assert holder(home) == Holder(os.getpid(), SERVE)


def _hold_in_a_child(home: Home, role: str = SERVE) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import pathlib, time
        from turbok.embedded.lock import HomeLock
        from turbok.home import Home
        HomeLock.acquire(Home(pathlib.Path({str(home.root)!r})), role={role!r})
        print("held", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_the_kernel_releases_the_lock_of_a_killed_holder(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    child = _hold_in_a_child(home)
    try:
        assert holder(home) == Holder(child.pid, SERVE)
        with pytest.raises(HomeLocked, match=f"pid {child.pid}"):
            HomeLock.acquire(home)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 5
    while holder(home) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    HomeLock.acquire(home).release()


def test_the_descriptor_is_not_inherited(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    with HomeLock.acquire(home):
        # A process started meanwhile (a sandbox that outlives the control plane) must not hold the home.
        child = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        assert holder(home) is None
    finally:
        child.kill()
        child.wait()


def test_down_stops_only_a_control_plane_never_a_sandbox_stopper(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    child = _hold_in_a_child(home, STOP_SANDBOXES)
    try:
        assert holder(home) == Holder(child.pid, STOP_SANDBOXES)
        assert daemon.status(home)["running"] is False
        with pytest.raises(daemon.DaemonError, match=f"pid {child.pid}.*stopping the sandboxes"):
            daemon.down(home, timeout=1)
        home.sandboxes.mkdir()
        with pytest.raises(daemon.DaemonError, match="already stopping"):
            daemon.stop_sandboxes(home)
        with pytest.raises(HomeLocked, match="is stopping the sandboxes of"):
            HomeLock.acquire(home)  # a `turbok serve` meanwhile
        assert child.poll() is None, "not signalled"
    finally:
        child.kill()
        child.wait()
