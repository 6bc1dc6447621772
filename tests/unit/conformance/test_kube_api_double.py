"""The Kubernetes API double itself (tests/doubles): the verbs it promises, for any client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.doubles import KubeApiDouble, Reject
from tests.doubles.kube_store import Event, match_fields, match_labels

FIXTURE: dict[str, Any] = {
    "version": {"major": "1", "minor": "35", "gitVersion": "v1.35.0"},
    "resources": [
        {"apiVersion": "v1", "kind": "Namespace", "name": "namespaces", "namespaced": False},
        {"apiVersion": "v1", "kind": "Pod", "name": "pods", "subresources": ["status", "log"]},
        {"apiVersion": "batch/v1", "kind": "Job", "name": "jobs", "subresources": ["status"]},
    ],
    "objects": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "team", "labels": {"app": "x", "tier": "web"}},
         "status": {"phase": "Running"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "team", "labels": {"app": "y"}},
         "status": {"phase": "Pending"}},
    ],
}


@pytest.fixture
def api() -> Iterator[tuple[KubeApiDouble, httpx.Client]]:
    double = KubeApiDouble(FIXTURE, token="t")
    with double.running(), httpx.Client(base_url=double.url, headers={"Authorization": "Bearer t"}) as client:
        yield double, client


def test_selectors() -> None:
    labels = {"app": "x", "tier": "web"}
    assert match_labels("app=x,tier in (web, db)", labels)
    assert not match_labels("app notin (x)", labels) and match_labels("app notin (y)", labels)
    assert match_labels("tier,!canary", labels) and not match_labels("!tier", labels)
    assert match_labels("app!=y", labels) and not match_labels("app==y", labels)
    assert match_fields("status.phase=Running,metadata.name!=b", {"metadata": {"name": "a"}, "status": {"phase": "Running"}})


def test_discovery_and_auth(api: tuple[KubeApiDouble, httpx.Client]) -> None:
    double, client = api
    assert client.get("/apis").json()["groups"][0]["preferredVersion"] == {"groupVersion": "batch/v1", "version": "v1"}
    names = [r["name"] for r in client.get("/api/v1").json()["resources"]]
    assert names == ["namespaces", "pods", "pods/status", "pods/log"]
    assert httpx.get(f"{double.url}/version").status_code == 401


def test_list_get_create_patch_delete(api: tuple[KubeApiDouble, httpx.Client]) -> None:
    double, client = api
    assert [p["metadata"]["name"] for p in client.get("/api/v1/pods", params={"labelSelector": "app in (x,y)"}).json()["items"]] == ["a", "b"]
    assert [p["metadata"]["name"] for p in client.get("/api/v1/namespaces/team/pods", params={"fieldSelector": "status.phase=Pending"}).json()["items"]] == ["b"]
    made = client.post("/apis/batch/v1/namespaces/team/jobs", json={"metadata": {"generateName": "run-"}, "spec": {"parallelism": 1}})
    assert made.status_code == 201 and made.json()["metadata"]["name"].startswith("run-")
    name = made.json()["metadata"]["name"]
    assert client.post("/apis/batch/v1/namespaces/nope/jobs", json={"metadata": {"name": "x"}}).json()["message"] == 'namespaces "nope" not found'
    patched = client.patch(f"/apis/batch/v1/namespaces/team/jobs/{name}", content=json.dumps([{"op": "add", "path": "/spec/suspend", "value": True}]),
                           headers={"Content-Type": "application/json-patch+json"}).json()
    assert patched["spec"] == {"parallelism": 1, "suspend": True}
    status = client.patch(f"/apis/batch/v1/namespaces/team/jobs/{name}/status", json={"spec": {"parallelism": 9}, "status": {"active": 1}},
                          headers={"Content-Type": "application/merge-patch+json"}).json()
    assert status["spec"]["parallelism"] == 1 and status["status"] == {"active": 1}  # the status subresource changes status only
    stale = {**status, "metadata": {**status["metadata"], "resourceVersion": "1"}}
    assert client.put(f"/apis/batch/v1/namespaces/team/jobs/{name}", json=stale).status_code == 409
    assert client.delete("/api/v1/namespaces/team/pods", params={"labelSelector": "app=y"}).status_code == 200
    assert [p["metadata"]["name"] for p in client.get("/api/v1/namespaces/team/pods").json()["items"]] == ["a"]
    assert client.delete("/api/v1/namespaces/team").status_code == 200  # cascades like the namespace controller
    assert double.store.list("v1", "Pod") == [] and double.store.list("batch/v1", "Job") == []
    assert [o["kind"] for o in double.store.created] == ["Job"]


def test_reactors_and_logs(api: tuple[KubeApiDouble, httpx.Client]) -> None:
    double, client = api

    def kubelet(event: Event) -> None:
        assert event.obj is not None
        event.store.set_log(event.namespace or "", event.name or "", "hello\n")

    def webhook(event: Event) -> None:
        if (event.obj or {}).get("spec", {}).get("forbidden"):
            raise Reject(403, "Forbidden", 'admission webhook "v.example.com" denied the request: no')

    double.store.on("created", kubelet, resource="pods")
    double.store.on("create", webhook, resource="pods")
    assert client.post("/api/v1/namespaces/team/pods", json={"metadata": {"name": "c"}}).status_code == 201
    assert client.get("/api/v1/namespaces/team/pods/c/log").text == "hello\n"
    denied = client.post("/api/v1/namespaces/team/pods", json={"metadata": {"name": "d"}, "spec": {"forbidden": True}})
    assert denied.status_code == 403 and "denied the request" in denied.json()["message"]


def test_watch(api: tuple[KubeApiDouble, httpx.Client]) -> None:
    double, client = api
    events: list[tuple[str, str]] = []

    def later() -> None:
        pod = double.store.get("v1", "Pod", "b", "team")
        assert pod is not None
        pod["status"] = {"phase": "Running"}
        double.store.update(pod)

    timer = threading.Timer(0.3, later)
    timer.start()
    with client.stream("GET", "/api/v1/namespaces/team/pods", params={"watch": "1", "timeoutSeconds": "1"}) as resp:
        for line in resp.iter_lines():
            event = json.loads(line)
            events.append((event["type"], event["object"]["metadata"]["name"]))
    timer.join()
    assert events == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "b")]


def test_official_kubernetes_client(tmp_path: Path) -> None:
    from kubernetes import client, config

    double = KubeApiDouble(FIXTURE, token="t")
    with double.running():
        api_client = config.new_client_from_config(str(double.write_kubeconfig(tmp_path / "kc")))  # type: ignore[no-untyped-call]
        pods = client.CoreV1Api(api_client).list_namespaced_pod("team", label_selector="app=x")
        assert [p.metadata.name for p in pods.items if p.metadata] == ["a"]
        api_client.close()
