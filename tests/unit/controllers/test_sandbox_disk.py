"""A sandbox whose start fails on the host's side, or whose disk fails, recovers by itself."""

from __future__ import annotations

import errno

from turbok.api import meta as m
from turbok.runtime.base import Phase, RuntimeState, sandbox_id

from .conftest import Cluster, sandbox


async def test_a_start_failing_with_a_host_error_is_retried_until_it_works(cluster: Cluster) -> None:
    # As when the home's disk is full: an OSError, not one of the runtime's own errors. The
    # boot used to die with it and the sandbox stayed not-Ready until the control plane restarted.
    cluster.runtime.fail_start = OSError(errno.ENOSPC, "No space left on device")
    obj = cluster.create(sandbox("full"))
    rid = sandbox_id(obj["metadata"]["uid"])
    failed = await cluster.wait_condition(cluster.sandbox, "full", "Ready", "False", reason="DependenciesNotReady")
    await cluster.wait(lambda: "No space left" in m.condition(cluster.get(cluster.sandbox, "full"),
                                                              "Ready")["message"], what="the reason in Ready")
    assert failed is not None
    cluster.runtime.fail_start = None  # space is back
    await cluster.wait_condition(cluster.sandbox, "full", "Ready", reason="DependenciesReady", timeout=10)
    assert cluster.runtime.attempts[rid] >= 2


async def test_a_running_sandbox_whose_disk_failed_is_reported_and_started_again(cluster: Cluster) -> None:
    obj = cluster.create(sandbox("ro"))
    rid = sandbox_id(obj["metadata"]["uid"])
    await cluster.wait_condition(cluster.sandbox, "ro", "Ready", reason="DependenciesReady")
    runtime = cluster.runtime
    healthy_state, healthy_start = runtime.state, runtime.start
    restarted = False

    async def state(id: str) -> RuntimeState:
        if id == rid and not restarted:
            return RuntimeState(id, Phase.RUNNING, runtime.isolation, pid=1, reason="DiskFailed",
                                message="its disk turned read-only after a write error")
        return await healthy_state(id)

    async def start(spec):  # type: ignore[no-untyped-def]
        nonlocal restarted
        restarted = spec.id == rid or restarted
        return await healthy_start(spec)

    runtime.state, runtime.start = state, start  # type: ignore[method-assign]
    # The periodic check finds it (no event comes from a disk); Ready says why, then it is back.
    await cluster.wait(lambda: restarted, timeout=15, what="the sandbox started again")
    await cluster.wait_condition(cluster.sandbox, "ro", "Ready", reason="DependenciesReady", timeout=5)
    events = cluster.registry.list(cluster.kinds.resolve("events"), "default").items
    assert any(e.get("reason") == "DiskFailed" for e in events)
