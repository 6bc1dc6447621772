"""The controllers' Client over the in-process registry: selectors, patches, subresources, graceful deletes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import NAMESPACE, NODE, POD, SERVICE, default_registry
from turbok.api.meta import FieldSelector, LabelSelector
from turbok.api.status import BadRequest, Conflict, NotFound, UnsupportedMediaType
from turbok.embedded.client import EmbeddedClient
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

KINDS = default_registry()
POOL = KINDS.by_kind("extensions.agents.x-k8s.io/v1beta1", "SandboxWarmPool")


def pod(name: str, node: str = "", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
                            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}
    if node:
        body["spec"]["nodeName"] = node
    return body


@pytest.fixture
def client(tmp_path: Path) -> Iterator[EmbeddedClient]:
    reg = ObjectRegistry(SqliteStore(tmp_path / "store.db"), KINDS)
    reg.ensure_namespace("default")
    yield EmbeddedClient(reg)
    reg.db.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_list_by_field_selector(client: EmbeddedClient) -> None:
    async def go() -> None:
        await client.create(POD, pod("a", "n1"))
        await client.create(POD, pod("b", "n2"))
        await client.create(POD, pod("c"))
        on_n1 = await client.list(POD, "default", field_selector=FieldSelector.parse(
            "spec.nodeName=n1", extra=POD.field_selectors))
        assert [p["metadata"]["name"] for p in on_n1] == ["a"]
        unbound = await client.list(POD, None, field_selector=FieldSelector.parse(
            "spec.nodeName=", extra=POD.field_selectors))
        assert [p["metadata"]["name"] for p in unbound] == ["c"]
        both = await client.list(POD, "default", selector=LabelSelector.parse("app in (a,b)"),
                                 field_selector=FieldSelector.parse("status.phase=Pending",
                                                                    extra=POD.field_selectors))
        assert [p["metadata"]["name"] for p in both] == ["a", "b"]
    run(go())


def test_patch_merge_strategic_json_and_status(client: EmbeddedClient) -> None:
    async def go() -> None:
        await client.create(POD, pod("a", "n1"))
        out = await client.patch(POD, "default", "a", {"metadata": {"annotations": {"x": "1"}}})
        assert out["metadata"]["annotations"] == {"x": "1"}
        out = await client.patch(POD, "default", "a", {"metadata": {"labels": {"y": "2"}}},
                                 patch_type="strategic")
        assert out["metadata"]["labels"] == {"app": "a", "y": "2"}
        out = await client.patch(POD, "default", "a", [{"op": "remove", "path": "/metadata/labels/y"}],
                                 patch_type="json")
        assert out["metadata"]["labels"] == {"app": "a"}
        # The status subresource changes status only; the main resource cannot change status.
        out = await client.patch(POD, "default", "a", {"status": {"phase": "Running"},
                                                        "metadata": {"labels": {"z": "3"}}},
                                 subresource="status")
        assert out["status"]["phase"] == "Running" and "z" not in out["metadata"]["labels"]
        out = await client.patch(POD, "default", "a", {"status": {"phase": "Failed"}})
        assert out["status"]["phase"] == "Running"
        with pytest.raises(BadRequest, match="unknown patch type"):
            await client.patch(POD, "default", "a", {}, patch_type="apply")  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            await client.patch(POD, "default", "missing", {"metadata": {"labels": {"a": "b"}}})
    run(go())


def test_strategic_patch_is_refused_for_custom_resources(client: EmbeddedClient) -> None:
    async def go() -> None:
        await client.create(POOL, {"metadata": {"name": "p", "namespace": "default"},
                                   "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "t"}}})
        with pytest.raises(UnsupportedMediaType):
            await client.patch(POOL, "default", "p", {"spec": {"replicas": 2}}, patch_type="strategic")
        assert (await client.patch(POOL, "default", "p", {"spec": {"replicas": 2}}))["spec"]["replicas"] == 2
    run(go())


def test_binding_sets_the_node_once(client: EmbeddedClient) -> None:
    async def go() -> None:
        await client.create(POD, pod("a"))
        status = await client.create_subresource(POD, "default", "a", "binding", {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}})
        assert status["status"] == "Success"
        bound = await client.get(POD, "default", "a")
        assert bound["spec"]["nodeName"] == "n1"
        assert [c["type"] for c in bound["status"]["conditions"]] == ["PodScheduled"]
        with pytest.raises(Conflict, match='already assigned to node "n1"'):
            await client.create_subresource(POD, "default", "a", "binding", {"target": {"name": "n2"}})
        assert (await client.get(POD, "default", "a"))["spec"]["nodeName"] == "n1"
        with pytest.raises(BadRequest, match="name in URL does not match"):
            await client.create_subresource(POD, "default", "a", "binding",
                                            {"metadata": {"name": "b"}, "target": {"name": "n2"}})
    run(go())


def test_graceful_delete_of_a_bound_pod_then_the_nodes_final_delete(client: EmbeddedClient) -> None:
    async def go() -> None:
        await client.create(POD, pod("a", "n1", terminationGracePeriodSeconds=45))
        await client.delete(POD, "default", "a")
        held = await client.get(POD, "default", "a")
        md = held["metadata"]
        assert md["deletionGracePeriodSeconds"] == 45 and md["deletionTimestamp"]
        # A second delete without a shorter period changes nothing; a shorter one shortens it.
        await client.delete(POD, "default", "a", grace_period_seconds=60)
        assert (await client.get(POD, "default", "a"))["metadata"] == md
        await client.delete(POD, "default", "a", grace_period_seconds=5)
        assert (await client.get(POD, "default", "a"))["metadata"]["deletionGracePeriodSeconds"] == 5
        # The node, its containers stopped, deletes with 0: the Pod is gone.
        await client.delete(POD, "default", "a", grace_period_seconds=0)
        assert await client.try_get(POD, "default", "a") is None
    run(go())


def test_unbound_pods_and_grace_zero_go_at_once(client: EmbeddedClient) -> None:
    async def go() -> None:
        await client.create(POD, pod("unbound"))
        await client.delete(POD, "default", "unbound")
        assert await client.try_get(POD, "default", "unbound") is None
        await client.create(POD, pod("forced", "n1"))
        await client.delete(POD, "default", "forced", grace_period_seconds=0)
        assert await client.try_get(POD, "default", "forced") is None
        await client.delete(POD, "default", "forced")  # already gone: not an error
    run(go())


def test_delete_preconditions(client: EmbeddedClient) -> None:
    async def go() -> None:
        created = await client.create(POD, pod("a"))
        with pytest.raises(Conflict, match="ResourceVersion in precondition"):
            await client.delete(POD, "default", "a", preconditions_rv="999")
        with pytest.raises(Conflict, match="UID in precondition"):
            await client.delete(POD, "default", "a", uid="other")
        await client.delete(POD, "default", "a", uid=created["metadata"]["uid"],
                            preconditions_rv=created["metadata"]["resourceVersion"])
        assert await client.try_get(POD, "default", "a") is None
    run(go())


def test_eviction_is_a_graceful_delete(client: EmbeddedClient) -> None:
    async def go() -> None:
        await client.create(POD, pod("a", "n1"))
        status = await client.create_subresource(POD, "default", "a", "eviction", {
            "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "a", "namespace": "default"},
            "deleteOptions": {"gracePeriodSeconds": 7}})
        assert status["status"] == "Success"
        assert (await client.get(POD, "default", "a"))["metadata"]["deletionGracePeriodSeconds"] == 7
        with pytest.raises(NotFound):
            await client.create_subresource(POD, "default", "missing", "eviction", {})
    run(go())


def test_update_status_for_every_kind_with_status(client: EmbeddedClient) -> None:
    async def go() -> None:
        node = await client.create(NODE, {"metadata": {"name": "n1"}})
        node["status"] = {"capacity": {"cpu": "2"}, "conditions": [{"type": "Ready", "status": "True"}]}
        assert (await client.update_status(NODE, node))["status"]["capacity"] == {"cpu": "2"}
        svc = await client.create(SERVICE, {"metadata": {"name": "s", "namespace": "default"},
                                            "spec": {"ports": [{"port": 80}]}})
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}
        assert (await client.update_status(SERVICE, svc))["status"]["loadBalancer"]["ingress"]
        p = await client.create(POD, pod("a", "n1"))
        p["status"]["phase"] = "Running"
        p["spec"]["nodeName"] = "elsewhere"  # ignored: the status subresource writes status only
        out = await client.update_status(POD, p)
        assert out["status"]["phase"] == "Running" and out["spec"]["nodeName"] == "n1"
        ns = await client.get(NAMESPACE, "", "default")
        assert (await client.update_status(NAMESPACE, ns))["status"]["phase"] == "Active"
    run(go())
