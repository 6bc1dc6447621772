"""The embedded scheduler: Pods that fit are bound here; those that do not stay Pending, saying why."""

from __future__ import annotations

import copy
from typing import Any

from tests.unit.node.conftest import NodeHarness, condition, pod


def _big(name: str, cpu: str = "3", **spec: Any) -> dict[str, Any]:
    return pod(name, node=None, containers=[{"name": "main", "image": "python-runtime-sandbox",
                                              "resources": {"requests": {"cpu": cpu}}}], **spec)


def _scheduled(p: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = [c for c in p["status"].get("conditions", []) if c["type"] == "PodScheduled"][0]
    return found


async def test_a_pod_without_a_node_is_bound_here_and_runs(node: NodeHarness) -> None:
    node.create(pod("free", node=None))
    got = await node.wait_ready("free")
    assert got["spec"]["nodeName"] == "node1"
    assert condition(got, "PodScheduled") == "True"
    await node.settle()
    [event] = node.events("free", "Scheduled")
    assert event["message"] == "Successfully assigned default/free to node1"
    assert event["source"]["component"] == "default-scheduler"
    assert node.reasons("free")[0] == "Scheduled"


async def test_a_pod_that_does_not_fit_stays_pending_until_room_is_made(node: NodeHarness) -> None:
    node.create(_big("first"))
    await node.wait_ready("first")
    node.create(_big("second"))
    got = await node.wait_pod("second", lambda p: condition(p, "PodScheduled") == "False")
    cond = _scheduled(got)
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == "0/1 nodes are available: 1 Insufficient cpu."
    assert got["status"]["phase"] == "Pending" and not got["spec"].get("nodeName")
    await node.settle()
    [event] = node.events("second", "FailedScheduling")
    assert event["type"] == "Warning" and event["message"] == cond["message"]
    node.delete("first")
    got = await node.wait_ready("second")
    assert got["spec"]["nodeName"] == "node1"


async def test_several_reasons_and_too_many_pods(node: NodeHarness) -> None:
    node.create(pod("huge", node=None, containers=[{"name": "main", "image": "python-runtime-sandbox",
                                                     "resources": {"requests": {"cpu": "64", "memory": "1Ti"}}}]))
    got = await node.wait_pod("huge", lambda p: condition(p, "PodScheduled") == "False")
    assert _scheduled(got)["message"] == "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."


async def test_node_selector_and_other_schedulers(node: NodeHarness) -> None:
    node.create(pod("picky", node=None, nodeSelector={"disk": "ssd"}))
    node.create(pod("theirs", node=None, schedulerName="someone-else"))
    got = await node.wait_pod("picky", lambda p: condition(p, "PodScheduled") == "False")
    assert _scheduled(got)["message"] == \
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    await node.settle()
    theirs = node.pod("theirs") or {}
    assert not theirs["spec"].get("nodeName") and condition(theirs, "PodScheduled") is None
    node.registry.patch(node.kinds.by_kind("v1", "Node"), "", "node1", "application/merge-patch+json",
                        {"metadata": {"labels": {"disk": "ssd"}}})
    await node.wait_ready("picky")


async def test_requests_default_to_limits_and_count_init_containers(node: NodeHarness) -> None:
    limited = {"name": "main", "image": "python-runtime-sandbox", "resources": {"limits": {"cpu": "3"}}}
    node.create(pod("lim", node=None, containers=[limited]))
    await node.wait_ready("lim")
    init = {"name": "init", "image": "python-runtime-sandbox", "resources": {"requests": {"cpu": "2"}}}
    node.create(pod("initbig", node=None, initContainers=[init]))
    got = await node.wait_pod("initbig", lambda p: condition(p, "PodScheduled") == "False")
    assert "Insufficient cpu" in _scheduled(got)["message"]


async def test_a_pod_waiting_for_its_claim_is_bound_once_the_claim_is(node: NodeHarness) -> None:
    node.create(pod("withpvc", node=None, volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]))
    got = await node.wait_pod("withpvc", lambda p: condition(p, "PodScheduled") == "False")
    assert _scheduled(got)["message"] == '0/1 nodes are available: persistentvolumeclaim "data" not found.'
    pvc_kind = node.kinds.by_kind("v1", "PersistentVolumeClaim")
    node.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": "data", "namespace": "default"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    got = await node.wait_pod("withpvc", lambda p: _scheduled(p)["message"] ==
                              "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.")
    claim = node.registry.get(pvc_kind, "default", "data")
    assert claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node1"
    claim["status"] = {"phase": "Bound"}
    node.registry.update(pvc_kind, claim, namespace="default", subresource="status")
    got = await node.wait_pod("withpvc", lambda p: p["spec"].get("nodeName") == "node1")
    assert condition(got, "PodScheduled") == "True"


async def test_a_pod_made_on_this_node_that_does_not_fit_is_rejected_as_the_kubelet_rejects_it(
        node: NodeHarness) -> None:
    node.create(_big("first"))
    await node.wait_ready("first")
    # made with spec.nodeName set: no scheduler looked at it, so the node's admission does
    direct = pod("direct", containers=[{"name": "main", "image": "python-runtime-sandbox",
                                         "resources": {"requests": {"cpu": "3"}}}])
    node.create(copy.deepcopy(direct))
    got = await node.wait_phase("direct", "Failed")
    assert got["status"]["reason"] == "OutOfcpu"
    assert got["status"]["message"] == ("Pod was rejected: Node didn't have enough resource: cpu, requested: 3000, "
                                        "used: 3000, capacity: 4000")
    await node.settle()
    [event] = node.events("direct", "OutOfcpu")
    assert event["type"] == "Warning"
    assert not any(c[0] == "run_pod_sandbox" and "direct" in " ".join(c) for c in node.runtime.calls), "never booted"
    # one that fits beside the first runs; one whose node selector the Node does not match is rejected
    node.create(pod("fits", containers=[{"name": "main", "image": "python-runtime-sandbox",
                                         "resources": {"requests": {"cpu": "500m"}}}]))
    await node.wait_ready("fits")
    node.create(pod("picky", nodeSelector={"disk": "ssd"}))
    got = await node.wait_phase("picky", "Failed")
    assert (got["status"]["reason"], got["status"]["message"]) == ("NodeAffinity",
                                                                    "Pod was rejected: Predicate NodeAffinity failed")
    # a rejected Pod holds nothing: once the first is gone, the same Pod made again runs
    node.delete("first")
    node.delete("direct")
    await node.wait_gone("first")
    await node.wait_gone("direct")
    node.create(direct)
    await node.wait_ready("direct")
