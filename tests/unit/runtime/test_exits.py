"""``ExitWatch``: the end of a watched process is told once, to each subscriber, with its key; nothing else is."""

from __future__ import annotations

import asyncio
import subprocess
import threading

from turbok.runtime.exits import ExitWatch


def test_an_ended_process_is_told_by_its_key_once() -> None:
    watch = ExitWatch()
    told: list[str] = []
    arrived = threading.Event()

    def record(key: str) -> None:
        told.append(key)
        arrived.set()

    watch.subscribe(record)
    short, long = subprocess.Popen(["sleep", "1000"]), subprocess.Popen(["sleep", "1000"])
    try:
        watch.watch(short.pid, "pod-a")
        watch.watch(short.pid, "pod-a")  # watched once however often a status read asks
        watch.watch(long.pid, "pod-b")
        assert watch.watching() == 2
        short.kill()
        short.wait()
        assert arrived.wait(5)
        assert told == ["pod-a"] and watch.watching() == 1
        # A process gone before it is watched is told at once.
        arrived.clear()
        watch.watch(short.pid, "pod-c")
        assert arrived.is_set() and told == ["pod-a", "pod-c"]
    finally:
        long.kill()
        long.wait()
    assert arrived.wait(5)


async def test_subscribers_in_an_event_loop_hear_it_there_until_they_leave() -> None:
    watch = ExitWatch()
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    leave = watch.subscribe(lambda key: got.put_nowait((key, threading.current_thread() is threading.main_thread())),
                            loop)
    first = subprocess.Popen(["sleep", "1000"])
    watch.watch(first.pid, "pod-a")
    first.kill()
    first.wait()
    assert await asyncio.wait_for(got.get(), 5) == ("pod-a", True)  # on the loop's thread
    leave()
    second = subprocess.Popen(["sleep", "1000"])
    watch.watch(second.pid, "pod-b")
    second.kill()
    second.wait()
    await asyncio.sleep(0.3)
    assert got.empty()
