"""Updates, patches and the status and scale subresources: concurrency, generation, no-op writes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from turbok.api.patch import JSON_PATCH, MERGE, STRATEGIC
from turbok.api.status import BadRequest, Conflict, Invalid, NotFound, UnsupportedMediaType
from turbok.store.registry import ObjectRegistry, WriteOptions
from turbok.store.watch import Event

from .conftest import NAMESPACE, POOL, SANDBOX, pool, sandbox, snapshot


@pytest.fixture
def p1(registry: ObjectRegistry) -> dict[str, Any]:
    return registry.create(POOL, pool(), namespace="default")


def test_update_needs_the_current_resource_version(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    stale = copy.deepcopy(p1)
    p1["spec"]["replicas"] = 3
    updated = registry.update(POOL, p1, namespace="default")
    assert int(updated["metadata"]["resourceVersion"]) > int(stale["metadata"]["resourceVersion"])
    before = snapshot(registry)
    stale["spec"]["replicas"] = 4
    with pytest.raises(Conflict) as err:
        registry.update(POOL, stale, namespace="default")
    assert err.value.code == 409 and err.value.to_status()["reason"] == "Conflict"
    assert "the object has been modified; please apply your changes to the latest version" in err.value.message
    del stale["metadata"]["resourceVersion"]
    with pytest.raises(Invalid, match="metadata.resourceVersion: Invalid value: 0x0: must be specified"):
        registry.update(POOL, stale, namespace="default")
    assert snapshot(registry) == before


def test_a_different_uid_is_a_failed_precondition(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    p1["metadata"]["uid"] = "someone-else"
    with pytest.raises(Conflict, match="Precondition failed: UID in precondition: someone-else"):
        registry.update(POOL, p1, namespace="default")


def test_update_of_a_missing_object_is_404_and_names_must_agree(registry: ObjectRegistry) -> None:
    with pytest.raises(NotFound):
        registry.update(POOL, {**pool("ghost"), "metadata": {"name": "ghost", "resourceVersion": "1"}},
                        namespace="default")
    with pytest.raises(BadRequest, match="does not match the name"):
        registry.update(POOL, pool("a"), namespace="default", name="b")


def test_a_no_op_update_writes_nothing_and_sends_no_event(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    events: list[Event] = []
    registry.hub.listeners.append(events.append)
    before = snapshot(registry)
    same = registry.update(POOL, copy.deepcopy(p1), namespace="default")
    assert same == p1
    assert snapshot(registry) == before and events == []


def test_resending_what_the_server_defaulted_is_no_change(registry: ObjectRegistry) -> None:
    created = registry.create(SANDBOX, sandbox(), namespace="default")
    assert created["spec"]["operatingMode"] == "Running"
    body = sandbox()  # without the defaulted fields, as a client re-applying its manifest sends it
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    before = snapshot(registry)
    assert registry.update(SANDBOX, body, namespace="default")["metadata"]["generation"] == 1
    assert snapshot(registry) == before


def test_generation_counts_spec_changes_only(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    p1["metadata"]["labels"] = {"a": "b"}
    p1 = registry.update(POOL, p1, namespace="default")
    assert p1["metadata"]["generation"] == 1
    p1["spec"]["replicas"] = 5
    p1 = registry.update(POOL, p1, namespace="default")
    assert p1["metadata"]["generation"] == 2
    p1["status"] = {"replicas": 1}
    p1 = registry.update(POOL, p1, namespace="default", subresource="status")
    assert p1["metadata"]["generation"] == 2


def test_the_main_resource_cannot_write_status(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    p1["status"] = {"replicas": 9}
    p1["spec"]["replicas"] = 4
    out = registry.update(POOL, p1, namespace="default")
    assert "status" not in out and out["spec"]["replicas"] == 4
    assert "status" not in registry.get(POOL, "default", "p1")


def test_the_status_subresource_writes_status_only(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    p1["status"] = {"replicas": 1, "readyReplicas": 1}
    p1["spec"]["replicas"] = 7
    p1["metadata"]["labels"] = {"sneaky": "yes"}
    out = registry.update(POOL, p1, namespace="default", subresource="status")
    assert out["status"] == {"replicas": 1, "readyReplicas": 1}
    assert out["spec"]["replicas"] == 2 and "labels" not in out["metadata"]
    with pytest.raises(Invalid, match="status.replicas"):
        out["status"]["replicas"] = "one"
        registry.update(POOL, out, namespace="default", subresource="status")


def test_server_managed_metadata_is_kept(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    original = copy.deepcopy(p1["metadata"])
    p1["metadata"].update(creationTimestamp="2000-01-01T00:00:00Z", generation=40, selfLink="/x",
                          managedFields=[{"manager": "x"}])
    p1["spec"]["replicas"] = 1
    out = registry.update(POOL, p1, namespace="default")
    for key in ("uid", "creationTimestamp"):
        assert out["metadata"][key] == original[key]
    assert out["metadata"]["generation"] == 2
    assert "selfLink" not in out["metadata"] and "managedFields" not in out["metadata"]


def test_volume_claim_templates_are_immutable_and_a_refused_update_stores_nothing(
        registry: ObjectRegistry) -> None:
    body = sandbox()
    body["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "d"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
    created = registry.create(SANDBOX, body, namespace="default")
    before = snapshot(registry)
    created["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] = ["ReadWriteMany"]
    with pytest.raises(Invalid) as err:
        registry.update(SANDBOX, created, namespace="default")
    assert err.value.causes[0].field == "spec"
    assert "volumeClaimTemplates is immutable" in err.value.message
    assert snapshot(registry) == before


def test_namespaces_may_be_updated_without_a_resource_version(registry: ObjectRegistry) -> None:
    registry.create(NAMESPACE, {"metadata": {"name": "team"}})
    out = registry.update(NAMESPACE, {"metadata": {"name": "team", "labels": {"a": "b"}}})
    assert out["metadata"]["labels"] == {"a": "b"} and out["status"] == {"phase": "Active"}


# ---------------------------------------------------------------- patch


def test_merge_patch(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    out = registry.patch(POOL, "default", "p1", MERGE, {"spec": {"replicas": 0}, "metadata": {"labels": {"x": "y"}}})
    assert out["spec"]["replicas"] == 0 and out["metadata"]["labels"] == {"x": "y"}
    assert out["metadata"]["generation"] == 2


def test_json_patch(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    out = registry.patch(POOL, "default", "p1", JSON_PATCH,
                         [{"op": "test", "path": "/spec/replicas", "value": 2},
                          {"op": "replace", "path": "/spec/replicas", "value": 3}])
    assert out["spec"]["replicas"] == 3


def test_a_patch_carrying_a_stale_resource_version_conflicts(registry: ObjectRegistry,
                                                             p1: dict[str, Any]) -> None:
    rv = p1["metadata"]["resourceVersion"]
    registry.patch(POOL, "default", "p1", MERGE, {"spec": {"replicas": 1}})
    with pytest.raises(Conflict):
        registry.patch(POOL, "default", "p1", MERGE, {"metadata": {"resourceVersion": rv}, "spec": {"replicas": 9}})
    assert registry.get(POOL, "default", "p1")["spec"]["replicas"] == 1


@pytest.mark.parametrize(("media", "body", "error"), [
    (MERGE, {"spec": {"replicas": "x"}}, Invalid),
    (MERGE, {"spec": {"sandboxTemplateRef": None}}, Invalid),
    (JSON_PATCH, [{"op": "remove", "path": "/spec/nothing"}], Invalid),
    (JSON_PATCH, {"op": "add"}, BadRequest),
    (MERGE, {"metadata": "flat"}, BadRequest),
    (STRATEGIC, {"spec": {"replicas": 1}}, UnsupportedMediaType),
])
def test_bad_patches_change_nothing(registry: ObjectRegistry, p1: dict[str, Any], media: str, body: Any,
                                    error: type[Exception]) -> None:
    before = snapshot(registry)
    with pytest.raises(error):
        registry.patch(POOL, "default", "p1", media, body)
    assert snapshot(registry) == before


def test_a_json_patch_that_does_not_apply_names_the_object_and_the_path(registry: ObjectRegistry,
                                                                       p1: dict[str, Any]) -> None:
    with pytest.raises(Invalid) as caught:
        registry.patch(POOL, "default", "p1", JSON_PATCH, [{"op": "remove", "path": "/spec/nothing"}])
    status = caught.value.to_status()
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["details"]["kind"] == "SandboxWarmPool" and status["details"]["name"] == "p1"
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "/spec/nothing",
                                            "message": "json patch: does not exist"}]


def test_status_patch_touches_status_only(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    out = registry.patch(POOL, "default", "p1", MERGE, {"status": {"replicas": 2}, "spec": {"replicas": 9}},
                         subresource="status")
    assert out["status"] == {"replicas": 2} and out["spec"]["replicas"] == 2


def test_strategic_merge_patch_on_namespaces(registry: ObjectRegistry) -> None:
    registry.create(NAMESPACE, {"metadata": {"name": "team", "labels": {"keep": "1", "drop": "1"}}})
    out = registry.patch(NAMESPACE, None, "team", STRATEGIC, {"metadata": {"labels": {"drop": None, "new": "1"}}})
    assert out["metadata"]["labels"] == {"keep": "1", "new": "1", "kubernetes.io/metadata.name": "team"}


def test_dry_run_update_and_patch_store_nothing(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    before = snapshot(registry)
    p1["spec"]["replicas"] = 9
    assert registry.update(POOL, p1, namespace="default", opts=WriteOptions(dry_run=True))["spec"]["replicas"] == 9
    registry.patch(POOL, "default", "p1", MERGE, {"spec": {"replicas": 8}}, opts=WriteOptions(dry_run=True))
    assert snapshot(registry) == before


# ---------------------------------------------------------------- scale


def test_scale_reads_and_writes_the_crd_paths(registry: ObjectRegistry, p1: dict[str, Any]) -> None:
    registry.patch(POOL, "default", "p1", MERGE, {"status": {"replicas": 1, "selector": "a=b"}},
                   subresource="status")
    scale = registry.get_scale(POOL, "default", "p1")
    assert scale["apiVersion"] == "autoscaling/v1" and scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 2} and scale["status"] == {"replicas": 1, "selector": "a=b"}
    assert scale["metadata"]["name"] == "p1" and scale["metadata"]["uid"] == p1["metadata"]["uid"]
    scale["spec"]["replicas"] = 5
    out = registry.update_scale(POOL, "default", "p1", scale)
    assert out["spec"]["replicas"] == 5
    stored = registry.get(POOL, "default", "p1")
    assert stored["spec"]["replicas"] == 5 and stored["metadata"]["generation"] == 2
    with pytest.raises(Conflict):
        registry.update_scale(POOL, "default", "p1", scale)  # the old resourceVersion
    out = registry.patch_scale(POOL, "default", "p1", MERGE, {"spec": {"replicas": 0}})
    assert registry.get(POOL, "default", "p1")["spec"]["replicas"] == 0 == out["spec"]["replicas"]


def test_scale_validates_replicas_and_exists_only_where_declared(registry: ObjectRegistry,
                                                                  p1: dict[str, Any]) -> None:
    with pytest.raises(Invalid, match="spec.replicas"):
        registry.patch_scale(POOL, "default", "p1", MERGE, {"spec": {"replicas": -1}})
    registry.create(SANDBOX, sandbox(), namespace="default")
    with pytest.raises(NotFound):
        registry.get_scale(SANDBOX, "default", "s1")
