"""Deletion: immediate, or held by finalizers; preconditions; propagation finalizers; dry-run; lists."""

from __future__ import annotations

from typing import Any

import pytest

from turbok.api import meta as m
from turbok.api.status import BadRequest, Conflict, Invalid, NotFound
from turbok.store.registry import ObjectRegistry, WriteOptions
from turbok.store.watch import Event

from .conftest import NAMESPACE, POOL, SANDBOX, pool, sandbox, snapshot


def test_delete_without_finalizers_removes_at_once_and_publishes_deleted(registry: ObjectRegistry) -> None:
    registry.create(POOL, pool(), namespace="default")
    events: list[Event] = []
    registry.hub.listeners.append(events.append)
    out = registry.delete(POOL, "default", "p1")
    assert registry.try_get(POOL, "default", "p1") is None
    assert [e.type for e in events] == ["DELETED"]
    assert out["metadata"]["resourceVersion"] == str(events[0].rv) == str(registry.db.revision)
    with pytest.raises(NotFound, match='sandboxwarmpools.extensions.agents.x-k8s.io "p1" not found'):
        registry.delete(POOL, "default", "p1")


def test_finalizers_hold_the_object_until_the_last_one_goes(registry: ObjectRegistry) -> None:
    registry.create(POOL, pool(finalizers=["a.example/one", "a.example/two"]), namespace="default")
    held = registry.delete(POOL, "default", "p1")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["deletionGracePeriodSeconds"] == 0
    assert registry.get(POOL, "default", "p1")["metadata"]["deletionTimestamp"]
    before = snapshot(registry)
    assert registry.delete(POOL, "default", "p1") == held  # deleting again changes nothing
    assert snapshot(registry) == before
    held["metadata"]["finalizers"].append("a.example/three")
    with pytest.raises(Invalid, match="no new finalizers can be added if the object is being deleted"):
        registry.update(POOL, held, namespace="default")
    current = registry.get(POOL, "default", "p1")
    current["metadata"]["finalizers"] = ["a.example/two"]
    current["spec"]["replicas"] = 0  # spec changes are still allowed while terminating
    current = registry.update(POOL, current, namespace="default")
    assert current["metadata"]["deletionTimestamp"] == held["metadata"]["deletionTimestamp"]
    current["metadata"]["finalizers"] = []
    registry.update(POOL, current, namespace="default")
    assert registry.try_get(POOL, "default", "p1") is None


def test_deletion_timestamp_cannot_be_set_or_cleared_by_an_update(registry: ObjectRegistry) -> None:
    created = registry.create(POOL, pool(finalizers=["x.example/f"]), namespace="default")
    created["metadata"]["deletionTimestamp"] = m.now()
    assert "deletionTimestamp" not in registry.update(POOL, created, namespace="default")["metadata"]
    held = registry.delete(POOL, "default", "p1")
    del held["metadata"]["deletionTimestamp"]
    held["metadata"]["labels"] = {"a": "b"}
    assert registry.update(POOL, held, namespace="default")["metadata"]["deletionTimestamp"]


def test_preconditions(registry: ObjectRegistry) -> None:
    obj = registry.create(POOL, pool(), namespace="default")
    with pytest.raises(Conflict, match="Precondition failed: UID"):
        registry.delete(POOL, "default", "p1", preconditions={"uid": "other"})
    with pytest.raises(Conflict, match="Precondition failed: ResourceVersion"):
        registry.delete(POOL, "default", "p1", preconditions={"resourceVersion": "1"})
    registry.delete(POOL, "default", "p1", preconditions={"uid": obj["metadata"]["uid"],
                                                          "resourceVersion": obj["metadata"]["resourceVersion"]})
    assert registry.try_get(POOL, "default", "p1") is None


@pytest.mark.parametrize(("policy", "finalizer"), [("Foreground", "foregroundDeletion"), ("Orphan", "orphan")])
def test_propagation_policies_become_finalizers_for_the_garbage_collector(registry: ObjectRegistry, policy: str,
                                                                          finalizer: str) -> None:
    registry.create(POOL, pool(), namespace="default")
    out = registry.delete(POOL, "default", "p1", propagation=policy)
    assert out["metadata"]["finalizers"] == [finalizer] and out["metadata"]["deletionTimestamp"]


def test_dry_run_delete_keeps_the_object(registry: ObjectRegistry) -> None:
    registry.create(POOL, pool(), namespace="default")
    before = snapshot(registry)
    registry.delete(POOL, "default", "p1", opts=WriteOptions(dry_run=True))
    assert snapshot(registry) == before


def test_deleting_a_namespace_makes_it_terminating_not_gone(registry: ObjectRegistry) -> None:
    registry.create(NAMESPACE, {"metadata": {"name": "team"}})
    out = registry.delete(NAMESPACE, None, "team")
    assert out["status"]["phase"] == "Terminating" and out["metadata"]["deletionTimestamp"]
    assert registry.get(NAMESPACE, "", "team")["spec"]["finalizers"] == ["kubernetes"]
    # The namespace controller's last step: drop the finalizer, and the namespace goes.
    ns = registry.get(NAMESPACE, "", "team")
    ns["spec"] = {}
    registry.update(NAMESPACE, ns)
    assert registry.try_get(NAMESPACE, "", "team") is None


# ---------------------------------------------------------------- list


def make(registry: ObjectRegistry) -> None:
    registry.create(NAMESPACE, {"metadata": {"name": "other"}})
    for ns in ("default", "other"):
        for i, tier in enumerate(["web", "web", "db"]):
            registry.create(SANDBOX, sandbox(f"s{i}", ns, labels={"tier": tier, "n": str(i)}), namespace=ns)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in items]


def test_list_in_one_namespace_or_all_in_name_order(registry: ObjectRegistry) -> None:
    make(registry)
    assert names(registry.list(SANDBOX, "default").items) == ["default/s0", "default/s1", "default/s2"]
    assert names(registry.list(SANDBOX).items) == ["default/s0", "default/s1", "default/s2",
                                                   "other/s0", "other/s1", "other/s2"]
    result = registry.list(SANDBOX)
    assert result.resource_version == str(registry.db.revision)


def test_list_with_selectors(registry: ObjectRegistry) -> None:
    make(registry)
    web = registry.list(SANDBOX, label_selector=m.LabelSelector.parse("tier=web,n!=0"))
    assert names(web.items) == ["default/s1", "other/s1"]
    by_name = registry.list(SANDBOX, field_selector=m.FieldSelector.parse("metadata.name=s2"))
    assert names(by_name.items) == ["default/s2", "other/s2"]
    by_ns = registry.list(SANDBOX, field_selector=m.FieldSelector.parse("metadata.namespace!=default"))
    assert names(by_ns.items) == ["other/s0", "other/s1", "other/s2"]
    assert registry.list(NAMESPACE, field_selector=m.FieldSelector.parse("metadata.name=other")).items[0][
        "metadata"]["name"] == "other"


def test_list_pages_with_limit_and_continue(registry: ObjectRegistry) -> None:
    make(registry)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = registry.list(SANDBOX, limit=4, continue_token=token)
        seen += names(page.items)
        pages += 1
        if not page.continue_token:
            assert page.remaining is None
            break
        assert page.remaining == 2
        token = page.continue_token
    assert pages == 2 and seen == names(registry.list(SANDBOX).items)
    with pytest.raises(BadRequest):
        registry.list(SANDBOX, continue_token="garbage!")
