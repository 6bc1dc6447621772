"""Pod status as the kubelet computes it, and its coalescing writer."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.node.conftest import NodeHarness, pod
from turbok.node.restarts import BackOff
from turbok.node.status import ContainerView, StatusWriter, merge_status, phase_of


def _view(state: dict[str, Any], last: dict[str, Any] | None = None, **kw: object) -> ContainerView:
    return ContainerView(name=str(kw.pop("name", "c")), image="i", state=state, last_state=last or {}, **kw)  # type: ignore[arg-type]


RUNNING = {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
WAITING = {"waiting": {"reason": "ContainerCreating"}}


def _done(code: int) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}


def test_phase_as_the_kubelets_get_phase() -> None:
    always, never, onfail = (pod(restartPolicy=p) for p in ("Always", "Never", "OnFailure"))
    assert phase_of(always, [], [_view(WAITING)]) == "Pending"
    assert phase_of(always, [], [_view(RUNNING)]) == "Running"
    assert phase_of(always, [], [_view(_done(0))]) == "Running"  # it will be restarted
    backoff = {"waiting": {"reason": "CrashLoopBackOff"}}
    assert phase_of(always, [], [_view(backoff, _done(1))]) == "Running"
    assert phase_of(never, [], [_view(_done(0)), _view(_done(1), name="d")]) == "Failed"
    assert phase_of(never, [], [_view(_done(0))]) == "Succeeded"
    assert phase_of(onfail, [], [_view(_done(1))]) == "Running"
    assert phase_of(onfail, [], [_view(_done(0))]) == "Succeeded"
    assert phase_of(always, [_view(RUNNING, init=True)], [_view(WAITING)]) == "Pending"
    assert phase_of(never, [_view(_done(1), init=True)], [_view(WAITING)]) == "Failed"
    assert phase_of(always, [_view(backoff, _done(1), init=True)], [_view(WAITING)]) == "Pending"
    assert phase_of(always, [], [_view(_done(0))], terminal=True) == "Succeeded"


def test_merge_keeps_what_the_node_does_not_own() -> None:
    current = {"qosClass": "Burstable", "conditions": [
        {"type": "PodScheduled", "status": "True"}, {"type": "example.com/Gate", "status": "False"},
        {"type": "Ready", "status": "False"}]}
    wanted = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"},
                                                 {"type": "Initialized", "status": "True"}]}
    merged = merge_status(current, wanted)
    assert [c["type"] for c in merged["conditions"]] == ["Initialized", "Ready", "PodScheduled", "example.com/Gate"]
    assert merged["qosClass"] == "Burstable" and merged["phase"] == "Running"


def test_back_off_doubles_from_ten_seconds_to_five_minutes_and_starts_afresh() -> None:
    b = BackOff()
    assert [b.ended(now=0, ran=1) for _ in range(9)] == [0, 10, 20, 40, 80, 160, 300, 300, 300]
    assert b.ended(now=0, ran=600) == 0
    assert b.ended(now=100, ran=1) == 10 and b.waiting(105) == 5


async def test_the_writer_coalesces_and_skips_what_the_api_has(harness: NodeHarness) -> None:
    made = harness.create(pod("w"))
    writer = StatusWriter(harness.client, harness.pod_kind)
    futures = [writer.set(made, {"phase": "Pending", "conditions": [], "message": f"step {i}"}) for i in range(5)]
    await asyncio.gather(*futures)
    assert writer.writes == 1
    assert (harness.pod("w") or {})["status"]["message"] == "step 4"
    await writer.set(made, {"phase": "Pending", "conditions": [], "message": "step 4"})
    assert writer.writes == 1  # unchanged: not written
    harness.delete("w", grace_period_seconds=0)
    again = harness.create(pod("w"))  # another Pod, same name
    await writer.set(made, {"phase": "Running", "conditions": []})
    assert (harness.pod("w") or {})["metadata"]["uid"] == again["metadata"]["uid"]
    assert (harness.pod("w") or {})["status"]["phase"] == "Pending"
    await writer.stop()


async def test_events_repeated_are_counted_not_multiplied(harness: NodeHarness) -> None:
    from turbok.node.events import EventRecorder

    made = harness.create(pod("e"))
    events = EventRecorder(harness.client, component="kubelet", host="node1")
    for _ in range(4):
        events.record(made, "BackOff", "Back-off restarting failed container", warning=True)
    events.record(made, "Started", "Started container main")
    await events.flush()
    got = {e["reason"]: e for e in harness.events("e")}
    assert got["BackOff"]["count"] == 4 and got["Started"]["count"] == 1
    await events.stop()


async def test_events_are_written_after_the_writes_that_start_a_pod(harness: NodeHarness) -> None:
    """An Event waits ``WRITE_DELAY`` (together with those recorded meanwhile): never a write on the loop in
    the middle of a Pod's start."""
    from turbok.node import events as ev

    made = harness.create(pod("late"))
    events = ev.EventRecorder(harness.client, component="kubelet", host="node1")
    loop = asyncio.get_running_loop()
    t = loop.time()
    events.record(made, "Scheduled", "Successfully assigned default/late to node1")
    for _ in range(20):  # the loop keeps running other work meanwhile
        await asyncio.sleep(0)
    events.record(made, "Pulled", "already present")
    assert harness.events("late") == []
    await events.flush()
    assert loop.time() - t >= ev.WRITE_DELAY
    assert [e["reason"] for e in harness.events("late")] == ["Scheduled", "Pulled"]
    await events.stop()
