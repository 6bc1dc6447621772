"""Watches over the registry: initial state, replay from a resourceVersion, 410, selector transitions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from turbok.api import meta as m
from turbok.api.status import BadRequest, Gone
from turbok.store.registry import ObjectRegistry
from turbok.store.watch import Event, Watcher, WatchHub

from .conftest import POOL, SANDBOX, pool, sandbox


async def drain(watcher: Watcher, count: int, timeout: float = 2.0) -> list[tuple[str, str, int]]:
    """The next ``count`` events as (type, name, rv)."""
    out = []
    for _ in range(count):
        type_, event = await asyncio.wait_for(watcher.__anext__(), timeout)
        out.append((type_, event.name, event.rv))
    return out


async def nothing_more(watcher: Watcher) -> bool:
    try:
        await asyncio.wait_for(watcher.__anext__(), 0.05)
    except TimeoutError:
        return True
    return False


async def test_a_watch_without_resource_version_starts_with_the_current_state(registry: ObjectRegistry) -> None:
    registry.create(POOL, pool("a"), namespace="default")
    registry.create(POOL, pool("b"), namespace="default")
    for i, rv in enumerate((None, "", "0")):
        watcher, initial = registry.watch(POOL, "default", resource_version=rv)
        assert [r.object()["metadata"]["name"] for r in initial] == ["a", "b"]
        assert await nothing_more(watcher)
        registry.patch(POOL, "default", "a", "application/merge-patch+json", {"spec": {"replicas": 5 + i}})
        [(type_, name, _)] = await drain(watcher, 1)
        assert (type_, name) == ("MODIFIED", "a")
        watcher.close()


async def test_a_watch_from_a_resource_version_replays_what_came_after(registry: ObjectRegistry) -> None:
    a = registry.create(POOL, pool("a"), namespace="default")
    registry.create(POOL, pool("b"), namespace="default")
    registry.delete(POOL, "default", "a")
    watcher, initial = registry.watch(POOL, "default", resource_version=a["metadata"]["resourceVersion"])
    assert initial == []
    events = await drain(watcher, 2)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "b"), ("DELETED", "a")]
    assert events[0][2] < events[1][2]
    registry.create(POOL, pool("c"), namespace="default")
    assert [(t, n) for t, n, _ in await drain(watcher, 1)] == [("ADDED", "c")]
    assert await nothing_more(watcher)


async def test_other_resources_and_namespaces_are_not_seen(registry: ObjectRegistry) -> None:
    registry.ensure_namespace("other")
    watcher, _ = registry.watch(POOL, "default")
    registry.create(SANDBOX, sandbox("s"), namespace="default")
    registry.create(POOL, pool("elsewhere", "other"), namespace="other")
    registry.create(POOL, pool("here"), namespace="default")
    assert [(t, n) for t, n, _ in await drain(watcher, 1)] == [("ADDED", "here")]
    assert await nothing_more(watcher)
    everywhere, initial = registry.watch(POOL, None)
    assert sorted(r.object()["metadata"]["name"] for r in initial) == ["elsewhere", "here"]


async def test_too_old_resource_versions_are_gone(registry: ObjectRegistry) -> None:
    registry.hub = WatchHub(start_rv=registry.db.revision, window=3)
    first = registry.create(POOL, pool("a"), namespace="default")
    for i in range(5):
        registry.patch(POOL, "default", "a", "application/merge-patch+json", {"spec": {"replicas": i}})
    with pytest.raises(Gone) as err:
        registry.watch(POOL, "default", resource_version=first["metadata"]["resourceVersion"])
    assert err.value.code == 410 and err.value.to_status()["reason"] == "Expired"
    assert "too old resource version" in err.value.message
    recent = str(registry.db.revision - 2)
    watcher, _ = registry.watch(POOL, "default", resource_version=recent)
    assert len(await drain(watcher, 2)) == 2
    with pytest.raises(BadRequest):
        registry.watch(POOL, "default", resource_version="yesterday")


async def test_label_selectors_see_objects_arrive_and_leave(registry: ObjectRegistry) -> None:
    watcher, initial = registry.watch(POOL, "default", label_selector=m.LabelSelector.parse("team=red"))
    assert initial == []
    registry.create(POOL, pool("a", labels={"team": "blue"}), namespace="default")
    assert await nothing_more(watcher)

    def relabel(team: str) -> None:
        registry.patch(POOL, "default", "a", "application/merge-patch+json", {"metadata": {"labels": {"team": team}}})

    relabel("red")
    registry.patch(POOL, "default", "a", "application/merge-patch+json", {"spec": {"replicas": 0}})
    relabel("blue")
    relabel("green")
    relabel("red")
    registry.delete(POOL, "default", "a")
    events = [(t, n) for t, n, _ in await drain(watcher, 5)]
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"), ("ADDED", "a"), ("DELETED", "a")]
    assert await nothing_more(watcher)


async def test_field_selector_on_the_name(registry: ObjectRegistry) -> None:
    watcher, _ = registry.watch(POOL, "default", field_selector=m.FieldSelector.parse("metadata.name=b"))
    for name in ("a", "b", "c"):
        registry.create(POOL, pool(name), namespace="default")
    assert [(t, n) for t, n, _ in await drain(watcher, 1)] == [("ADDED", "b")]
    assert await nothing_more(watcher)


async def test_an_overflowing_watcher_ends_instead_of_hanging(registry: ObjectRegistry) -> None:
    registry.hub = WatchHub(start_rv=registry.db.revision, watcher_queue=3)
    watcher, _ = registry.watch(POOL, "default")
    for i in range(5):
        registry.create(POOL, pool(f"p{i}"), namespace="default")
    assert watcher.overflowed and watcher.closed
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(watcher.__anext__(), 1.0)
    assert registry.hub.watcher_count() == 0


async def test_a_failing_listener_does_not_fail_the_write_or_starve_the_others(
        registry: ObjectRegistry, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(_: Any) -> None:
        raise KeyError("namespace")

    registry.hub.listeners += [broken, lambda e: seen.append(e.name)]
    registry.create(POOL, pool("a"), namespace="default")
    assert registry.get(POOL, "default", "a") and seen == ["a"]
    assert "watch listener" in caplog.text and "failed" in caplog.text


async def test_closing_a_watcher_unsubscribes_it(registry: ObjectRegistry) -> None:
    watcher, _ = registry.watch(POOL, "default")
    assert registry.hub.watcher_count() == 1
    watcher.close()
    watcher.close()
    assert registry.hub.watcher_count() == 0
    registry.create(POOL, pool("a"), namespace="default")
    with pytest.raises(StopAsyncIteration):
        await watcher.__anext__()


async def test_watch_lines_are_the_kubernetes_wire_format(registry: ObjectRegistry) -> None:
    import json

    watcher, _ = registry.watch(POOL, "default")
    registry.create(POOL, pool("a"), namespace="default")
    _, event = await watcher.__anext__()
    line = json.loads(event.line())
    assert line["type"] == "ADDED" and line["object"]["metadata"]["name"] == "a"
    assert json.loads(event.line("DELETED"))["type"] == "DELETED"
    assert event.object() == registry.get(POOL, "default", "a")


async def test_watches_of_one_object_hear_only_it_and_broad_ones_hear_all() -> None:
    hub = WatchHub(start_rv=0)
    asked: list[str] = []

    def counting(label: str) -> Any:
        def filter_(event: Any) -> str:
            asked.append(label)
            return str(event.type)
        return filter_

    pinned = [hub.subscribe("pools", None, counting(f"c{i}"), ("ns", f"c{i}")) for i in range(1000)]
    everywhere = hub.subscribe("pools", None, counting("all"))
    in_ns = hub.subscribe("pools", None, counting("ns"), ("ns", None))
    by_name = hub.subscribe("pools", None, counting("any-ns c7"), (None, "c7"))
    elsewhere = hub.subscribe("pools", None, counting("other"), ("other", None))

    def event(name: str, rv: int) -> Event:
        return Event("ADDED", "pools", "ns", name, rv, "{}", {}, None)

    hub.publish(event("c7", 1))
    assert sorted(asked) == sorted(["c7", "all", "ns", "any-ns c7"])  # 1,000 pinned watchers, one asked
    assert [(t, e.name) for t, e in await drain_pairs(pinned[7], 1)] == [("ADDED", "c7")]
    asked.clear()
    hub.publish(event("unwatched", 2))
    assert sorted(asked) == ["all", "ns"]
    assert await nothing_more(pinned[7]) and await nothing_more(elsewhere)
    # Replayed from the history, a scoped watcher gets only its own object's changes.
    again = hub.subscribe("pools", 0, lambda e: str(e.type), ("ns", "c7"))
    assert [e.rv for _, e in await drain_pairs(again, 1)] == [1] and await nothing_more(again)
    for w in [*pinned, everywhere, in_ns, by_name, elsewhere, again]:
        w.close()
    assert hub.watcher_count() == 0 and hub._watchers == {"pools": {}}


async def drain_pairs(watcher: Watcher, count: int) -> list[tuple[str, Event]]:
    return [await asyncio.wait_for(watcher.__anext__(), 2.0) for _ in range(count)]
