"""StartQueue: bounded concurrency, urgent starts before refills, cancellation hands slots on."""

from __future__ import annotations

import asyncio

import pytest

from turbok.controllers.startqueue import REFILL, URGENT, StartQueue


async def test_at_most_slots_run_at_once_and_urgent_ones_jump_the_queue() -> None:
    queue = StartQueue(slots=2)
    order: list[str] = []
    running = 0
    peak = 0
    gate = asyncio.Event()

    async def start(name: str, priority: int) -> None:
        nonlocal running, peak
        async with queue.slot(priority):
            running += 1
            peak = max(peak, running)
            order.append(name)
            await gate.wait()
            running -= 1

    tasks = [asyncio.create_task(start(f"refill{i}", REFILL)) for i in range(4)]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(start("claim", URGENT)))
    await asyncio.sleep(0.01)
    assert order == ["refill0", "refill1"] and queue.waiting == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 2
    assert order[2] == "claim", "an urgent start goes before queued refills"
    assert order[3:] == ["refill2", "refill3"]


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    queue = StartQueue(slots=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.slot():
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    async with queue.slot():  # the single slot is free again
        pass
    assert queue.waiting == 0
