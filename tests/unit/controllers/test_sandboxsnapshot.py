"""SandboxSnapshot: the trigger it asks a node for, its status mirrored from the node's answer, Sandboxes (and so warm
pools) that start from one, and a Sandbox put back to one. The fake node answers nothing of the Pod Snapshot API:
each test answers as a node does (turbok/node/snapshots.py), through the registry."""

from __future__ import annotations

import pytest

from turbok.api import meta as m
from turbok.api.kinds import POD
from turbok.api.status import Invalid
from turbok.controllers import labels as lb
from turbok.controllers.sandboxsnapshot import (
    PS_NAME,
    RESTORE,
    RESTORE_FROM,
    SNAPSHOT_ANNOTATION,
    trigger_name,
)

from .conftest import Cluster, Obj, sandbox

API = "agents.turbok.dev/v1alpha1"
PS_API = "podsnapshot.gke.io/v1"


def _snapshot(name: str, sandbox_name: str) -> Obj:
    return {"apiVersion": API, "kind": "SandboxSnapshot", "metadata": {"name": name, "namespace": "default"},
            "spec": {"sandboxRef": {"name": sandbox_name}}}


def _kinds(cluster: Cluster) -> tuple[object, object, object]:
    k = cluster.kinds
    return (k.by_kind(API, "SandboxSnapshot"), k.by_kind(PS_API, "PodSnapshotManualTrigger"),
            k.by_kind(PS_API, "PodSnapshot"))


def _answer(cluster: Cluster, trigger: Obj, *, ok: bool, message: str = "", memory: int = 5 << 20) -> None:
    """What a node does with a trigger: a PodSnapshot named like it, Ready; the trigger Complete (or Failed)."""
    _, trigger_kind, ps_kind = _kinds(cluster)
    name = trigger["metadata"]["name"]
    status: Obj = {"conditions": []}
    if ok:
        owners = [dict(r, controller=False) for r in trigger["metadata"].get("ownerReferences") or []]
        ps = cluster.registry.create(ps_kind, {
            "apiVersion": PS_API, "kind": "PodSnapshot",
            "metadata": {"name": name, "namespace": "default", "ownerReferences": owners},
            "spec": {"sourcePod": trigger["spec"]["targetPod"]}}, namespace="default")
        ps["status"] = {"conditions": [], "nodeName": "node-1", "memoryBytes": memory, "diskBytes": 1 << 20}
        m.set_condition(ps["status"], "Ready", True, "SnapshotReady", "memory and disk saved")
        cluster.registry.update(ps_kind, ps, namespace="default", subresource="status")
        m.set_condition(status, "Triggered", True, "Complete", f"PodSnapshot {name} is ready")
        status["snapshotCreated"] = {"name": name}
    else:
        m.set_condition(status, "Triggered", False, "Failed", message)
    body = cluster.registry.get(trigger_kind, "default", name)
    body["status"] = status
    cluster.registry.update(trigger_kind, body, namespace="default", subresource="status")


async def _take(cluster: Cluster, name: str, sandbox_name: str) -> Obj:
    """A SandboxSnapshot of a Ready sandbox, answered by the node: Ready."""
    kind, trigger_kind, _ = _kinds(cluster)
    made = cluster.create(_snapshot(name, sandbox_name))
    trigger = await cluster.wait(lambda: cluster.get(trigger_kind, trigger_name(made)), what="the trigger")
    _answer(cluster, trigger, ok=True)
    return await cluster.wait_condition(kind, name, "Ready", reason="SnapshotReady")


async def test_a_snapshot_of_a_ready_sandbox_asks_its_node_and_mirrors_the_answer(cluster: Cluster) -> None:
    kind, trigger_kind, _ = _kinds(cluster)
    body = sandbox("box")
    body["spec"]["podTemplate"]["metadata"] = {"labels": {"app": "x"}}
    cluster.create(body)
    await cluster.wait_condition(cluster.sandbox, "box", "Ready")
    made = cluster.create(_snapshot("after-setup", "box"))
    trigger = await cluster.wait(lambda: cluster.get(trigger_kind, trigger_name(made)), what="the trigger")
    assert trigger["spec"] == {"targetPod": "box"}
    assert trigger["metadata"]["ownerReferences"] == [lb.owner_ref(made)]
    pending = await cluster.wait_condition(kind, "after-setup", "Ready", "False", reason="Pending")
    stored = cluster.get(cluster.sandbox, "box")
    assert pending["status"]["podTemplate"] == stored["spec"]["podTemplate"], "what a fork runs is recorded"
    assert pending["status"]["podName"] == "box"
    _answer(cluster, trigger, ok=True, memory=7 << 20)
    ready = await cluster.wait_condition(kind, "after-setup", "Ready", reason="SnapshotReady")
    assert ready["status"]["podSnapshotName"] == trigger["metadata"]["name"]
    assert (ready["status"]["memoryBytes"], ready["status"]["nodeName"]) == (7 << 20, "node-1")


async def test_what_the_node_cannot_save_is_said_in_the_ready_condition(cluster: Cluster) -> None:
    kind, trigger_kind, _ = _kinds(cluster)
    cluster.create(sandbox("box"))
    await cluster.wait_condition(cluster.sandbox, "box", "Ready")
    made = cluster.create(_snapshot("s", "box"))
    trigger = await cluster.wait(lambda: cluster.get(trigger_kind, trigger_name(made)), what="the trigger")
    why = "pod x: it has TCP connections open, which runsc 20221219 cannot save; cannot snapshot it now"
    _answer(cluster, trigger, ok=False, message=why)
    failed = await cluster.wait_condition(kind, "s", "Ready", "False", reason="Failed")
    assert m.condition(failed, "Ready")["message"] == why
    assert "podSnapshotName" not in failed["status"]


async def test_a_snapshot_waits_for_its_sandbox_to_exist_and_be_ready(cluster: Cluster) -> None:
    kind, trigger_kind, _ = _kinds(cluster)
    made = cluster.create(_snapshot("early", "later"))
    missing = await cluster.wait_condition(kind, "early", "Ready", "False", reason="SandboxNotFound")
    assert 'Sandbox "later" not found' in m.condition(missing, "Ready")["message"]
    cluster.node.hold.add("later")
    cluster.create(sandbox("later"))
    await cluster.wait_condition(kind, "early", "Ready", "False", reason="SandboxNotReady")
    assert cluster.get(trigger_kind, trigger_name(made)) is None, "no snapshot of a sandbox that is not running"
    cluster.node.run("later")
    await cluster.wait(lambda: cluster.get(trigger_kind, trigger_name(made)), what="the trigger, once Ready")


async def test_a_sandbox_naming_a_snapshot_starts_from_it_once_it_is_ready(cluster: Cluster) -> None:
    kind, trigger_kind, _ = _kinds(cluster)
    cluster.create(sandbox("src"))
    await cluster.wait_condition(cluster.sandbox, "src", "Ready")
    made = cluster.create(_snapshot("snap", "src"))
    trigger = await cluster.wait(lambda: cluster.get(trigger_kind, trigger_name(made)), what="the trigger")
    fork = sandbox("fork")
    fork["spec"]["podTemplate"]["metadata"] = {"annotations": {SNAPSHOT_ANNOTATION: "snap"}}
    cluster.create(fork)
    await cluster.wait(lambda: m.condition(cluster.get(cluster.sandbox, "fork") or {}, "Ready"), what="a status")
    assert cluster.get(POD, "fork") is None, "no Pod until its snapshot is Ready"
    _answer(cluster, trigger, ok=True)
    await cluster.wait_condition(kind, "snap", "Ready")
    pod = await cluster.wait(lambda: cluster.get(POD, "fork"), what="the fork's Pod")
    assert pod["metadata"]["annotations"][PS_NAME] == trigger["metadata"]["name"]
    assert RESTORE_FROM not in pod["metadata"]["annotations"]


async def test_a_restore_is_asked_of_one_pod_only(cluster: Cluster) -> None:
    cluster.create(sandbox("box"))
    await cluster.wait_condition(cluster.sandbox, "box", "Ready")
    snap = await _take(cluster, "v1", "box")
    # What `turbok sandbox restore` does: annotate and suspend; then run again once the Pod is gone.
    cluster.patch(cluster.sandbox, "box", {"metadata": {"annotations": {RESTORE: "v1"}},
                                          "spec": {"operatingMode": "Suspended"}})
    await cluster.wait(lambda: "box" in cluster.node.deleted and cluster.get(POD, "box") is None, what="Pod gone")
    cluster.patch(cluster.sandbox, "box", {"spec": {"operatingMode": "Running"}})
    pod = await cluster.wait(lambda: cluster.get(POD, "box"), what="the new Pod")
    assert pod["metadata"]["annotations"][RESTORE_FROM] == snap["status"]["podSnapshotName"]
    await cluster.wait(lambda: RESTORE not in (cluster.get(cluster.sandbox, "box")["metadata"].get("annotations")
                                               or {}), what="the request consumed")


async def test_a_snapshot_without_a_sandbox_is_refused_with_its_field_and_nothing_is_written(cluster: Cluster) -> None:
    kind, _, _ = _kinds(cluster)
    for spec, field in (({}, "spec.sandboxRef"), ({"sandboxRef": {"name": ""}}, "spec.sandboxRef.name")):
        body = _snapshot("bad", "x")
        body["spec"] = spec
        with pytest.raises(Invalid) as refused:
            cluster.create(body)
        assert [c.field for c in refused.value.causes] == [field]
        assert cluster.get(kind, "bad") is None
