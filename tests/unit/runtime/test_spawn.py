"""turbok.runtime.spawn: host commands forked off the event loop and awaited through a pidfd."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from turbok.runtime import spawn


async def test_run_returns_the_status_and_both_streams() -> None:
    code, out = await spawn.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert code == 3
    assert sorted(out.split()) == [b"err", b"out"]


async def test_a_command_past_its_timeout_is_killed_and_reaped(tmp_path: Path) -> None:
    sleeper = own_sleep(tmp_path)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        await spawn.run([sleeper, "30"], timeout=0.3)
    assert time.monotonic() - t < 5
    assert not zombie_children(sleeper)
    assert not running(sleeper)


def own_sleep(tmp_path: Path) -> str:
    """A ``sleep`` under a name of this test's own: its processes are told apart from other tests' children."""
    link = tmp_path / "tkspawntest"
    link.symlink_to(shutil.which("sleep") or "/bin/sleep")
    return str(link)


def _children(name: str) -> list[tuple[int, str]]:
    """(pid, state) of this process's children whose command is ``name``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 1:].split()
            if comm == Path(name).name[:15] and int(rest[1]) == os.getpid():
                found.append((int(entry.name), rest[0]))
    return found


def zombie_children(name: str) -> list[int]:
    return [pid for pid, state in _children(name) if state == "Z"]


def running(name: str) -> list[int]:
    return [pid for pid, state in _children(name) if state != "Z"]


async def test_the_loop_keeps_running_while_a_child_runs() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    await asyncio.to_thread(int)  # the pool's first thread, made before counting
    threads = threading.active_count()
    ticker = asyncio.create_task(tick())
    procs = [await spawn.start(["sleep", "0.5"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for _ in range(5)]
    assert await asyncio.gather(*(spawn.wait(p) for p in procs)) == [0] * 5
    ticker.cancel()
    assert ticks >= 20
    assert threading.active_count() <= threads + 1  # no waiting thread per child


async def test_a_cancelled_wait_leaves_the_child_to_be_reaped_when_it_ends(tmp_path: Path) -> None:
    sleeper = own_sleep(tmp_path)
    proc = await spawn.start([sleeper, "0.3"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    waiting = asyncio.create_task(spawn.wait(proc))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    deadline = time.monotonic() + 5
    while proc.returncode is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert proc.returncode == 0
    assert not zombie_children(sleeper)


async def test_an_unknown_command_raises_at_start() -> None:
    with pytest.raises(FileNotFoundError):
        await spawn.run(["/nonexistent/turbok-test-command"], timeout=5)


async def test_a_cancelled_wait_holds_no_thread_of_the_pool(tmp_path: Path) -> None:
    """A cancelled ``runsc wait`` may go on for hours: its reaping must not take a thread the loop's work needs."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    sleeper = own_sleep(tmp_path)
    procs = [await spawn.start([sleeper, "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for _ in range(2)]
    for proc in procs:
        waiting = asyncio.create_task(spawn.wait(proc))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert await asyncio.wait_for(asyncio.to_thread(int, "7"), 2) == 7
    assert sorted(running(sleeper)) == sorted(p.pid for p in procs)  # the name finds them: the checks below count
    for proc in procs:
        proc.kill()
    deadline = time.monotonic() + 5
    while any(p.returncode is None for p in procs) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [p.returncode for p in procs] == [-9, -9]
    assert not zombie_children(sleeper)
