"""Authentication, error bodies, discovery documents and metrics of the API server."""

from __future__ import annotations

import pytest

from .conftest import POOLS, Api, Server


@pytest.mark.parametrize("path", ["/api", "/apis", "/api/v1/namespaces", POOLS, "/openapi/v3", "/openapi/v2",
                                  "/version", "/metrics", "/no/such/path"])
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer unit-test-token-but-longer",
                                    "bearer unit-test-token"])
async def test_every_request_needs_the_token(server: Server, path: str, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = await server.anonymous.get(path, headers=headers)
    assert response.status == 401
    body = await response.json()
    assert (body["kind"], body["status"], body["reason"], body["code"]) == ("Status", "Failure", "Unauthorized", 401)


async def test_writes_without_the_token_change_nothing(server: Server) -> None:
    before = server.registry.db.revision
    response = await server.anonymous.post(POOLS, json={"metadata": {"name": "x"}})
    assert response.status == 401 and server.registry.db.revision == before


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
async def test_health_endpoints_are_open(server: Server, path: str) -> None:
    response = await server.anonymous.get(path)
    assert response.status == 200 and await response.text() == "ok"


async def test_unknown_paths_and_methods_answer_with_status_bodies(api: Api) -> None:
    for path in ("/nope", "/apis/nope.example.com", "/apis/agents.x-k8s.io/v9", "/api/v1/replicationcontrollers",
                 "/apis/agents.x-k8s.io/v1beta1/namespaces/default/sandboxes/s/bogus"):
        response = await api.get(path)
        assert response.status == 404, path
        body = await response.json()
        assert body["reason"] == "NotFound" and body["kind"] == "Status"
    response = await api.post("/version")
    assert response.status == 405 and (await response.json())["reason"] == "MethodNotAllowed"


async def test_version(api: Api) -> None:
    body = await (await api.get("/version")).json()
    assert body["major"] == "1" and body["gitVersion"].startswith(f"v1.{body['minor']}.")


async def test_core_discovery(api: Api) -> None:
    versions = await (await api.get("/api")).json()
    assert versions["kind"] == "APIVersions" and versions["versions"] == ["v1"]
    core = await (await api.get("/api/v1")).json()
    assert core["kind"] == "APIResourceList" and core["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in core["resources"]}
    ns = by_name["namespaces"]
    assert (ns["kind"], ns["namespaced"], ns["shortNames"]) == ("Namespace", False, ["ns"])
    assert {"create", "delete", "get", "list", "patch", "update", "watch"} <= set(ns["verbs"])
    assert "deletecollection" not in ns["verbs"]
    assert {"namespaces/status", "namespaces/finalize"} <= set(by_name)


async def test_group_discovery(api: Api) -> None:
    groups = await (await api.get("/apis")).json()
    assert groups["kind"] == "APIGroupList"
    names = {g["name"]: g for g in groups["groups"]}
    assert {"agents.x-k8s.io", "extensions.agents.x-k8s.io", "apiextensions.k8s.io"} <= set(names)
    ext = names["extensions.agents.x-k8s.io"]
    assert ext["preferredVersion"] == {"groupVersion": "extensions.agents.x-k8s.io/v1beta1", "version": "v1beta1"}
    assert ext["versions"] == [ext["preferredVersion"]]
    group = await (await api.get("/apis/extensions.agents.x-k8s.io")).json()
    assert group["kind"] == "APIGroup" and group["name"] == "extensions.agents.x-k8s.io"


async def test_resource_lists_carry_subresources_scale_and_names(api: Api) -> None:
    doc = await (await api.get("/apis/extensions.agents.x-k8s.io/v1beta1")).json()
    assert doc["groupVersion"] == "extensions.agents.x-k8s.io/v1beta1"
    by_name = {r["name"]: r for r in doc["resources"]}
    assert set(by_name) == {"sandboxclaims", "sandboxclaims/status", "sandboxtemplates", "sandboxwarmpools",
                            "sandboxwarmpools/status", "sandboxwarmpools/scale"}
    swp = by_name["sandboxwarmpools"]
    assert (swp["kind"], swp["singularName"], swp["namespaced"], swp["shortNames"]) == (
        "SandboxWarmPool", "sandboxwarmpool", True, ["swp"])
    assert set(swp["verbs"]) == {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
    scale = by_name["sandboxwarmpools/scale"]
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    assert set(scale["verbs"]) == {"get", "patch", "update"}
    crds = await (await api.get("/apis/apiextensions.k8s.io/v1")).json()
    [crd] = crds["resources"]
    assert crd["name"] == "customresourcedefinitions" and set(crd["verbs"]) == {"get", "list", "watch"}


async def test_metrics_count_requests_by_resource_not_by_object_name(server: Server, api: Api) -> None:
    await api.get(f"{POOLS}/some-object-name")
    await api.get(f"{POOLS}/another-name")
    await api.get("/api/v1")
    text = await (await api.get("/metrics")).text()
    assert 'resource="sandboxwarmpools",verb="GET"} 2.0' in text
    assert "some-object-name" not in text and "another-name" not in text
    assert 'resource="discovery"' in text
    assert "turbok_apiserver_request_duration_seconds_bucket" in text
