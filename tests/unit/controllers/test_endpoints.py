"""Endpoints and EndpointSlices follow a Service's selector over the Pods the node runs, as kube's controllers."""

from __future__ import annotations

import asyncio

from turbok.api.kinds import ENDPOINT_SLICE, ENDPOINTS, POD, SERVICE

from .conftest import Cluster, Obj, sandbox


def _service(name: str, selector: dict[str, str] | None, *, headless: bool = False, **spec: object) -> Obj:
    body: Obj = {"ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}], **spec}
    if selector is not None:
        body["selector"] = selector
    if headless:
        body["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": {"team": "a"}}, "spec": body}


def _web(name: str) -> Obj:
    body = sandbox(name)
    body["spec"]["podTemplate"]["metadata"] = {"labels": {"app": "web"}}
    body["spec"]["podTemplate"]["spec"]["containers"][0]["ports"] = [{"name": "web", "containerPort": 8080}]
    return body


def _slices(cluster: Cluster, service: str) -> list[Obj]:
    return [s for s in cluster.registry.list(ENDPOINT_SLICE, "default").items
            if s["metadata"]["labels"].get("kubernetes.io/service-name") == service]


async def test_endpoints_and_slices_list_ready_pods_with_their_resolved_ports(cluster: Cluster) -> None:
    for name in ("w1", "w2"):
        cluster.create(_web(name))
        await cluster.wait_condition(cluster.sandbox, name, "Ready")
    svc = cluster.create(_service("web", {"app": "web"}))
    eps = await cluster.wait(lambda: (e := cluster.get(ENDPOINTS, "web")) and len(
        (e.get("subsets") or [{}])[0].get("addresses") or []) == 2 and e, what="two ready addresses")
    assert eps["metadata"]["labels"] == {"team": "a", "endpoints.kubernetes.io/managed-by": "endpoint-controller"}
    assert "endpoints.kubernetes.io/last-change-trigger-time" in eps["metadata"]["annotations"]
    assert "ownerReferences" not in eps["metadata"]
    [subset] = eps["subsets"]
    assert subset["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    pods = {p["metadata"]["name"]: p for p in cluster.pods()}
    assert sorted((a["ip"], a["targetRef"]["name"], a["nodeName"]) for a in subset["addresses"]) == sorted(
        (pods[n]["status"]["podIP"], n, cluster.node.name) for n in ("w1", "w2"))
    [eps_slice] = await cluster.wait(lambda: (s := _slices(cluster, "web")) and len(s[0]["endpoints"]) == 2 and s,
                                     what="a slice with two endpoints")
    md = eps_slice["metadata"]
    assert md["name"].startswith("web-") and len(md["name"]) == len("web-") + 5
    assert md["labels"] == {"team": "a", "kubernetes.io/service-name": "web",
                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert md["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                      "uid": svc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    assert eps_slice["addressType"] == "IPv4"
    assert eps_slice["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    first = next(e for e in eps_slice["endpoints"] if e["targetRef"]["name"] == "w1")
    assert first["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert first["addresses"] == [pods["w1"]["status"]["podIP"]] and first["nodeName"] == cluster.node.name


async def test_a_not_ready_pod_moves_to_not_ready_addresses_and_a_gone_one_leaves(cluster: Cluster) -> None:
    cluster.create(_web("w1"))
    await cluster.wait_condition(cluster.sandbox, "w1", "Ready")
    cluster.create(_service("web", {"app": "web"}, headless=True))
    await cluster.wait(lambda: (cluster.get(ENDPOINTS, "web") or {}).get("subsets"), what="endpoints")
    assert cluster.get(ENDPOINTS, "web")["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    cluster.node.crash_loop("w1", restarts=1)
    eps = await cluster.wait(lambda: (e := cluster.get(ENDPOINTS, "web")) and e["subsets"][0].get(
        "notReadyAddresses") and e, what="the address not ready")
    assert "addresses" not in eps["subsets"][0]
    await cluster.wait(lambda: _slices(cluster, "web")[0]["endpoints"][0]["conditions"]["ready"] is False,
                       what="the slice's endpoint not ready")
    cluster.registry.delete(cluster.sandbox, "default", "w1")
    await cluster.wait(lambda: cluster.get(POD, "w1") is None, what="the Pod gone")
    await cluster.wait(lambda: "subsets" not in cluster.get(ENDPOINTS, "web"), what="no subsets")
    await cluster.wait(lambda: _slices(cluster, "web")[0]["endpoints"] == [], what="an empty slice")


async def test_a_service_without_a_selector_is_left_alone_and_a_deleted_one_takes_its_endpoints(
        cluster: Cluster) -> None:
    cluster.create(_service("manual", None))
    cluster.create(_service("web", {"app": "web"}))
    await cluster.wait(lambda: cluster.get(ENDPOINTS, "web"), what="endpoints of the selecting Service")
    await asyncio.sleep(0.1)
    assert cluster.get(ENDPOINTS, "manual") is None and _slices(cluster, "manual") == []
    cluster.registry.delete(SERVICE, "default", "web")
    await cluster.wait(lambda: cluster.get(ENDPOINTS, "web") is None, what="endpoints deleted")
    await cluster.wait(lambda: _slices(cluster, "web") == [], what="slices collected")


async def test_a_sandbox_service_gets_endpoints_for_its_pod(cluster: Cluster) -> None:
    body = sandbox("nb", service=True)
    body["spec"]["podTemplate"]["spec"]["containers"][0]["ports"] = [{"containerPort": 8888}]
    cluster.create(body)
    await cluster.wait_condition(cluster.sandbox, "nb", "Ready")
    ip = cluster.get(POD, "nb")["status"]["podIP"]
    eps = await cluster.wait(lambda: (e := cluster.get(ENDPOINTS, "nb")) and e.get("subsets") and e, what="endpoints")
    assert eps["subsets"] == [{"addresses": [{"ip": ip, "nodeName": cluster.node.name, "targetRef": {
        "kind": "Pod", "namespace": "default", "name": "nb", "uid": cluster.get(POD, "nb")["metadata"]["uid"]}}],
        "ports": [{"name": "p-8888-tcp", "port": 8888, "protocol": "TCP"}]}]


async def test_a_deleted_service_leaves_the_index_and_pods_still_reach_the_others(cluster: Cluster) -> None:
    cluster.create(_service("web", {"app": "web"}))
    cluster.create(_service("other", {"app": "web"}))
    await cluster.wait(lambda: cluster.get(ENDPOINTS, "web") and cluster.get(ENDPOINTS, "other"), what="endpoints")
    cluster.registry.delete(SERVICE, "default", "web")
    await cluster.wait(lambda: cluster.get(ENDPOINTS, "web") is None, what="endpoints of the deleted Service gone")
    cluster.create(_web("w1"))  # its Pod's change once failed on the deleted Service, and "other" never heard
    await cluster.wait_condition(cluster.sandbox, "w1", "Ready")
    eps = await cluster.wait(lambda: (e := cluster.get(ENDPOINTS, "other")) and e.get("subsets") and e,
                             what="the Pod in the other Service's endpoints")
    assert [a["targetRef"]["name"] for a in eps["subsets"][0]["addresses"]] == ["w1"]
