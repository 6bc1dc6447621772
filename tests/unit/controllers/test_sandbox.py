"""Sandbox reconciler: the Pod, PVCs and Service it writes, as upstream's; its status, read from the Pod."""

from __future__ import annotations

import asyncio
import datetime as dt

from turbok.api import meta as m
from turbok.api.kinds import PERSISTENT_VOLUME_CLAIM, POD, SERVICE
from turbok.controllers import labels as lb

from .conftest import Cluster, Obj, sandbox


def _pod(cluster: Cluster, name: str) -> Obj | None:
    return cluster.get(POD, name)


def _soon(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_name_hash_is_fnv1a_32_as_upstream() -> None:
    # FNV-1a 32-bit test vectors (the FNV reference): "" -> 811c9dc5, "a" -> e40c292c, "foobar" -> bf9cf968.
    assert [lb.name_hash(v) for v in ("", "a", "foobar")] == ["811c9dc5", "e40c292c", "bf9cf968"]


async def test_a_sandbox_gets_the_pod_upstream_makes(cluster: Cluster) -> None:
    body = sandbox("web")
    body["metadata"]["labels"] = {lb.CREATED_BY: "python-client"}
    body["spec"]["podTemplate"]["metadata"] = {
        "labels": {"app": "web", lb.SANDBOX_NAME_HASH: "forged", "agents.x-k8s.io/other": "x"},
        "annotations": {"note": "hi", "agents.x-k8s.io/y": "z", lb.SANDBOX_IDENTITY: "someone-else",
                        lb.ON_DELETE: "hibernate"}}
    body["spec"]["podTemplate"]["spec"]["containers"][0]["command"] = ["python3", "-m", "http.server"]
    created = cluster.create(body)
    pod = await cluster.wait(lambda: _pod(cluster, "web"), what="the Pod")
    md = pod["metadata"]
    assert md["labels"] == {"app": "web", lb.SANDBOX_NAME_HASH: lb.name_hash("web"), lb.CREATED_BY: "python-client"}
    assert md["annotations"] == {"note": "hi", lb.PROPAGATED_LABELS: "app", lb.PROPAGATED_ANNOTATIONS: "note",
                                 lb.SANDBOX_IDENTITY: created["metadata"]["uid"]}
    assert md["ownerReferences"] == [lb.owner_ref(created)]
    assert pod["spec"]["containers"][0]["command"] == ["python3", "-m", "http.server"]
    obj = await cluster.wait_condition(cluster.sandbox, "web", "Ready", reason="DependenciesReady")
    assert obj["metadata"]["annotations"][lb.POD_NAME] == "web"
    assert m.condition(obj, "Ready")["message"] == "Pod is Ready"
    ready_pod = cluster.get(POD, "web")
    assert obj["status"]["podIPs"] == [ready_pod["status"]["podIP"]]
    assert obj["status"]["nodeName"] == cluster.node.name
    assert obj["status"]["selector"] == f"{lb.SANDBOX_NAME_HASH}={lb.name_hash('web')}"
    assert m.condition(obj, "PodScheduled")["status"] == "True"
    assert m.condition(obj, "Suspended")["reason"] == "NotSuspended"
    assert "serviceFQDN" not in obj["status"]


async def test_ready_follows_the_pods_phase_and_ready_condition(cluster: Cluster) -> None:
    cluster.node.hold.add("slow")
    cluster.create(sandbox("slow"))
    obj = await cluster.wait_condition(cluster.sandbox, "slow", "Ready", "False", reason="DependenciesNotReady")
    await cluster.wait(lambda: m.condition(cluster.get(cluster.sandbox, "slow"), "Ready")["message"]
                       == "Pod exists with phase: Pending", what="Pending in Ready's message")
    assert "podIPs" not in obj["status"]
    cluster.node.run("slow")
    obj = await cluster.wait_condition(cluster.sandbox, "slow", "Ready", reason="DependenciesReady")
    assert obj["status"]["podIPs"]


async def test_a_crash_looping_container_keeps_ready_false_without_rewriting_status(cluster: Cluster) -> None:
    cluster.create(sandbox("loop"))
    await cluster.wait_condition(cluster.sandbox, "loop", "Ready", reason="DependenciesReady")
    cluster.node.crash_loop("loop", restarts=1)
    obj = await cluster.wait_condition(cluster.sandbox, "loop", "Ready", "False", reason="DependenciesNotReady")
    assert m.condition(obj, "Ready")["message"] == "Pod is Running but not Ready"
    version = obj["metadata"]["resourceVersion"]
    for restarts in (2, 3, 4):  # the node reports each restart; the Sandbox has nothing new to say
        cluster.node.crash_loop("loop", restarts=restarts)
        await asyncio.sleep(0.05)
    assert cluster.get(cluster.sandbox, "loop")["metadata"]["resourceVersion"] == version
    assert cluster.get(POD, "loop")["status"]["containerStatuses"][0]["restartCount"] == 4


async def test_service_true_makes_a_headless_service_like_upstream(cluster: Cluster) -> None:
    body = sandbox("svc", service=True)
    body["spec"]["podTemplate"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": 8888, "name": "jupyter"}, {"containerPort": 53, "protocol": "UDP"}]
    created = cluster.create(body)
    obj = await cluster.wait_condition(cluster.sandbox, "svc", "Ready", reason="DependenciesReady")
    assert m.condition(obj, "Ready")["message"] == "Pod is Ready; Service Exists"
    assert obj["status"]["service"] == "svc"
    assert obj["status"]["serviceFQDN"] == "svc.default.svc.cluster.local"
    service = cluster.get(SERVICE, "svc")
    selector = {lb.SANDBOX_NAME_HASH: lb.name_hash("svc")}
    assert service["metadata"]["labels"] == selector
    assert service["metadata"]["ownerReferences"] == [lb.owner_ref(created)]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == selector
    assert [(p["name"], p["port"], p["protocol"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("p-53-udp", 53, "UDP", 53), ("jupyter", 8888, "TCP", 8888)]
    cluster.patch(cluster.sandbox, "svc", {"spec": {"service": False}})
    await cluster.wait(lambda: cluster.get(SERVICE, "svc") is None, what="the Service deleted")
    await cluster.wait(lambda: "serviceFQDN" not in cluster.get(cluster.sandbox, "svc")["status"],
                       what="status without the Service")


async def test_volume_claim_templates_become_owned_pvcs_mounted_in_the_pod(cluster: Cluster) -> None:
    body = sandbox("vol", volumeClaimTemplates=[{
        "metadata": {"name": "data", "labels": {"tier": "fast"}, "annotations": {"a": "b"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}])
    pod_spec = body["spec"]["podTemplate"]["spec"]
    pod_spec["volumes"] = [{"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    created = cluster.create(body)
    await cluster.wait_condition(cluster.sandbox, "vol", "Ready", reason="DependenciesReady")
    pvc = cluster.get(PERSISTENT_VOLUME_CLAIM, "data-vol")
    assert pvc is not None, "named <template>-<sandbox>, as upstream"
    assert pvc["metadata"]["labels"] == {"tier": "fast", lb.SANDBOX_NAME_HASH: lb.name_hash("vol")}
    # (a cluster's PersistentVolume binder adds its own pv.kubernetes.io/ annotations once it binds the claim)
    assert {k: v for k, v in pvc["metadata"]["annotations"].items() if not k.startswith("pv.kubernetes.io/")} \
        == {"a": "b"}
    assert pvc["metadata"]["ownerReferences"] == [lb.owner_ref(created)]
    assert pvc["spec"]["resources"] == {"requests": {"storage": "1Gi"}}
    # (on a cluster, ServiceAccount admission adds the Pod's projected token volume, kube-api-access-*)
    volumes = [v for v in cluster.get(POD, "vol")["spec"]["volumes"] if not v["name"].startswith("kube-api-access-")]
    assert volumes == [{"name": "scratch", "emptyDir": {}},
                       {"name": "data", "persistentVolumeClaim": {"claimName": "data-vol"}}]


async def test_suspend_annotates_the_pod_hibernate_then_deletes_it_and_resume_makes_it_again(
        cluster: Cluster) -> None:
    created = cluster.create(sandbox("s"))
    await cluster.wait_condition(cluster.sandbox, "s", "Ready", reason="DependenciesReady")
    first_uid = cluster.get(POD, "s")["metadata"]["uid"]
    gate = cluster.node.teardown_gate = asyncio.Event()
    cluster.patch(cluster.sandbox, "s", {"spec": {"operatingMode": "Suspended"}})
    obj = await cluster.wait_condition(cluster.sandbox, "s", "Suspended", "False", reason="PodTerminating")
    assert m.condition(obj, "Ready")["reason"] == "SandboxSuspended"
    assert m.condition(obj, "Ready")["message"] == "Sandbox is suspending"
    gate.set()
    obj = await cluster.wait_condition(cluster.sandbox, "s", "Suspended", reason="PodTerminated")
    assert m.condition(obj, "Ready")["message"] == "Sandbox is suspended"
    assert "podIPs" not in obj["status"] and "nodeName" not in obj["status"]
    assert m.condition(obj, "PodScheduled") is None
    assert cluster.node.deleted["s"]["metadata"]["annotations"][lb.ON_DELETE] == lb.HIBERNATE
    assert cluster.get(POD, "s") is None
    cluster.node.teardown_gate = None
    cluster.patch(cluster.sandbox, "s", {"spec": {"operatingMode": "Running"}})
    await cluster.wait_condition(cluster.sandbox, "s", "Ready", reason="DependenciesReady")
    again = cluster.get(POD, "s")
    assert again["metadata"]["uid"] != first_uid
    assert again["metadata"]["annotations"][lb.SANDBOX_IDENTITY] == created["metadata"]["uid"], \
        "the same identity: the node finds the kept state"
    assert lb.ON_DELETE not in again["metadata"]["annotations"]


async def test_suspend_disk_annotation_asks_the_node_to_keep_the_disk_only(cluster: Cluster) -> None:
    body = sandbox("d")
    body["metadata"]["annotations"] = {lb.SUSPEND: "disk"}
    cluster.create(body)
    await cluster.wait_condition(cluster.sandbox, "d", "Ready")
    cluster.patch(cluster.sandbox, "d", {"spec": {"operatingMode": "Suspended"}})
    await cluster.wait_condition(cluster.sandbox, "d", "Suspended", reason="PodTerminated")
    assert cluster.node.deleted["d"]["metadata"]["annotations"][lb.ON_DELETE] == lb.STOP


async def test_shutdown_time_retain_stops_the_pod_keeping_its_disk_and_keeps_the_object(cluster: Cluster) -> None:
    cluster.create(sandbox("t", shutdownTime=_soon(0.4)))
    await cluster.wait_condition(cluster.sandbox, "t", "Ready")
    obj = await cluster.wait_condition(cluster.sandbox, "t", "Ready", "False", reason="SandboxExpired", timeout=5)
    await cluster.wait(lambda: cluster.get(POD, "t") is None, what="the Pod deleted")
    obj = await cluster.wait(lambda: (o := cluster.get(cluster.sandbox, "t")) and set(o["status"]) == {"conditions"}
                             and o, what="status reduced to its conditions")
    assert m.condition(obj, "Ready")["message"] == "Sandbox has expired"
    assert cluster.node.deleted["t"]["metadata"]["annotations"][lb.ON_DELETE] == lb.STOP
    await asyncio.sleep(0.1)
    assert cluster.get(POD, "t") is None, "an expired Sandbox gets no new Pod"


async def test_shutdown_time_delete_removes_the_object_and_its_pod_with_its_state(cluster: Cluster) -> None:
    cluster.create(sandbox("d", shutdownTime=_soon(0.3), shutdownPolicy="Delete"))
    await cluster.wait_condition(cluster.sandbox, "d", "Ready")
    await cluster.wait(lambda: cluster.get(cluster.sandbox, "d") is None, what="sandbox deleted")
    await cluster.wait(lambda: cluster.get(POD, "d") is None, what="pod deleted")
    assert lb.ON_DELETE not in cluster.node.deleted["d"]["metadata"].get("annotations", {})


async def test_deleting_a_sandbox_deletes_its_pod_through_the_node(cluster: Cluster) -> None:
    cluster.create(sandbox("gone", service=True))
    await cluster.wait_condition(cluster.sandbox, "gone", "Ready")
    gate = cluster.node.teardown_gate = asyncio.Event()
    cluster.registry.delete(cluster.sandbox, "default", "gone")
    pod = await cluster.wait(lambda: (p := cluster.get(POD, "gone")) and p["metadata"].get("deletionTimestamp") and p,
                             what="the Pod deleted gracefully")
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 30
    assert lb.ON_DELETE not in pod["metadata"]["annotations"], "no state is kept for a deleted Sandbox"
    gate.set()
    await cluster.wait(lambda: cluster.get(POD, "gone") is None, what="the Pod gone once the node is done")
    await cluster.wait(lambda: cluster.get(SERVICE, "gone") is None, what="the Service collected")


async def test_deleting_a_suspended_sandbox_leaves_no_pod(cluster: Cluster) -> None:
    cluster.create(sandbox("sus", operatingMode="Suspended"))
    await cluster.wait_condition(cluster.sandbox, "sus", "Suspended", reason="PodTerminated")
    assert cluster.get(POD, "sus") is None, "a Sandbox created suspended never gets a Pod"
    cluster.registry.delete(cluster.sandbox, "default", "sus")
    await asyncio.sleep(0.1)
    assert cluster.pods() == []


async def test_orphan_deletion_keeps_the_pod_without_its_owner(cluster: Cluster) -> None:
    cluster.create(sandbox("orph"))
    await cluster.wait_condition(cluster.sandbox, "orph", "Ready")
    cluster.registry.delete(cluster.sandbox, "default", "orph", propagation="Orphan")
    await cluster.wait(lambda: cluster.get(cluster.sandbox, "orph") is None, what="sandbox gone")
    await cluster.wait(lambda: not cluster.get(POD, "orph")["metadata"].get("ownerReferences"),
                       what="the Pod orphaned")
    assert not cluster.get(POD, "orph")["metadata"].get("deletionTimestamp")


async def test_a_finished_pod_makes_the_sandbox_finished_and_is_not_replaced(cluster: Cluster) -> None:
    for name, code, reason, message in (("ok", 0, "PodSucceeded", "Pod completed successfully"),
                                        ("bad", 3, "PodFailed", "Pod failed")):
        body = sandbox(name)
        body["spec"]["podTemplate"]["spec"]["restartPolicy"] = "Never"
        cluster.create(body)
        await cluster.wait_condition(cluster.sandbox, name, "Ready")
        uid = cluster.get(POD, name)["metadata"]["uid"]
        cluster.node.finish(name, code)
        obj = await cluster.wait_condition(cluster.sandbox, name, "Finished", reason=reason)
        assert m.condition(obj, "Finished")["message"] == message
        assert m.condition(obj, "Ready")["reason"] == reason
        await asyncio.sleep(0.05)
        assert cluster.get(POD, name)["metadata"]["uid"] == uid


async def test_an_image_the_node_will_never_have_is_invalid_configuration(cluster: Cluster) -> None:
    cluster.node.hold.add("img")
    cluster.create(sandbox("img"))
    await cluster.wait(lambda: (cluster.get(POD, "img") or {}).get("spec", {}).get("nodeName"), what="bound")
    cluster.node.wait_for_image("img", "ErrImageNeverPull",
                                'Container image "nope:1" is not present with pull policy of Never')
    obj = await cluster.wait_condition(cluster.sandbox, "img", "Ready", "False", reason="InvalidConfiguration")
    assert "nope:1" in m.condition(obj, "Ready")["message"]
    # A pull that may still work is only not ready yet.
    cluster.node.wait_for_image("img", "ContainerCreating", "")
    await cluster.wait_condition(cluster.sandbox, "img", "Ready", "False", reason="DependenciesNotReady")


async def test_isolation_reported_by_the_node_is_mirrored_to_the_sandbox(cluster: Cluster) -> None:
    cluster.node.hold.add("iso")
    cluster.create(sandbox("iso"))
    await cluster.wait(lambda: (cluster.get(POD, "iso") or {}).get("spec", {}).get("nodeName"), what="bound")
    cluster.node.run("iso", extra_conditions=[{"type": lb.POD_ISOLATED, "status": "True", "reason": "GVisor",
                                               "message": "isolated by gVisor (runsc)"}])
    obj = await cluster.wait_condition(cluster.sandbox, "iso", "Isolated", reason="GVisor")
    assert m.condition(obj, "Isolated")["message"] == "isolated by gVisor (runsc)"


async def test_a_pod_deleted_by_hand_is_made_again_with_the_same_identity(cluster: Cluster) -> None:
    created = cluster.create(sandbox("again"))
    await cluster.wait_condition(cluster.sandbox, "again", "Ready")
    uid = cluster.get(POD, "again")["metadata"]["uid"]
    cluster.registry.delete(POD, "default", "again")
    await cluster.wait(lambda: (p := cluster.get(POD, "again")) and p["metadata"]["uid"] != uid, what="a new Pod")
    pod = cluster.get(POD, "again")
    assert pod["metadata"]["annotations"][lb.SANDBOX_IDENTITY] == created["metadata"]["uid"]
    await cluster.wait_condition(cluster.sandbox, "again", "Ready", reason="DependenciesReady")


async def test_template_label_changes_follow_on_the_running_pod(cluster: Cluster) -> None:
    body = sandbox("rel")
    body["spec"]["podTemplate"]["metadata"] = {"labels": {"keep": "1", "drop": "1"}}
    cluster.create(body)
    await cluster.wait_condition(cluster.sandbox, "rel", "Ready")
    uid = cluster.get(POD, "rel")["metadata"]["uid"]
    cluster.patch(cluster.sandbox, "rel", {"spec": {"podTemplate": {"metadata": {"labels": {"drop": None,
                                                                                            "new": "2"}}}}})
    pod = await cluster.wait(lambda: (p := cluster.get(POD, "rel")) and "new" in p["metadata"]["labels"] and p,
                             what="relabelled")
    assert pod["metadata"]["uid"] == uid
    assert "drop" not in pod["metadata"]["labels"] and pod["metadata"]["labels"]["keep"] == "1"
    assert pod["metadata"]["annotations"][lb.PROPAGATED_LABELS] == "keep,new"


async def test_an_unowned_pod_in_the_way_is_adopted_only_when_it_may_be(cluster: Cluster) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "taken", "namespace": "default"},
           "spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}
    cluster.create(pod)
    cluster.create(sandbox("taken"))
    obj = await cluster.wait_condition(cluster.sandbox, "taken", "Ready", "False", reason="ReconcilerError")
    assert 'cannot adopt unowned pod "taken"' in m.condition(obj, "Ready")["message"]
    cluster.patch(POD, "taken", {"metadata": {"labels": {lb.ADOPTABLE: "true"}}})
    await cluster.wait(lambda: lb.controller_of(cluster.get(POD, "taken")), what="adopted")
    assert lb.controller_of(cluster.get(POD, "taken"))["uid"] == cluster.get(cluster.sandbox, "taken")["metadata"]["uid"]


async def test_a_pod_owned_by_another_controller_is_refused(cluster: Cluster) -> None:
    owner = cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "default"}})
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "victim", "namespace": "default", "ownerReferences": [lb.owner_ref(owner)]},
           "spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}
    cluster.create(pod)
    cluster.create(sandbox("victim"))
    obj = await cluster.wait_condition(cluster.sandbox, "victim", "Ready", "False", reason="ReconcilerError")
    assert f'pod "victim" is owned by ConfigMap/cm (UID: {owner["metadata"]["uid"]})' in m.condition(
        obj, "Ready")["message"]
    assert lb.controller_of(cluster.get(POD, "victim"))["kind"] == "ConfigMap"


async def test_two_pods_controlled_by_one_sandbox_are_multiple_pods(cluster: Cluster) -> None:
    owner = cluster.create(sandbox("owner"))
    await cluster.wait_condition(cluster.sandbox, "owner", "Ready")
    cluster.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "second", "namespace": "default", "ownerReferences": [lb.owner_ref(owner)]},
                    "spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}})
    obj = await cluster.wait_condition(cluster.sandbox, "owner", "Ready", "False", reason="MultiplePods")
    assert m.condition(obj, "Ready")["message"] == ("multiple Pods (2) are controlled by this Sandbox; refusing to "
                                                    "choose or create a Pod")
    await cluster.wait(lambda: len(cluster.events("MultiplePods")) == 1, what="one MultiplePods event")
    cluster.registry.delete(POD, "default", "second")
    await cluster.wait_condition(cluster.sandbox, "owner", "Ready", reason="DependenciesReady")


async def test_a_stale_pod_name_annotation_is_cleared_and_a_pod_made(cluster: Cluster) -> None:
    body = sandbox("stale")
    body["metadata"]["annotations"] = {lb.POD_NAME: "ghost"}
    cluster.create(body)
    await cluster.wait_condition(cluster.sandbox, "stale", "Ready", reason="DependenciesReady")
    assert cluster.get(cluster.sandbox, "stale")["metadata"]["annotations"][lb.POD_NAME] == "stale"
    assert cluster.get(POD, "ghost") is None
