"""Garbage collection by ownerReferences and namespace termination, driven by their controllers in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from turbok.api.status import Forbidden
from turbok.controllers.garbage import GarbageCollector
from turbok.controllers.manager import Manager
from turbok.controllers.namespace import NamespaceReconciler
from turbok.embedded.client import EmbeddedClient
from turbok.store.registry import ObjectRegistry

from .conftest import NAMESPACE, POOL, SANDBOX, pool, sandbox


@pytest.fixture
async def controllers(registry: ObjectRegistry) -> AsyncIterator[ObjectRegistry]:
    client = EmbeddedClient(registry)
    collector = GarbageCollector(client)
    manager = Manager(client, [NamespaceReconciler(client)])
    await collector.start()
    await manager.start()
    yield registry
    await manager.stop()
    await collector.stop()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def owned_by(owner: dict[str, Any], name: str, **extra: Any) -> dict[str, Any]:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], **extra}
    return sandbox(name, ownerReferences=[ref])


def gone(reg: ObjectRegistry, kind: Any, name: str, ns: str = "default") -> Callable[[], bool]:
    return lambda: reg.try_get(kind, ns, name) is None


async def test_background_deletion_collects_dependents(controllers: ObjectRegistry) -> None:
    reg = controllers
    owner = reg.create(POOL, pool("owner"), namespace="default")
    reg.create(SANDBOX, owned_by(owner, "dep1", controller=True), namespace="default")
    reg.create(SANDBOX, owned_by(owner, "dep2"), namespace="default")
    reg.create(SANDBOX, sandbox("bystander"), namespace="default")
    reg.delete(POOL, "default", "owner", propagation="Background")
    assert reg.try_get(POOL, "default", "owner") is None  # the owner goes first
    await eventually(lambda: gone(reg, SANDBOX, "dep1")() and gone(reg, SANDBOX, "dep2")())
    assert reg.try_get(SANDBOX, "default", "bystander") is not None


async def test_a_dependent_with_a_living_owner_stays(controllers: ObjectRegistry) -> None:
    reg = controllers
    a = reg.create(POOL, pool("a"), namespace="default")
    b = reg.create(POOL, pool("b"), namespace="default")
    dep = owned_by(a, "shared")
    dep["metadata"]["ownerReferences"].append(owned_by(b, "x")["metadata"]["ownerReferences"][0])
    reg.create(SANDBOX, dep, namespace="default")
    reg.delete(POOL, "default", "a")
    await asyncio.sleep(0.2)
    assert reg.try_get(SANDBOX, "default", "shared") is not None
    reg.delete(POOL, "default", "b")
    await eventually(gone(reg, SANDBOX, "shared"))


async def test_an_object_whose_owner_never_existed_is_collected(controllers: ObjectRegistry) -> None:
    reg = controllers
    ghost = {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
             "metadata": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}
    reg.create(SANDBOX, owned_by(ghost, "orphaned"), namespace="default")
    await eventually(gone(reg, SANDBOX, "orphaned"))


async def test_foreground_deletion_removes_dependents_before_the_owner(controllers: ObjectRegistry) -> None:
    reg = controllers
    owner = reg.create(POOL, pool("owner"), namespace="default")
    dep = owned_by(owner, "dep", blockOwnerDeletion=True)
    dep["metadata"]["finalizers"] = ["test.example/hold"]
    reg.create(SANDBOX, dep, namespace="default")
    reg.delete(POOL, "default", "owner", propagation="Foreground")
    await eventually(lambda: bool(reg.get(SANDBOX, "default", "dep")["metadata"].get("deletionTimestamp")))
    held = reg.get(POOL, "default", "owner")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["foregroundDeletion"]
    await asyncio.sleep(0.2)
    assert reg.try_get(POOL, "default", "owner") is not None  # waits for its dependent
    dep = reg.get(SANDBOX, "default", "dep")
    dep["metadata"]["finalizers"] = []
    reg.update(SANDBOX, dep, namespace="default")
    await eventually(gone(reg, POOL, "owner"))


async def test_orphan_deletion_keeps_dependents_and_drops_the_reference(controllers: ObjectRegistry) -> None:
    reg = controllers
    owner = reg.create(POOL, pool("owner"), namespace="default")
    other = reg.create(POOL, pool("other"), namespace="default")
    dep = owned_by(owner, "kept")
    dep["metadata"]["ownerReferences"].append(owned_by(other, "x")["metadata"]["ownerReferences"][0])
    reg.create(SANDBOX, dep, namespace="default")
    reg.create(SANDBOX, owned_by(owner, "kept-alone"), namespace="default")
    reg.delete(POOL, "default", "owner", propagation="Orphan")
    await eventually(gone(reg, POOL, "owner"))
    await asyncio.sleep(0.1)
    kept = reg.get(SANDBOX, "default", "kept")
    assert [r["name"] for r in kept["metadata"]["ownerReferences"]] == ["other"]
    assert "ownerReferences" not in reg.get(SANDBOX, "default", "kept-alone")["metadata"]


async def test_deleting_a_namespace_deletes_what_is_in_it_then_itself(controllers: ObjectRegistry) -> None:
    reg = controllers
    reg.ensure_namespace("team")
    reg.ensure_namespace("neighbour")
    reg.create(POOL, pool("p", "team"), namespace="team")
    reg.create(SANDBOX, sandbox("held", "team", finalizers=["test.example/hold"]), namespace="team")
    reg.create(SANDBOX, sandbox("safe", "neighbour"), namespace="neighbour")
    reg.delete(NAMESPACE, None, "team")
    assert reg.get(NAMESPACE, "", "team")["status"]["phase"] == "Terminating"
    with pytest.raises(Forbidden):
        reg.create(POOL, pool("late", "team"), namespace="team")
    await eventually(gone(reg, POOL, "p", "team"))
    await eventually(lambda: bool((reg.get(NAMESPACE, "", "team").get("status") or {}).get("conditions")))
    ns = reg.get(NAMESPACE, "", "team")
    [cond] = [c for c in ns["status"]["conditions"] if c["type"] == "NamespaceContentRemaining"]
    assert cond["status"] == "True" and "sandboxes.agents.x-k8s.io has 1 resource instances" in cond["message"]
    assert reg.get(SANDBOX, "team", "held")["metadata"]["deletionTimestamp"]
    held = reg.get(SANDBOX, "team", "held")
    held["metadata"]["finalizers"] = []
    reg.update(SANDBOX, held, namespace="team")
    await eventually(gone(reg, NAMESPACE, "team", ""), timeout=10)
    assert reg.try_get(SANDBOX, "neighbour", "safe") is not None
    assert reg.try_get(NAMESPACE, "", "neighbour") is not None
