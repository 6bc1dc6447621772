"""Pods over HTTP as kube-apiserver serves them: graceful DELETE, binding, eviction, status, field selectors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from turbok.apiserver.app import create_app
from turbok.apiserver.resources import Target
from turbok.store.registry import ObjectRegistry

from .conftest import AUTH, TOKEN, Api, Server
from .test_watch_http import next_event

PODS = "/api/v1/namespaces/default/pods"
MERGE = {"Content-Type": "application/merge-patch+json"}


def pod(name: str, node: str = "", grace: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def test_create_starts_pending_whatever_the_body_says(api: Api) -> None:
    body = pod("a")
    body["status"] = {"phase": "Running", "podIP": "127.0.0.9"}
    created = await (await api.post(PODS, json=body)).json()
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


async def test_graceful_delete_over_http(api: Api) -> None:
    await api.post(PODS, json=pod("a", node="n1", grace=20))
    response = await api.delete(f"{PODS}/a")
    assert response.status == 200
    held = await response.json()
    assert held["kind"] == "Pod" and held["metadata"]["deletionGracePeriodSeconds"] == 20
    assert (await api.get(f"{PODS}/a")).status == 200
    # As kubectl --grace-period=3 sends it: in DeleteOptions; then as a query parameter.
    response = await api.delete(f"{PODS}/a", json={"kind": "DeleteOptions", "apiVersion": "v1",
                                                    "gracePeriodSeconds": 3})
    assert (await response.json())["metadata"]["deletionGracePeriodSeconds"] == 3
    assert (await api.delete(f"{PODS}/a", params={"gracePeriodSeconds": "0"})).status == 200
    assert (await api.get(f"{PODS}/a")).status == 404


async def test_bad_grace_periods_are_400(api: Api) -> None:
    await api.post(PODS, json=pod("a", node="n1"))
    assert (await api.delete(f"{PODS}/a", params={"gracePeriodSeconds": "soon"})).status == 400
    assert (await api.delete(f"{PODS}/a", json={"gracePeriodSeconds": "5"})).status == 400
    assert "deletionTimestamp" not in (await (await api.get(f"{PODS}/a")).json())["metadata"]


async def test_binding_and_eviction(api: Api) -> None:
    await api.post(PODS, json=pod("a"))
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    response = await api.post(f"{PODS}/a/binding", json=binding)
    assert response.status == 201 and (await response.json())["status"] == "Success"
    assert (await (await api.get(f"{PODS}/a")).json())["spec"]["nodeName"] == "n1"
    again = await api.post(f"{PODS}/a/binding", json=binding)
    assert again.status == 409 and (await again.json())["reason"] == "Conflict"
    assert (await api.get(f"{PODS}/a/binding")).status == 405
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "a", "namespace": "default"}}
    response = await api.post(f"{PODS}/a/eviction", json=eviction)
    assert response.status == 201
    assert (await (await api.get(f"{PODS}/a")).json())["metadata"]["deletionGracePeriodSeconds"] == 30


async def test_status_subresource_writes_status_only(api: Api) -> None:
    await api.post(PODS, json=pod("a", node="n1"))
    response = await api.patch(f"{PODS}/a/status", data=json.dumps(
        {"status": {"phase": "Running", "podIP": "127.0.0.5"}, "spec": {"nodeName": "n2"}}), headers=MERGE)
    out = await response.json()
    assert response.status == 200 and out["status"]["phase"] == "Running" and out["spec"]["nodeName"] == "n1"
    assert out["status"]["qosClass"] == "BestEffort"


async def test_field_selectors_in_list_and_watch(api: Api) -> None:
    await api.post(PODS, json=pod("bound", node="n1"))
    await api.post(PODS, json=pod("later"))
    listed = await (await api.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName=n1"})).json()
    assert [p["metadata"]["name"] for p in listed["items"]] == ["bound"]
    bad = await api.get(PODS, params={"fieldSelector": "spec.image=x"})
    assert bad.status == 400 and "field label not supported: spec.image" in (await bad.json())["message"]
    watch = await api.get("/api/v1/pods", params={"watch": "true", "fieldSelector": "spec.nodeName=n1",
                                                  "timeoutSeconds": "5"})
    assert (await next_event(watch))["object"]["metadata"]["name"] == "bound"
    # Binding "later" to n1 makes it match: ADDED, as the node's watch must see it.
    await api.post(f"{PODS}/later/binding", json={"target": {"name": "n1"}})
    event = await next_event(watch)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "later")
    phase = await api.get(PODS, params={"watch": "true", "fieldSelector": "status.phase=Running",
                                        "timeoutSeconds": "5"})
    await api.patch(f"{PODS}/later/status", data='{"status":{"phase":"Running"}}', headers=MERGE)
    assert (await next_event(phase))["type"] == "ADDED"
    await api.patch(f"{PODS}/later/status", data='{"status":{"phase":"Succeeded"}}', headers=MERGE)
    assert (await next_event(phase))["type"] == "DELETED"
    watch.close()
    phase.close()
    await asyncio.sleep(0.05)


async def test_discovery_lists_the_pod_subresources(api: Api) -> None:
    doc = await (await api.get("/api/v1")).json()
    names = {r["name"] for r in doc["resources"]}
    assert {f"pods/{s}" for s in ("status", "log", "exec", "attach", "portforward", "binding", "eviction")} <= names
    eviction = next(r for r in doc["resources"] if r["name"] == "pods/eviction")
    assert (eviction["group"], eviction["version"], eviction["kind"]) == ("policy", "v1", "Eviction")


async def test_streaming_subresources_go_to_the_stream_handler(server: Server, api: Api) -> None:
    await api.post(PODS, json=pod("a"))
    response = await api.get(f"{PODS}/a/log")
    assert response.status == 404 and "no node to stream from" in (await response.json())["message"]
    seen: list[str | None] = []

    async def handler(request: web.Request, registry: ObjectRegistry, target: Target) -> web.StreamResponse:
        seen.append(target.subresource)
        return web.Response(text="hello")

    app = create_app(server.registry, token=TOKEN, metrics_registry=CollectorRegistry(), stream_handler=handler)
    async with TestClient(TestServer(app, host="127.0.0.1"), headers=AUTH) as streaming:
        response = await streaming.get(f"{PODS}/a/log")
        assert response.status == 200 and await response.text() == "hello" and seen == ["log"]
