"""Back-pressure: when the host's memory, tasks or disk run short, new Pods stay Pending saying why, nothing
running is touched, and the waiting Pods are bound once a reading of the host finds room again."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from tests.unit.node.conftest import NodeHarness, condition, machine, pod
from turbok.node.hostroom import BRIDGE_PORTS, IDLE_POD_MEMORY, READ_SECONDS, RETRY_SECONDS, HostRoom
from turbok.node.node import NodeSettings
from turbok.node.nodeinfo import IDLE_POD_TASKS, Machine
from turbok.node.testing import FakeClock

MiB = 2**20
RESERVE = 256 * MiB


class Host:
    """A machine whose facts a test changes; counts how often they are read."""

    def __init__(self) -> None:
        self.facts = machine()
        self.reads = 0

    def __call__(self) -> Machine:
        self.reads += 1
        return self.facts

    def set(self, **kw: Any) -> None:
        self.facts = dataclasses.replace(self.facts, **kw)


def _message(p: dict[str, Any]) -> str:
    return str(next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")["message"])


async def _start(harness: NodeHarness, host: Host) -> NodeHarness:
    await harness.start(machine=host, settings=NodeSettings(relist_seconds=1.0, cpu_overcommit=1.0,
                                                            memory_reserve=RESERVE, disk_reserve=128 * MiB))
    return harness


@pytest.mark.parametrize(("short", "reason"), [
    ({"memory_available_bytes": RESERVE + IDLE_POD_MEMORY // 2}, "Insufficient memory"),
    ({"pids_used": int(4_194_304 * 0.9) - IDLE_POD_TASKS // 2}, "Insufficient pids"),
    ({"disk_available_bytes": 100 * MiB}, "Insufficient ephemeral-storage"),
])
async def test_a_short_host_keeps_new_pods_pending_leaves_running_ones_and_binds_them_when_room_is_back(
        harness: NodeHarness, short: dict[str, int], reason: str) -> None:
    host = Host()
    node = await _start(harness, host)
    node.create(pod("running", node=None))
    await node.wait_ready("running")
    before = list(node.runtime.calls)

    host.set(**short)
    await node.clock.advance(READ_SECONDS)  # the cached reading is stale now
    node.create(pod("new", node=None))
    got = await node.wait_pod("new", lambda p: condition(p, "PodScheduled") == "False")
    assert _message(got) == f"0/1 nodes are available: 1 {reason}."
    assert got["status"]["phase"] == "Pending" and not got["spec"].get("nodeName")
    cond = next(c for c in got["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["reason"] == "Unschedulable"
    await node.settle()
    [event] = node.events("new", "FailedScheduling")
    assert event["type"] == "Warning" and event["message"] == _message(got)
    assert event["source"]["component"] == "default-scheduler"

    # Still short: the retry reads the host again and leaves the Pod (and its status) alone.
    reads = host.reads
    await node.clock.advance(RETRY_SECONDS)
    await node.settle()
    assert host.reads == reads + 1
    assert not (node.pod("new") or {})["spec"].get("nodeName")
    running = node.pod("running") or {}
    assert condition(running, "Ready") == "True"
    assert [c for c in node.runtime.calls if c not in before and c[0].startswith(("stop", "remove"))] == []

    host.facts = machine()  # room is back: the next reading binds the Pod, no event from outside needed
    await node.clock.advance(RETRY_SECONDS)
    got = await node.wait_ready("new")
    assert got["spec"]["nodeName"] == "node1"


async def test_pods_still_booting_count_against_the_room(harness: NodeHarness) -> None:
    host = Host()
    host.set(memory_available_bytes=RESERVE + 2 * IDLE_POD_MEMORY + MiB)  # room for two idle sandboxes
    harness.runtime.hold_boots = asyncio.Event()  # none becomes Running: the host's figures do not show them
    node = await _start(harness, host)
    for name in ("a", "b", "c"):
        node.create(pod(name, node=None))
    got = await node.wait_pod("c", lambda p: condition(p, "PodScheduled") == "False")
    assert _message(got) == "0/1 nodes are available: 1 Insufficient memory."
    assert all((node.pod(n) or {})["spec"].get("nodeName") == "node1" for n in ("a", "b"))
    node.runtime.hold_boots.set()
    await node.wait_ready("a")
    await node.wait_ready("b")
    # Running now, so the reading shows them: the host is full, and c keeps waiting.
    host.set(memory_available_bytes=RESERVE + IDLE_POD_MEMORY // 2)
    await node.clock.advance(RETRY_SECONDS)
    await node.settle()
    assert not (node.pod("c") or {})["spec"].get("nodeName")


async def test_a_pod_deleted_frees_room_for_the_next_reading_not_a_retry_storm(harness: NodeHarness) -> None:
    host = Host()
    node = await _start(harness, host)
    node.create(pod("old", node=None))
    await node.wait_ready("old")
    host.set(memory_available_bytes=RESERVE)
    await node.clock.advance(READ_SECONDS)
    for name in ("w1", "w2"):
        node.create(pod(name, node=None))
        await node.wait_pod(name, lambda p: condition(p, "PodScheduled") == "False")
    await node.settle()
    events = len(node.events(None, "FailedScheduling"))
    node.delete("old")
    await node.wait_gone("old")
    await node.settle()
    # A deletion does not retry Pods waiting for the host (its memory is freed when its sandbox is gone).
    assert len(node.events(None, "FailedScheduling")) == events
    assert (node.events("w1", "FailedScheduling")[0].get("count") or 1) == 1
    host.set(memory_available_bytes=RESERVE + 3 * IDLE_POD_MEMORY)
    await node.clock.advance(RETRY_SECONDS)
    await node.wait_ready("w1")
    await node.wait_ready("w2")


async def test_no_reading_while_nothing_waits(harness: NodeHarness) -> None:
    host = Host()
    node = await _start(harness, host)
    node.create(pod("a", node=None))
    await node.wait_ready("a")
    reads = host.reads
    await node.clock.advance(10 * RETRY_SECONDS)
    await node.settle()
    # The heartbeat reads the machine every 10 s (the Node's status); the scheduler adds no reading of its own.
    assert host.reads - reads <= 2


def test_the_room_reads_the_host_once_per_pass_or_second_and_says_each_change_once(
        caplog: pytest.LogCaptureFixture) -> None:
    host = Host()
    clock = FakeClock()
    room = HostRoom(host, clock=clock, memory_reserve=RESERVE, disk_reserve=0)
    assert room.short() == [] and room.short(starting=3) == []
    assert host.reads == 1
    host.set(memory_available_bytes=RESERVE + 2 * IDLE_POD_MEMORY, pids_used=100, pid_max=150)
    assert room.short() == []  # the cached reading
    assert room.short(fresh=True) == ["Insufficient pids"]  # 100 + 60 tasks > 90% of 150
    assert host.reads == 2
    host.set(pid_max=4_194_304)
    clock.time += READ_SECONDS
    assert room.short(starting=1) == []
    assert room.short(starting=2) == ["Insufficient memory"]
    assert room.short(starting=2) == ["Insufficient memory"]
    reads = host.reads
    host.set(memory_available_bytes=RESERVE + 3 * IDLE_POD_MEMORY)
    assert room.short(starting=2) == ["Insufficient memory"]  # within the second: the same reading
    room.expire()  # a new scheduling pass
    assert room.short(starting=2) == [] and host.reads == reads + 1
    lines = [r.getMessage() for r in caplog.records if r.name == "turbok.node.hostroom"]
    assert len([line for line in lines if "no room" in line]) == 2, lines  # pids, then memory: once each
    assert any("TURBOK_NODE_MEMORY_RESERVE" in line for line in lines)


async def test_room_for_some_binds_that_many_highest_priority_first_and_the_rest_wait_quietly(
        harness: NodeHarness) -> None:
    host = Host()
    host.set(memory_available_bytes=RESERVE)
    node = await _start(harness, host)
    for i, priority in enumerate((0, 5, 0, 9)):
        node.create(pod(f"w{i}", node=None, priority=priority))
        await node.wait_pod(f"w{i}", lambda p: condition(p, "PodScheduled") == "False")
    await node.settle()
    node.runtime.hold_boots = asyncio.Event()  # those bound stay starting: the host's figures do not move
    host.set(memory_available_bytes=RESERVE + 2 * IDLE_POD_MEMORY + MiB)  # room for two
    await node.clock.advance(RETRY_SECONDS)
    await node.settle()
    bound = sorted(n for n in ("w0", "w1", "w2", "w3") if (node.pod(n) or {})["spec"].get("nodeName"))
    assert bound == ["w1", "w3"]  # priorities 5 and 9
    # The two left were not tried again (no second FailedScheduling), and wait for the next reading.
    assert all((node.events(n, "FailedScheduling")[0].get("count") or 1) == 1 for n in ("w0", "w2"))
    node.runtime.hold_boots.set()
    host.set(memory_available_bytes=RESERVE + 10 * IDLE_POD_MEMORY)
    await node.clock.advance(RETRY_SECONDS)
    for name in ("w0", "w1", "w2", "w3"):
        await node.wait_ready(name)


def test_a_full_bridge_is_too_many_pods_read_with_the_host() -> None:
    # The pod network's bridge takes 1,023 ports (the kernel's limit, shared by every home on the machine):
    # past them the next veth would be refused, so Pods wait as kube-scheduler's "Too many pods".
    host, ports = Host(), [BRIDGE_PORTS - 3]
    room = HostRoom(host, clock=FakeClock(), memory_reserve=RESERVE, disk_reserve=0, bridge_ports=lambda: ports[0])
    assert room.short(starting=2) == []
    assert room.short(starting=3) == ["Too many pods"]
    assert room.fits() == 3
    ports[0] = BRIDGE_PORTS
    assert room.short() == []  # the cached reading
    room.expire()
    assert room.short() == ["Too many pods"] and room.fits() == 0
