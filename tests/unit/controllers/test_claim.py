"""Claim reconciler: warm adoption, cold start, policies, reasons and lifecycle, as upstream."""

from __future__ import annotations

import datetime as dt

from turbok.api import meta as m
from turbok.api.kinds import POD
from turbok.controllers import labels as lb

from .conftest import Cluster, claim, pool, sandbox, template


async def _ready_pool(cluster: Cluster, replicas: int = 2, **template_spec: object) -> None:
    cluster.create(template(**template_spec))
    cluster.create(pool(replicas=replicas))
    await cluster.wait(lambda: cluster.get(cluster.pool, "pool").get("status", {}).get("readyReplicas") == replicas,
                       what="pool ready")


def _later(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_warm_adoption_moves_ownership_and_strips_pool_labels(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    pods_before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.pods()}
    started_before = list(cluster.node.started)
    body = claim("c")
    body["metadata"]["labels"] = {lb.CREATED_BY: "python-client"}
    created = cluster.create(body)
    obj = await cluster.wait_condition(cluster.claim, "c", "Ready", reason="DependenciesReady")
    name = obj["status"]["sandbox"]["name"]
    assert name.startswith("pool-")
    sb = cluster.get(cluster.sandbox, name)
    labels = sb["metadata"]["labels"]
    assert lb.WARM_POOL_SANDBOX not in labels and lb.TEMPLATE_HASH not in labels
    assert labels[lb.LAUNCH_TYPE] == "warm"
    assert labels[lb.CLAIM_UID] == created["metadata"]["uid"]
    assert labels[lb.CREATED_BY] == "python-client"
    assert sb["metadata"]["ownerReferences"] == [lb.owner_ref(created)]
    assert sb["metadata"]["annotations"][lb.POD_NAME] == name
    assert m.condition(obj, "Ready")["observedGeneration"] == 1
    pod_labels = sb["spec"]["podTemplate"]["metadata"]["labels"]
    assert lb.WARM_POOL_SANDBOX not in pod_labels and lb.TEMPLATE_HASH not in pod_labels
    assert pod_labels[lb.CLAIM_UID] == created["metadata"]["uid"]
    assert pod_labels[lb.TEMPLATE_REF_HASH] == lb.name_hash("tpl")
    assert pod_labels[lb.CREATED_BY] == "python-client"
    # The running Pod is kept (no boot): relabelled as upstream's updatePodMetadata does, owned by its Sandbox.
    pod = await cluster.wait(lambda: (p := cluster.get(POD, name)) and lb.WARM_POOL_SANDBOX not in p["metadata"][
        "labels"] and p, what="the Pod relabelled")
    assert pod["metadata"]["uid"] == pods_before[name]
    assert name not in cluster.node.started[len(started_before):]  # (the pool's refill may have started since)
    assert pod["metadata"]["labels"][lb.TEMPLATE_REF_HASH] == lb.name_hash("tpl")
    assert pod["metadata"]["labels"][lb.CREATED_BY] == "python-client"
    assert pod["metadata"]["ownerReferences"] == [lb.owner_ref(sb)]
    assert pod["metadata"]["annotations"][lb.SANDBOX_IDENTITY] == sb["metadata"]["uid"]


async def test_claim_with_env_starts_cold_under_allowed_policy(cluster: Cluster) -> None:
    await _ready_pool(cluster, envVarsInjectionPolicy="Allowed")
    cluster.create(claim("envy", env=[{"name": "TOKEN", "value": "abc"}]))
    obj = await cluster.wait_condition(cluster.claim, "envy", "Ready", reason="DependenciesReady")
    assert obj["status"]["sandbox"]["name"] == "envy", "a cold sandbox takes the claim's name"
    sb = cluster.get(cluster.sandbox, "envy")
    assert sb["metadata"]["labels"][lb.LAUNCH_TYPE] == "cold"
    assert cluster.get(POD, "envy")["spec"]["containers"][0]["env"] == [{"name": "TOKEN", "value": "abc"}]


async def test_env_is_rejected_when_the_template_disallows_it(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    cluster.create(claim("no-env", env=[{"name": "A", "value": "1"}]))
    obj = await cluster.wait_condition(cluster.claim, "no-env", "Ready", "False", reason="EnvVarsInjectionRejected")
    assert "not allowed by the template policy" in m.condition(obj, "Ready")["message"]
    assert cluster.get(cluster.sandbox, "no-env") is None


async def test_a_claim_refused_by_the_template_policy_is_served_once_the_template_allows_it(
        cluster: Cluster) -> None:
    await _ready_pool(cluster, replicas=1)
    cluster.create(claim("later", env=[{"name": "A", "value": "1"}]))
    await cluster.wait_condition(cluster.claim, "later", "Ready", "False", reason="EnvVarsInjectionRejected")
    # the template changing wakes the claim (no timer: a refusal for the template's policy is final until then)
    cluster.patch(cluster.template, "tpl", {"spec": {"envVarsInjectionPolicy": "Allowed"}})
    await cluster.wait_condition(cluster.claim, "later", "Ready", reason="DependenciesReady")


async def test_overriding_an_env_var_is_refused_under_allowed_but_not_under_overrides(cluster: Cluster) -> None:
    tpl = template()
    tpl["spec"]["podTemplate"]["spec"]["containers"][0]["env"] = [{"name": "MODE", "value": "a"}]
    tpl["spec"]["envVarsInjectionPolicy"] = "Allowed"
    cluster.create(tpl)
    cluster.create(pool(replicas=0))
    cluster.create(claim("o1", env=[{"name": "MODE", "value": "b"}]))
    await cluster.wait_condition(cluster.claim, "o1", "Ready", "False", reason="ReconcilerError")
    cluster.patch(cluster.template, "tpl", {"spec": {"envVarsInjectionPolicy": "Overrides"}})
    cluster.create(claim("o2", env=[{"name": "MODE", "value": "b"}]))
    await cluster.wait_condition(cluster.claim, "o2", "Ready", reason="DependenciesReady")
    env = cluster.get(cluster.sandbox, "o2")["spec"]["podTemplate"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "MODE", "value": "b"}]


async def test_missing_pool_is_reported_then_adopted_when_it_appears(cluster: Cluster) -> None:
    cluster.create(claim("early"))
    await cluster.wait_condition(cluster.claim, "early", "Ready", "False", reason="WarmPoolNotFound")
    cluster.create(template())
    cluster.create(pool(replicas=1))
    await cluster.wait_condition(cluster.claim, "early", "Ready", reason="DependenciesReady")


async def test_missing_template_with_an_empty_pool_is_template_not_found(cluster: Cluster) -> None:
    cluster.create(pool(replicas=1, template_name="ghost"))
    cluster.create(claim("c"))
    obj = await cluster.wait_condition(cluster.claim, "c", "Ready", "False", reason="TemplateNotFound")
    assert m.condition(obj, "Ready")["message"] == 'SandboxTemplate "ghost" not found'


async def test_empty_pool_means_a_cold_start_named_like_the_claim(cluster: Cluster) -> None:
    await _ready_pool(cluster, replicas=0)
    cluster.create(claim("coldone"))
    obj = await cluster.wait_condition(cluster.claim, "coldone", "Ready")
    assert obj["status"]["sandbox"]["name"] == "coldone"


async def test_a_foreign_sandbox_with_the_claims_name_is_a_reconciler_error(cluster: Cluster) -> None:
    await _ready_pool(cluster, replicas=0)
    cluster.create(sandbox("taken"))
    cluster.create(claim("taken"))
    obj = await cluster.wait_condition(cluster.claim, "taken", "Ready", "False", reason="ReconcilerError")
    assert "not controlled by claim" in m.condition(obj, "Ready")["message"]


async def test_additional_pod_metadata_is_validated_as_upstream(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    refused = {
        "agents": ({"labels": {"agents.x-k8s.io/x": "y"}}, 'label domain "agents.x-k8s.io" is not in the allowlist'),
        "plain": ({"labels": {"team": "a"}}, 'label "team" must have a domain prefix'),
        "other": ({"labels": {"team.example.com/owner": "ana"}}, 'label domain "team.example.com" is not in the '
                  "allowlist"),
        "router": ({"labels": {"app": "sandbox-router"}}, 'restricted system label value: "app"="sandbox-router"'),
        "value": ({"labels": {"sandbox.users.io/x": "bad value"}}, 'invalid label value: "bad value"'),
        "kube": ({"annotations": {"kubernetes.io/x": "y"}}, 'restricted system domain: "kubernetes.io/x"'),
        "key": ({"annotations": {"a/b/c": "y"}}, 'invalid annotation key: "a/b/c"'),
    }
    for name, (metadata, _) in refused.items():
        cluster.create(claim(f"meta-{name}", additionalPodMetadata=metadata))
    for name, (_, words) in refused.items():
        obj = await cluster.wait_condition(cluster.claim, f"meta-{name}", "Ready", "False", reason="InvalidMetadata")
        message = m.condition(obj, "Ready")["message"]
        assert message.startswith("invalid additionalPodMetadata: failed to validate ") and words in message, message
        assert "sandbox" not in obj.get("status", {}), "nothing adopted for an invalid claim"


async def test_additional_pod_metadata_lands_on_the_sandbox_and_its_pod(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    cluster.create(claim("meta2", additionalPodMetadata={
        "labels": {"sandbox.users.io/owner": "ana"},
        "annotations": {"example.com/note": "x", lb.SAFE_TO_EVICT: "false"}}))
    obj = await cluster.wait_condition(cluster.claim, "meta2", "Ready")
    name = obj["status"]["sandbox"]["name"]
    sb = cluster.get(cluster.sandbox, name)
    assert sb["spec"]["podTemplate"]["metadata"]["labels"]["sandbox.users.io/owner"] == "ana"
    pod = await cluster.wait(lambda: (p := cluster.get(POD, name)) and "sandbox.users.io/owner" in p["metadata"][
        "labels"] and p, what="the label on the Pod")
    assert pod["metadata"]["annotations"]["example.com/note"] == "x"
    assert pod["metadata"]["annotations"][lb.SAFE_TO_EVICT] == "false"


async def test_volume_claim_templates_disallowed_by_default(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    vct = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                   "resources": {"requests": {"storage": "1Gi"}}}}
    cluster.create(claim("vol", volumeClaimTemplates=[vct]))
    obj = await cluster.wait_condition(cluster.claim, "vol", "Ready", "False", reason="VolumeClaimTemplatesError")
    assert "disallowed by the template" in m.condition(obj, "Ready")["message"]


async def test_deleting_a_claim_deletes_its_sandbox(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    cluster.create(claim("bye"))
    name = (await cluster.wait_condition(cluster.claim, "bye", "Ready"))["status"]["sandbox"]["name"]
    cluster.registry.delete(cluster.claim, "default", "bye")
    await cluster.wait(lambda: cluster.get(cluster.sandbox, name) is None, what="sandbox collected")


async def test_shutdown_time_with_delete_policy_deletes_claim_and_sandbox(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    cluster.create(claim("ttl", lifecycle={"shutdownTime": _later(0.4), "shutdownPolicy": "Delete"}))
    name = (await cluster.wait_condition(cluster.claim, "ttl", "Ready"))["status"]["sandbox"]["name"]
    await cluster.wait(lambda: cluster.get(cluster.claim, "ttl") is None, timeout=5, what="claim deleted")
    await cluster.wait(lambda: cluster.get(cluster.sandbox, name) is None, what="sandbox collected")


async def test_shutdown_time_with_retain_keeps_claim_and_deletes_sandbox(cluster: Cluster) -> None:
    await _ready_pool(cluster)
    cluster.create(claim("keep", lifecycle={"shutdownTime": _later(0.4)}))
    name = (await cluster.wait_condition(cluster.claim, "keep", "Ready"))["status"]["sandbox"]["name"]
    obj = await cluster.wait_condition(cluster.claim, "keep", "Ready", "False", reason="ClaimExpired", timeout=5)
    assert "sandbox" not in obj["status"]
    await cluster.wait(lambda: cluster.get(cluster.sandbox, name) is None, what="sandbox deleted")
    assert cluster.get(cluster.claim, "keep") is not None


async def test_ttl_after_finished_expires_a_finished_claim(cluster: Cluster) -> None:
    tpl = template()
    tpl["spec"]["podTemplate"]["spec"]["restartPolicy"] = "Never"
    cluster.create(tpl)
    cluster.create(pool(replicas=0))
    cluster.create(claim("job", lifecycle={"ttlSecondsAfterFinished": 0, "shutdownPolicy": "Delete"}))
    await cluster.wait_condition(cluster.claim, "job", "Ready")
    cluster.node.finish("job", 0)
    await cluster.wait(lambda: cluster.get(cluster.claim, "job") is None, what="finished claim deleted")


async def test_sandbox_expiry_is_forwarded_as_sandbox_expired(cluster: Cluster) -> None:
    await _ready_pool(cluster, replicas=0)
    cluster.create(claim("fw"))
    await cluster.wait_condition(cluster.claim, "fw", "Ready")
    cluster.patch(cluster.sandbox, "fw", {"spec": {"shutdownTime": _later(-1)}})
    obj = await cluster.wait_condition(cluster.claim, "fw", "Ready", "False", reason="SandboxExpired")
    assert "expired independently" in m.condition(obj, "Ready")["message"]


async def test_cluster_scoped_changes_do_not_trouble_the_claim_controller(cluster: Cluster) -> None:
    await _ready_pool(cluster, replicas=1)
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    cluster.create(claim("after-ns"))
    await cluster.wait_condition(cluster.claim, "after-ns", "Ready")


async def test_adoption_and_cold_start_are_recorded_as_events(cluster: Cluster) -> None:
    await _ready_pool(cluster, replicas=1)
    cluster.create(claim("warm"))
    cluster.create(claim("cold", env=[{"name": "A", "value": "1"}]))
    cluster.patch(cluster.template, "tpl", {"spec": {"envVarsInjectionPolicy": "Allowed"}})
    await cluster.wait_condition(cluster.claim, "warm", "Ready")
    await cluster.wait_condition(cluster.claim, "cold", "Ready")
    event_kind = cluster.kinds.by_kind("v1", "Event")

    def reasons(name: str) -> set[str]:
        return {e["reason"] for e in cluster.registry.list(event_kind, "default").items
                if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "SandboxClaim"}

    await cluster.wait(lambda: "SandboxAdopted" in reasons("warm"), what="adoption event")
    await cluster.wait(lambda: "SandboxProvisioned" in reasons("cold"), what="provisioning event")


async def test_sandboxes_from_a_template_get_upstreams_secure_defaults(cluster: Cluster) -> None:
    await _ready_pool(cluster, replicas=1)
    [warm] = cluster.sandboxes()
    spec = warm["spec"]["podTemplate"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["dnsPolicy"] == "None" and spec["dnsConfig"] == {"nameservers": ["8.8.8.8", "1.1.1.1"]}
    assert cluster.get(POD, warm["metadata"]["name"])["spec"]["dnsPolicy"] == "None"
