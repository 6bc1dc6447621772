"""Field-selected watches see an object come and go as its fields change, as kube's watch cache does."""

from __future__ import annotations

import asyncio

from turbok.api import meta as m
from turbok.api.kinds import POD
from turbok.store.registry import ObjectRegistry


def _pod(name: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def test_binding_adds_and_deletion_removes_from_a_node_watch(registry: ObjectRegistry) -> None:
    async def go() -> list[tuple[str, str]]:
        watcher, initial = registry.watch(POD, None, field_selector=m.FieldSelector.parse(
            "spec.nodeName=n1", extra=POD.field_selectors))
        assert initial == []
        registry.create(POD, _pod("a"))
        registry.create_subresource(POD, "default", "a", "binding", {"target": {"name": "n1"}})
        registry.patch(POD, "default", "a", "application/merge-patch+json", {"metadata": {"labels": {"x": "y"}}})
        registry.delete(POD, "default", "a")  # graceful: still there, MODIFIED
        registry.delete(POD, "default", "a", grace_period_seconds=0)
        registry.create(POD, _pod("b"))  # never on n1: never seen
        registry.delete(POD, "default", "b")
        watcher.close()
        return [(t, e.name) async for t, e in watcher]

    assert asyncio.run(go()) == [("ADDED", "a"), ("MODIFIED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_host_network_compares_as_kube_writes_booleans(registry: ObjectRegistry) -> None:
    registry.create(POD, {**_pod("h"), "spec": {"hostNetwork": True,
                                                 "containers": [{"name": "c", "image": "busybox"}]}})
    registry.create(POD, _pod("n"))
    selected = registry.list(POD, "default", field_selector=m.FieldSelector.parse(
        "spec.hostNetwork=true", extra=POD.field_selectors))
    assert [p["metadata"]["name"] for p in selected.items] == ["h"]
    unset = registry.list(POD, "default", field_selector=m.FieldSelector.parse(
        "spec.hostNetwork=false", extra=POD.field_selectors))
    assert [p["metadata"]["name"] for p in unset.items] == ["n"]
