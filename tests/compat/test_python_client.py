"""The Kubernetes Python client (``kubernetes``), typed and custom-object APIs, against ``turbok serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.conftest import ControlPlaneProcess

G, V = "extensions.agents.x-k8s.io", "v1beta1"
NS = "compat-python-client"

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def api(control_plane: ControlPlaneProcess) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    core: Any = client.CoreV1Api(api)
    namespace = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS,
                                                                                     labels={"suite": "compat"})))
    assert namespace.status.phase == "Active"
    yield api
    core.delete_namespace(NS)
    api.close()


def pool(name: str, replicas: Any = 0) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "SandboxWarmPool", "metadata": {"name": name},
            "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": "t"}}}


def test_typed_core_api(api: client.ApiClient) -> None:
    core: Any = client.CoreV1Api(api)
    assert NS in [n.metadata.name for n in core.list_namespace(label_selector="suite=compat").items]
    patched = core.patch_namespace(NS, {"metadata": {"labels": {"extra": "yes"}}})
    assert patched.metadata.labels["extra"] == "yes"
    assert core.read_namespace(NS).metadata.labels["kubernetes.io/metadata.name"] == NS


def test_custom_objects_crud_subresources_and_watch(api: client.ApiClient) -> None:
    objects: Any = client.CustomObjectsApi(api)
    created = objects.create_namespaced_custom_object(G, V, NS, "sandboxwarmpools", pool("p"))
    rv = created["metadata"]["resourceVersion"]
    merged = objects.patch_namespaced_custom_object(G, V, NS, "sandboxwarmpools", "p",
                                                    {"metadata": {"labels": {"x": "y"}}})
    assert merged["metadata"]["labels"] == {"x": "y"}
    jp = objects.patch_namespaced_custom_object(G, V, NS, "sandboxwarmpools", "p",
                                                [{"op": "replace", "path": "/spec/sandboxTemplateRef/name",
                                                  "value": "t2"}],
                                                _content_type="application/json-patch+json")
    assert jp["spec"]["sandboxTemplateRef"]["name"] == "t2"
    scale = objects.patch_namespaced_custom_object_scale(G, V, NS, "sandboxwarmpools", "p", {"spec": {"replicas": 0}})
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 0
    listed = objects.list_namespaced_custom_object(G, V, NS, "sandboxwarmpools", field_selector="metadata.name=p")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["p"]
    watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
    stream = watcher.stream(objects.list_namespaced_custom_object, G, V, NS, "sandboxwarmpools", resource_version=rv,
                            timeout_seconds=1)
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in stream]
    assert seen[:2] == [("MODIFIED", "p"), ("MODIFIED", "p")]
    deleted = objects.delete_namespaced_custom_object(G, V, NS, "sandboxwarmpools", "p",
                                                      body=client.V1DeleteOptions(propagation_policy="Foreground"))
    assert deleted["metadata"]["finalizers"] == ["foregroundDeletion"]


def test_errors_arrive_as_api_exceptions_with_status_bodies(api: client.ApiClient) -> None:
    objects: Any = client.CustomObjectsApi(api)
    with pytest.raises(client.ApiException) as err:
        objects.create_namespaced_custom_object(G, V, NS, "sandboxwarmpools", pool("bad", replicas="x"))
    assert err.value.status == 422
    status = json.loads(str(err.value.body))
    assert status["reason"] == "Invalid" and status["details"]["causes"][0]["field"] == "spec.replicas"
    with pytest.raises(client.ApiException) as err:
        objects.get_namespaced_custom_object(G, V, NS, "sandboxwarmpools", "missing")
    assert err.value.status == 404
    assert objects.list_namespaced_custom_object(G, V, NS, "sandboxwarmpools", label_selector="none=here")[
        "items"] == []
