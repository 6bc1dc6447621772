"""Sandboxes with accelerators (docs/dra.md): warm pools keep devices only when the template says so; a Sandbox
waiting for devices says so (Ready ``DevicesUnavailable``), and one being resumed stays Suspended meanwhile."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from turbok.controllers import labels as lb
from turbok.controllers.sandboxstatus import conditions

from .conftest import Cluster, claim, pool, template

Obj = dict[str, Any]
UID = "sandbox-uid"
NO_DEVICE = "0/1 nodes are available: 1 cannot allocate all claims."
#: The DeviceClass of the bodies' claims (on a cluster, tests/kube/test_dra_sandboxes.py publishes its devices).
DEVICE_CLASS = "gpu.turbok.test"


def claim_template(name: str = "one-gpu", device_class: str = DEVICE_CLASS) -> Obj:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": device_class}}]}}}}


def gpu_template(name: str = "tpl", claims: str = "one-gpu", **annotations: str) -> Obj:
    t = template(name)
    spec = t["spec"]["podTemplate"]["spec"]
    spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": claims}]
    spec["containers"][0]["resources"]["claims"] = [{"name": "gpu"}]
    if annotations:
        t["metadata"]["annotations"] = annotations
    return t


def _pool_sandboxes(cluster: Cluster) -> list[Obj]:
    return [s for s in cluster.sandboxes() if lb.WARM_POOL_SANDBOX in (s["metadata"].get("labels") or {})
            and not s["metadata"].get("deletionTimestamp")]


async def test_a_pool_of_a_template_with_claims_keeps_no_devices_unless_told(cluster: Cluster) -> None:
    cluster.create(claim_template())
    cluster.create(gpu_template())
    cluster.create(pool(replicas=2))
    await cluster.wait(lambda: "status" in (cluster.get(cluster.pool, "pool") or {}), what="pool status")
    await cluster.wait(lambda: cluster.events("WarmPoolHoldsNoDevices"), what="the pool's event")
    await asyncio.sleep(0.5)  # nothing comes later either
    assert _pool_sandboxes(cluster) == []
    assert cluster.get(cluster.pool, "pool")["status"]["replicas"] == 0
    (event,) = cluster.events("WarmPoolHoldsNoDevices")
    assert event["involvedObject"]["name"] == "pool" and "turbok.dev/warm-pool-devices=hold" in event["message"]

    # A claim starts cold: its Sandbox (and Pod) name the claims, and take devices only now.
    cluster.create(claim("c"))
    bound = await cluster.wait_condition(cluster.claim, "c", "Ready", timeout=30)
    sandbox = cluster.get(cluster.sandbox, bound["status"]["sandbox"]["name"])
    assert sandbox is not None and sandbox["metadata"]["name"] == "c"  # cold: named like the claim
    assert sandbox["spec"]["podTemplate"]["spec"]["resourceClaims"][0]["name"] == "gpu"

    # The template says hold: the pool fills, its sandboxes holding their devices while warm.
    cluster.patch(cluster.template, "tpl", {"metadata": {"annotations": {lb.WARM_POOL_DEVICES: "hold"}}})
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2, timeout=15, what="the pool filled")
    assert len(cluster.events("WarmPoolHoldsNoDevices")) == 1  # told once

    # And without it again, the warm ones go.
    cluster.patch(cluster.template, "tpl", {"metadata": {"annotations": {lb.WARM_POOL_DEVICES: None}}})
    await cluster.wait(lambda: not _pool_sandboxes(cluster), timeout=15, what="the pool emptied")


async def test_a_pool_of_a_template_without_claims_is_not_touched(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=1))
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 1, what="one warm sandbox")
    assert not cluster.events("WarmPoolHoldsNoDevices")


# ------------------------------------------------------------ the Sandbox's conditions (pure)


def sandbox(mode: str = "Running", suspended: Obj | None = None) -> Obj:
    sb: Obj = {"metadata": {"name": "s", "namespace": "default", "uid": UID}, "spec": {"operatingMode": mode}}
    if suspended is not None:
        sb["status"] = {"conditions": [{"type": "Suspended", **suspended}]}
    return sb


def gpu_pod(scheduled: Obj | None, *, node: str | None = None, claims: bool = True) -> Obj:
    spec: Obj = {"containers": [{"name": "main"}]}
    if claims:
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "s", "ownerReferences": [{"kind": "Sandbox", "uid": UID, "controller": True}]},
            "spec": spec, "status": {"phase": "Pending",
                                     "conditions": [{"type": "PodScheduled", **scheduled}] if scheduled else []}}


def by_type(sb: Obj, pod: Obj | None) -> dict[str, tuple[str, str, str]]:
    wanted, _ = conditions(sb, pod=pod, pod_error=False, errors=[], service=None)
    return {c[0]: (c[1], c[2], c[3]) for c in wanted}


UNSCHEDULABLE = {"status": "False", "reason": "Unschedulable", "message": NO_DEVICE}
WAS_SUSPENDED = {"status": "True", "reason": "PodTerminated", "message": "Pod has been terminated. Sandbox is suspended"}


def test_a_sandbox_waiting_for_devices_says_so() -> None:
    got = by_type(sandbox(), gpu_pod(UNSCHEDULABLE))
    assert got["Ready"] == ("False", "DevicesUnavailable", f"Pod waits for devices: {NO_DEVICE}")
    assert got["Suspended"][:2] == ("False", "NotSuspended")  # never suspended: it is starting, not suspended
    # Unschedulable for another reason (or without claims): upstream's words, unchanged.
    cpu = {**UNSCHEDULABLE, "message": "0/1 nodes are available: 1 Insufficient cpu."}
    assert by_type(sandbox(), gpu_pod(cpu))["Ready"][1] == "DependenciesNotReady"
    assert by_type(sandbox(), gpu_pod(UNSCHEDULABLE, claims=False))["Ready"][1] == "DependenciesNotReady"


def test_a_resumed_sandbox_stays_suspended_until_its_devices_are_free() -> None:
    resumed = sandbox(suspended=WAS_SUSPENDED)
    # Its new Pod not looked at by the scheduler yet: still suspended, as it was.
    assert by_type(resumed, gpu_pod(None))["Suspended"] == ("True", "PodTerminated", WAS_SUSPENDED["message"])
    got = by_type(resumed, gpu_pod(UNSCHEDULABLE))
    assert got["Suspended"] == ("True", "DevicesUnavailable",
                                f"Sandbox stays suspended until its devices are free: {NO_DEVICE}")
    assert got["Ready"][:2] == ("False", "DevicesUnavailable")
    # Said once, it stays said until the Pod is scheduled; then the Sandbox is no longer suspended.
    again = copy.deepcopy(resumed)
    again["status"]["conditions"][0].update(status="True", reason="DevicesUnavailable", message="...")
    assert by_type(again, gpu_pod(UNSCHEDULABLE))["Suspended"][1] == "DevicesUnavailable"
    scheduled = gpu_pod({"status": "True"}, node="node-1")
    assert by_type(again, scheduled)["Suspended"][:2] == ("False", "NotSuspended")
    # A Pod without claims resumes as upstream's: NotSuspended at once.
    assert by_type(resumed, gpu_pod(None, claims=False))["Suspended"][:2] == ("False", "NotSuspended")
