"""The node's reaper: at most ``slots`` teardowns at once, removals retried, a runtime id's lock granted only
after its removal, pending removals abandoned when the node stops, a Pod whose stop keeps failing removed by it."""

from __future__ import annotations

import asyncio
import functools

from tests.unit.node.conftest import NodeHarness, pod
from turbok.node.podworker import TEARDOWN_TRIES
from turbok.node.reaper import TRIES, Reaper
from turbok.node.suspend import runtime_id
from turbok.runtime.errors import RuntimeError_


async def test_no_more_than_slots_teardowns_run_at_once() -> None:
    reaper = Reaper(slots=2)
    running, most = 0, 0

    async def work() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    for i in range(6):
        reaper.remove(f"id{i}", work)
    async with reaper.slot():  # a stop waits for a slot like a removal
        assert running <= 1
    await reaper.drain()
    assert most == 2 and reaper.removed_count == 6 and reaper.pending == 0


async def test_a_failed_removal_is_tried_again_then_given_up() -> None:
    reaper = Reaper(slots=1, retry_base=0.001)
    tries = 0

    async def flaky() -> None:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise OSError("busy")

    reaper.remove("a", flaky)
    await reaper.drain()
    assert tries == 3 and reaper.failed == {} and reaper.removed_count == 1

    async def broken() -> None:
        raise OSError("always")

    reaper.remove("b", broken)
    await reaper.drain()
    assert reaper.failed == {"b": "always"} and reaper.removed_count == 1
    assert TRIES >= 3


async def test_one_removal_per_id_and_waiting_for_it() -> None:
    reaper = Reaper()
    gate = asyncio.Event()
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1
        await gate.wait()

    reaper.remove("x", work)
    reaper.remove("x", work)  # already pending: dropped
    waiter = asyncio.ensure_future(reaper.removed("x"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    gate.set()
    await asyncio.wait_for(waiter, 1)
    assert calls == 1
    await reaper.removed("never-queued")  # returns at once


async def test_the_node_lock_of_an_id_waits_for_its_removal() -> None:
    from turbok.node.context import NodeContext

    reaper = Reaper()
    ctx = NodeContext.__new__(NodeContext)  # only the lock's fields
    ctx.reaper, ctx._locks = reaper, {}
    order: list[str] = []
    gate = asyncio.Event()

    async def removal() -> None:
        await gate.wait()
        order.append("removed")

    async def new_pod() -> None:
        async with ctx.lock("rid"):
            order.append("booted")

    async with ctx.lock("rid"):  # the old Pod's worker: queues the removal, then lets go
        booting = asyncio.ensure_future(new_pod())  # waiting for the lock before the removal began
        await asyncio.sleep(0)
        reaper.remove("rid", removal)
    await asyncio.sleep(0.01)
    assert order == []
    gate.set()
    await asyncio.wait_for(booting, 1)
    assert order == ["removed", "booted"]


async def test_stop_abandons_pending_removals() -> None:
    reaper = Reaper()

    async def forever() -> None:
        await asyncio.Event().wait()

    reaper.remove("a", forever)
    await asyncio.sleep(0)
    await asyncio.wait_for(reaper.stop(), 1)
    assert reaper.pending == 0 and reaper.removed_count == 0


async def test_a_pod_whose_stop_keeps_failing_goes_and_its_removal_is_left_to_the_reaper(node: NodeHarness) -> None:
    node.create(pod("stuck", terminationGracePeriodSeconds=2))
    await node.wait_ready("stuck")
    rid = runtime_id(node.pod("stuck") or {})
    real = node.runtime.stop_pod_sandbox
    fails = 0

    async def failing(id: str) -> None:
        nonlocal fails
        if fails < TEARDOWN_TRIES:
            fails += 1
            raise RuntimeError_("runsc delete failed")
        await real(id)

    node.runtime.stop_pod_sandbox = failing  # type: ignore[method-assign]
    node.delete("stuck")
    for attempt in range(TEARDOWN_TRIES):  # the worker's back-off between its tries
        await node.wait(functools.partial(lambda n: fails > n, attempt), what="a failed stop")
        await node.clock.advance(2.0 ** attempt)
    await node.wait_gone("stuck")
    await node.reaped()  # the reaper's removal stopped it for good, then removed it
    assert rid not in node.runtime.sandboxes
    assert [c for c in node.runtime.calls if c == ("remove_pod_sandbox", rid)]
