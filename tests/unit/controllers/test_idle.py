"""Idle auto-suspend: a Sandbox unused past its template's ``turbok.dev/idle-timeout`` is suspended (hibernated), and
``wake`` (the router's) resumes it; use (``touch``) restarts the clock; warm pools and user suspensions are left
alone. A fake clock drives the suspender; sweeps are called directly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from turbok.api import meta as m
from turbok.api.kinds import POD
from turbok.controllers.idle import (
    IDLE_SUSPENDED,
    IDLE_TIMEOUT,
    MIN_IDLE_TIMEOUT,
    IdleSuspender,
    idle_timeout,
)
from turbok.embedded.activity import ActivityStreams, WakingResolver
from turbok.embedded.client import EmbeddedClient
from turbok.sandboxd.errors import SandboxNotReady

from .conftest import Cluster, Obj, claim, pool, sandbox, template


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def idle(cluster: Cluster) -> AsyncIterator[tuple[IdleSuspender, Clock]]:
    clock = Clock()
    suspender = IdleSuspender(EmbeddedClient(cluster.registry), clock=clock, tick=3600.0)
    await suspender.start()
    yield suspender, clock
    await suspender.stop()


def _idle_sandbox(name: str, timeout: str = "30") -> Obj:
    body = sandbox(name)
    body["spec"]["podTemplate"]["metadata"] = {"annotations": {IDLE_TIMEOUT: timeout}}
    return body


@pytest.mark.parametrize(("raw", "want"), [(None, None), ("300", 300.0), ("45s", 45.0), ("0", None), ("-5", None),
                                           ("nan", None), ("soon", None), ("1", MIN_IDLE_TIMEOUT)])
def test_the_timeout_is_read_from_the_pod_template(raw: str | None, want: float | None) -> None:
    annotations = {} if raw is None else {IDLE_TIMEOUT: raw}
    assert idle_timeout({"spec": {"podTemplate": {"metadata": {"annotations": annotations}}}}) == want


async def test_an_unused_sandbox_is_suspended_after_its_timeout_and_use_restarts_the_clock(
        cluster: Cluster, idle: tuple[IdleSuspender, Clock]) -> None:
    suspender, clock = idle
    cluster.create(_idle_sandbox("sleepy"))
    cluster.create(sandbox("busy"))  # no timeout: never suspended for idleness
    await cluster.wait_condition(cluster.sandbox, "sleepy", "Ready")
    await cluster.wait_condition(cluster.sandbox, "busy", "Ready")
    clock.t += 20
    suspender.touch("default", "sleepy")  # a router request or an exec
    clock.t += 20
    assert await suspender.sweep() == []
    clock.t += 11
    assert await suspender.sweep() == [("default", "sleepy")]
    got = cluster.get(cluster.sandbox, "sleepy")
    assert got["spec"]["operatingMode"] == "Suspended" and IDLE_SUSPENDED in got["metadata"]["annotations"]
    assert cluster.get(cluster.sandbox, "busy")["spec"].get("operatingMode", "Running") == "Running"
    await cluster.wait(lambda: cluster.get(POD, "sleepy") is None, what="its Pod gone")
    assert cluster.node.deleted["sleepy"]["metadata"]["annotations"]["turbok.dev/on-delete"] == "hibernate"
    assert [e["message"] for e in cluster.events("IdleSuspended")][0].startswith("no request and no exec for 31 s")
    clock.t += 100
    assert await suspender.sweep() == [], "suspended once"


async def test_the_next_request_wakes_what_idleness_suspended_and_nothing_else(
        cluster: Cluster, idle: tuple[IdleSuspender, Clock]) -> None:
    suspender, clock = idle
    cluster.create(_idle_sandbox("sleepy"))
    await cluster.wait_condition(cluster.sandbox, "sleepy", "Ready")
    clock.t += 31
    await suspender.sweep()
    await cluster.wait(lambda: cluster.get(POD, "sleepy") is None, what="its Pod gone")
    assert await suspender.wake("default", "sleepy", timeout=5)
    got = await cluster.wait_condition(cluster.sandbox, "sleepy", "Ready")
    assert got["spec"]["operatingMode"] == "Running"
    assert IDLE_SUSPENDED not in (got["metadata"].get("annotations") or {})
    # Suspended by a user: a request does not wake it.
    cluster.patch(cluster.sandbox, "sleepy", {"spec": {"operatingMode": "Suspended"}})
    assert not await suspender.wake("default", "sleepy", timeout=1)
    assert cluster.get(cluster.sandbox, "sleepy")["spec"]["operatingMode"] == "Suspended"
    assert not await suspender.wake("default", "nobody", timeout=1)


async def test_a_warm_pools_sandboxes_are_kept_warm(cluster: Cluster, idle: tuple[IdleSuspender, Clock]) -> None:
    suspender, clock = idle
    body = template("tpl")
    body["spec"]["podTemplate"]["metadata"] = {"annotations": {IDLE_TIMEOUT: "10"}}
    cluster.create(body)
    cluster.create(pool("pool", "tpl", 1))
    await cluster.wait(lambda: [s for s in cluster.sandboxes() if m.is_true(s, "Ready")], what="a warm sandbox")
    clock.t += 60
    assert await suspender.sweep() == []
    cluster.create(claim("c1", "pool"))
    await cluster.wait_condition(cluster.claim, "c1", "Ready")
    await cluster.wait(lambda: any((s["metadata"].get("ownerReferences") or [{}])[0].get("kind") !=
                                   "SandboxWarmPool" for s in cluster.sandboxes()), what="adoption")
    # Adopted: a claim's now, idle from when it was handed over, not from when it warmed up in the pool.
    clock.t += 5
    assert await suspender.sweep() == []
    clock.t += 6
    assert len(await suspender.sweep()) == 1


class _Resolver:
    def __init__(self, ready_after_wake: bool) -> None:
        self.calls = 0
        self.woken = False
        self.ready_after_wake = ready_after_wake

    async def resolve(self, namespace: str, name: str) -> str:
        self.calls += 1
        if not (self.woken and self.ready_after_wake):
            raise SandboxNotReady(f"sandbox {name} is not ready")
        return f"{namespace}/{name}"


class _Hooks:
    def __init__(self, resolver: _Resolver, wakes: bool) -> None:
        self.touched: list[tuple[str, str]] = []
        self.resolver = resolver
        self.wakes = wakes

    def touch(self, namespace: str, name: str) -> None:
        self.touched.append((namespace, name))

    async def wake(self, namespace: str, name: str) -> bool:
        self.resolver.woken = self.wakes
        return self.wakes


async def test_the_router_resolver_reports_use_and_wakes_once() -> None:
    inner = _Resolver(ready_after_wake=True)
    hooks = _Hooks(inner, wakes=True)
    assert await WakingResolver(inner, hooks).resolve("ns", "box") == "ns/box"
    assert hooks.touched == [("ns", "box")] and inner.calls == 2
    inner = _Resolver(ready_after_wake=True)
    with pytest.raises(SandboxNotReady):  # nothing to wake (a user's suspension): the router's 503 as before
        await WakingResolver(inner, _Hooks(inner, wakes=False)).resolve("ns", "box")
    assert inner.calls == 1


async def test_execs_into_a_pod_count_as_use() -> None:
    class Streams:
        async def exec(self, pod: Obj, *args: object) -> str:
            return "ran"

    hooks = _Hooks(_Resolver(False), wakes=False)
    streams = ActivityStreams(Streams(), hooks)
    assert await streams.exec({"metadata": {"namespace": "ns", "name": "box"}}, ["true"]) == "ran"
    assert hooks.touched == [("ns", "box")]
