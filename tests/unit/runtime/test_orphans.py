"""Sandbox orphans adopted and reaped: run in a child interpreter, so the test process stays no one's subreaper.

A process named ``exe`` (as runsc's re-executed sandbox and gofers are) is started
through a shell that exits at once, as ``runsc run --detach`` leaves its sandbox:
it must become the adopter's child, be killed and reaped by ``kill_and_reap``, and
one that ends on its own must be reaped by the collector. Processes that are not
the adopter's own ``exe`` children are never touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import os, subprocess, sys, time
    from turbok.runtime import orphans

    exe = sys.argv[1]
    orphans.ABANDONED_SECONDS = 1.0
    assert orphans.adopt() and orphans.adopt() and orphans.adopted()

    def orphan(seconds, program=exe):
        out = subprocess.run(["/bin/sh", "-c", f"{program} {seconds} >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout
        return int(out)

    def gone_within(pid, seconds):
        deadline = time.monotonic() + seconds
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        return not os.path.exists(f"/proc/{pid}")

    def parent(pid):
        return int(open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()[1])

    long = orphan(1000)
    assert parent(long) == os.getpid(), "the orphan is ours"
    assert orphans.kill_and_reap([long], owner=b"another pod") == 0, "a reused pid: not the owner's"
    assert os.path.exists(f"/proc/{long}")
    mine = subprocess.Popen(["sleep", "1000"])  # our own child, not named exe: never touched
    assert orphans.kill_and_reap([long, mine.pid, 1, 999999999], owner=b"1000") == 1
    assert not os.path.exists(f"/proc/{long}"), "killed and reaped: no zombie left"
    assert mine.poll() is None
    mine.kill()
    deadline = time.monotonic() + 2
    while not orphans._any_zombie() and time.monotonic() < deadline:  # the collector looks only then
        time.sleep(0.01)
    assert orphans._any_zombie()
    assert mine.wait() == -9  # its status was left to its owner
    assert not orphans._any_zombie()

    assert gone_within(orphan(0.05), 2), "an ended sandbox is reaped by the collector"
    other = orphan(0.05, "sleep")  # another program's orphan (a holder whose starter exited)
    time.sleep(0.6)
    assert os.path.exists(f"/proc/{other}"), "not at once: it might be someone's child"
    assert gone_within(other, 3), "but once abandoned"
    print("ok")
''')


def test_orphans_are_adopted_killed_and_reaped(tmp_path: Path) -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc")
    exe = tmp_path / "exe"
    exe.symlink_to(subprocess.run(["sh", "-c", "command -v sleep"], capture_output=True, text=True,
                                  check=True).stdout.strip())
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(exe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
