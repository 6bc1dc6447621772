"""The node's start slots: at most ``slots`` boots at once, urgent ones first, cancelled waiters leave cleanly."""

from __future__ import annotations

import asyncio

import pytest

from turbok.node.startqueue import REFILL, URGENT, StartQueue


async def _hold(queue: StartQueue, release: asyncio.Event, log: list[str], name: str, priority: int = URGENT) -> None:
    async with queue.slot(priority):
        log.append(name)
        await release.wait()


async def test_boots_beyond_the_slots_wait_and_urgent_ones_go_first() -> None:
    queue, log = StartQueue(1), []
    first, later = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(_hold(queue, first, log, "running"))
    await asyncio.sleep(0)
    refill = asyncio.create_task(_hold(queue, later, log, "refill", REFILL))
    await asyncio.sleep(0)
    urgent = asyncio.create_task(_hold(queue, later, log, "urgent", URGENT))
    await asyncio.sleep(0)
    assert queue.full and queue.waiting == 2 and log == ["running"]
    first.set()
    later.set()
    await asyncio.gather(running, refill, urgent)
    assert log == ["running", "urgent", "refill"]
    assert not queue.full and queue.waiting == 0


@pytest.mark.parametrize("released_first", [False, True], ids=["cancelled-first", "released-first"])
async def test_a_waiter_cancelled_as_a_slot_is_released_leaves_the_count_right(released_first: bool) -> None:
    # Shutdown cancels every worker at once: a release may find a waiter whose future is already cancelled,
    # and drop it, before that waiter's task runs its own cleanup (which then must not fail: it did, with
    # ValueError, and the worker swallowed its cancellation and kept the control plane from stopping).
    queue, log = StartQueue(1), []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(queue, release, log, "holder"))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(queue, asyncio.Event(), log, "waiter"))
    await asyncio.sleep(0)
    assert queue.waiting == 1
    if released_first:
        release.set()  # the holder's wake-up is scheduled before the waiter's
        waiter.cancel()
    else:
        waiter.cancel()
        release.set()
    results = await asyncio.gather(holder, waiter, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], asyncio.CancelledError), results
    assert log == ["holder"] and queue.waiting == 0 and not queue.full
    async with asyncio.timeout(1):
        async with queue.slot():
            pass  # the slot is free again
    assert not queue.full
