"""The quota controller keeps ResourceQuota status.hard and status.used true as objects come and go."""

from __future__ import annotations

from turbok.api.kinds import RESOURCE_QUOTA

from .conftest import Cluster, Obj, claim, pool, sandbox, template


def quota(hard: dict[str, str]) -> Obj:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "default"},
            "spec": {"hard": hard}}


async def used_becomes(cluster: Cluster, want: dict[str, str]) -> Obj:
    def check() -> Obj | None:
        obj = cluster.get(RESOURCE_QUOTA, "q")
        return obj if obj and (obj.get("status") or {}).get("used") == want else None

    result: Obj = await cluster.wait(check, what=f"status.used == {want}")
    return result


async def test_used_counts_sandboxes_claims_and_compute_and_follows_deletions(cluster: Cluster) -> None:
    cluster.create(quota({"count/sandboxes.agents.x-k8s.io": "5", "count/sandboxclaims.extensions.agents.x-k8s.io": "2",
                          "requests.cpu": "4", "limits.memory": "4Gi", "pods": "3", "example.com/thing": "1"}))
    obj = await used_becomes(cluster, {"count/sandboxclaims.extensions.agents.x-k8s.io": "0",
                                       "count/sandboxes.agents.x-k8s.io": "0", "limits.memory": "0", "pods": "0",
                                       "requests.cpu": "0"})
    assert obj["status"]["hard"]["limits.memory"] == "4Gi"
    small = sandbox("small")
    small["spec"]["podTemplate"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m",
                                                                                     "memory": "512Mi"}}
    cluster.create(small)
    cluster.create(sandbox("plain"))  # the built-in defaults: 1 cpu, 2Gi
    await used_becomes(cluster, {"count/sandboxclaims.extensions.agents.x-k8s.io": "0",
                                 "count/sandboxes.agents.x-k8s.io": "2", "limits.memory": "2560Mi", "pods": "0",
                                 "requests.cpu": "1500m"})
    # A claim from a warm pool: one claim, and the pool's sandboxes count as sandboxes.
    cluster.create(template())
    cluster.create(pool(replicas=1))
    cluster.create(claim())
    await used_becomes(cluster, {"count/sandboxclaims.extensions.agents.x-k8s.io": "1",
                                 "count/sandboxes.agents.x-k8s.io": "4", "limits.memory": "3Gi", "pods": "0",
                                 "requests.cpu": "2500m"})
    cluster.patch(cluster.sandbox, "plain", {"spec": {"operatingMode": "Suspended"}})
    await used_becomes(cluster, {"count/sandboxclaims.extensions.agents.x-k8s.io": "1",
                                 "count/sandboxes.agents.x-k8s.io": "4", "limits.memory": "1Gi", "pods": "0",
                                 "requests.cpu": "1500m"})
    cluster.registry.delete(cluster.sandbox, "default", "plain")
    cluster.registry.delete(cluster.sandbox, "default", "small")
    await used_becomes(cluster, {"count/sandboxclaims.extensions.agents.x-k8s.io": "1",
                                 "count/sandboxes.agents.x-k8s.io": "2", "limits.memory": "512Mi", "pods": "0",
                                 "requests.cpu": "1"})


async def test_a_cold_claim_refused_by_a_quota_says_so_and_gets_its_sandbox_once_there_is_room(
        cluster: Cluster) -> None:
    cluster.create(quota({"count/sandboxes.agents.x-k8s.io": "1"}))
    cluster.create(sandbox("taken"))
    cluster.create(template())
    cluster.create(pool(replicas=0))
    cluster.create(claim())
    obj = await cluster.wait_condition(cluster.claim, "c1", "Ready", "False", reason="ReconcilerError")
    message = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["message"]
    assert "exceeded quota: q" in message
    cluster.registry.delete(cluster.sandbox, "default", "taken")
    await cluster.wait_condition(cluster.claim, "c1", "Ready", timeout=15)
