"""Creating objects: identity, names, namespaces, admission (prune, default, validate), dry-run."""

from __future__ import annotations

import re
from typing import Any

import pytest

from turbok.api import meta as m
from turbok.api.status import AlreadyExists, BadRequest, Forbidden, Invalid, NotFound
from turbok.store.registry import ObjectRegistry, WriteOptions

from .conftest import NAMESPACE, POOL, SANDBOX, pool, sandbox, snapshot


def test_create_fills_identity_and_stores_what_it_returns(registry: ObjectRegistry) -> None:
    before = registry.db.revision
    body = sandbox()
    body["metadata"].update(uid="forged", resourceVersion="999", generation=7,
                            creationTimestamp="2000-01-01T00:00:00Z", deletionTimestamp="2000-01-01T00:00:00Z")
    obj = registry.create(SANDBOX, body, namespace="default")
    md = obj["metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", md["uid"]) and md["uid"] != "forged"
    assert md["generation"] == 1 and "deletionTimestamp" not in md
    assert md["creationTimestamp"] != "2000-01-01T00:00:00Z"
    assert md["resourceVersion"] == str(before + 1) == str(registry.db.revision)
    assert registry.get(SANDBOX, "default", "s1") == obj
    assert body["metadata"]["uid"] == "forged"  # the caller's body is not mutated


def test_api_version_kind_and_namespace_are_filled_from_the_url(registry: ObjectRegistry) -> None:
    obj = registry.create(SANDBOX, {"metadata": {"name": "bare"}, "spec": sandbox()["spec"]}, namespace="default")
    assert (obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"]) == (
        "agents.x-k8s.io/v1beta1", "Sandbox", "default")


@pytest.mark.parametrize(("change", "message"), [
    ({"apiVersion": "agents.x-k8s.io/v1alpha1"}, "does not match the expected API version"),
    ({"kind": "SandboxClaim"}, "does not match the expected kind"),
    ({"metadata": {"name": "s", "namespace": "other"}}, "does not match the namespace"),
])
def test_mismatches_with_the_url_are_bad_requests(registry: ObjectRegistry, change: dict[str, Any],
                                                  message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        registry.create(SANDBOX, {**sandbox(), **change}, namespace="default")


def test_bodies_that_are_not_objects_are_bad_requests(registry: ObjectRegistry) -> None:
    bodies: list[Any] = [None, [], "text", {"metadata": "x"}, {"metadata": {"name": "a", "namespace": 5}}]
    for body in bodies:
        with pytest.raises(BadRequest):
            registry.create(SANDBOX, body, namespace="default")


def test_generate_name(registry: ObjectRegistry) -> None:
    body = sandbox()
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "box-"
    names = {registry.create(SANDBOX, body, namespace="default")["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5 and all(n.startswith("box-") and len(n) == 9 for n in names)


def test_a_generated_name_that_collides_is_drawn_again(registry: ObjectRegistry,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    registry.create(SANDBOX, sandbox("box-aaaaa"), namespace="default")
    draws = iter(["box-aaaaa", "box-aaaaa", "box-bbbbb"])
    monkeypatch.setattr(m, "generate_name", lambda prefix: next(draws))
    body = sandbox()
    body["metadata"] = {"generateName": "box-"}
    assert registry.create(SANDBOX, body, namespace="default")["metadata"]["name"] == "box-bbbbb"


def test_an_existing_name_is_409_already_exists_and_changes_nothing(registry: ObjectRegistry) -> None:
    registry.create(SANDBOX, sandbox(), namespace="default")
    before = snapshot(registry)
    with pytest.raises(AlreadyExists) as err:
        registry.create(SANDBOX, sandbox(), namespace="default")
    assert err.value.code == 409 and err.value.to_status()["reason"] == "AlreadyExists"
    assert err.value.message == 'sandboxes.agents.x-k8s.io "s1" already exists'
    assert snapshot(registry) == before


def test_the_namespace_must_exist_and_be_open(registry: ObjectRegistry) -> None:
    with pytest.raises(NotFound, match='namespaces "nope" not found'):
        registry.create(SANDBOX, sandbox(namespace="nope"), namespace="nope")
    registry.create(NAMESPACE, {"metadata": {"name": "closing"}})
    registry.delete(NAMESPACE, None, "closing")
    with pytest.raises(Forbidden, match="being terminated") as err:
        registry.create(SANDBOX, sandbox(namespace="closing"), namespace="closing")
    assert err.value.code == 403


def test_invalid_objects_get_422_naming_each_field_and_nothing_is_stored(registry: ObjectRegistry) -> None:
    before = snapshot(registry)
    body = pool(replicas="three")  # type: ignore[arg-type]
    del body["spec"]["sandboxTemplateRef"]
    body["metadata"]["labels"] = {"bad key": "x"}
    with pytest.raises(Invalid) as err:
        registry.create(POOL, body, namespace="default")
    status = err.value.to_status()
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert {c["field"] for c in status["details"]["causes"]} == {"spec.replicas", "spec.sandboxTemplateRef",
                                                                  "metadata.labels"}
    assert status["message"].startswith('SandboxWarmPool.extensions.agents.x-k8s.io "p1" is invalid: ')
    assert snapshot(registry) == before


def test_status_is_dropped_on_create_where_a_status_subresource_exists(registry: ObjectRegistry) -> None:
    body = pool()
    body["status"] = {"replicas": 5}
    assert "status" not in registry.create(POOL, body, namespace="default")


def test_defaults_are_applied(registry: ObjectRegistry) -> None:
    obj = registry.create(SANDBOX, sandbox(), namespace="default")
    assert obj["spec"]["operatingMode"] == "Running" and obj["spec"]["shutdownPolicy"] == "Retain"


def unknown_fields_body() -> dict[str, Any]:
    body = pool()
    body["spec"]["bogus"] = 1
    body["metadata"]["colour"] = "red"
    return body


def test_field_validation_strict_refuses_unknown_fields_with_400(registry: ObjectRegistry) -> None:
    before = snapshot(registry)
    with pytest.raises(BadRequest) as err:
        registry.create(POOL, unknown_fields_body(), namespace="default", opts=WriteOptions(field_validation="Strict"))
    assert 'strict decoding error: unknown field "metadata.colour", unknown field "spec.bogus"' in err.value.message
    assert snapshot(registry) == before


def test_field_validation_warn_prunes_and_warns(registry: ObjectRegistry) -> None:
    opts = WriteOptions(field_validation="Warn")
    obj = registry.create(POOL, unknown_fields_body(), namespace="default", opts=opts)
    assert "bogus" not in obj["spec"] and "colour" not in obj["metadata"]
    assert "bogus" not in registry.get(POOL, "default", "p1")["spec"]
    assert opts.warnings == ['unknown field "metadata.colour"', 'unknown field "spec.bogus"']


def test_field_validation_ignore_prunes_silently(registry: ObjectRegistry) -> None:
    opts = WriteOptions(field_validation="Ignore")
    obj = registry.create(POOL, unknown_fields_body(), namespace="default", opts=opts)
    assert "bogus" not in obj["spec"] and opts.warnings == []


def test_dry_run_admits_but_stores_nothing(registry: ObjectRegistry) -> None:
    before = snapshot(registry)
    events: list[object] = []
    registry.hub.listeners.append(events.append)
    obj = registry.create(SANDBOX, sandbox(), namespace="default", opts=WriteOptions(dry_run=True))
    assert obj["metadata"]["uid"] and obj["spec"]["operatingMode"] == "Running"
    assert snapshot(registry) == before and events == []
    with pytest.raises(Invalid):
        registry.create(POOL, pool(replicas=-1), namespace="default", opts=WriteOptions(dry_run=True))


def test_namespaces_get_their_label_phase_and_finalizer(registry: ObjectRegistry) -> None:
    ns = registry.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": "team-a", "namespace": "ignored"}})
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    assert "namespace" not in ns["metadata"]
    assert ns["status"] == {"phase": "Active"} and ns["spec"] == {"finalizers": ["kubernetes"]}
    with pytest.raises(Invalid):
        registry.create(NAMESPACE, {"metadata": {"name": "dots.are.not.allowed"}})
