"""The quota controller keeps ResourceQuota status.hard and status.used true as objects come and go."""

from __future__ import annotations

from decimal import Decimal

from turbok.api import quota as q
from turbok.api.kinds import RESOURCE_QUOTA
from turbok.api.limitrange import BUILTIN_DEFAULT_REQUESTS
from turbok.api.quantity import parse_quantity

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


async def test_used_counts_sandboxes_claims_and_the_compute_of_their_pods_once(cluster: Cluster) -> None:
    cluster.create(quota({"count/sandboxes.agents.x-k8s.io": "5", "count/sandboxclaims.extensions.agents.x-k8s.io": "2",
                          "requests.cpu": "4", "requests.memory": "4Gi", "limits.memory": "4Gi", "pods": "10",
                          "example.com/thing": "1"}))

    def used(sandboxes: int, claims: int, pods: int, cpu: str, memory: str, limit: str) -> dict[str, str]:
        return {"count/sandboxclaims.extensions.agents.x-k8s.io": str(claims),
                "count/sandboxes.agents.x-k8s.io": str(sandboxes), "pods": str(pods),
                **q.format_usage({"requests.cpu": parse_quantity(cpu), "requests.memory": parse_quantity(memory),
                                  "limits.memory": parse_quantity(limit)})}

    obj = await used_becomes(cluster, used(0, 0, 0, "0", "0", "0"))
    assert obj["status"]["hard"]["limits.memory"] == "4Gi"
    small = sandbox("small")
    small["spec"]["podTemplate"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m",
                                                                                     "memory": "512Mi"}}
    cluster.create(small)
    cluster.create(sandbox("plain"))  # the built-in defaults: limits 1 cpu, 2Gi; requests of an idle sandbox
    idle_cpu, idle_memory = (parse_quantity(BUILTIN_DEFAULT_REQUESTS[r]) for r in ("cpu", "memory"))
    # Each Sandbox's compute is its Pod's, counted once (not again for the Sandbox).
    await used_becomes(cluster, used(2, 0, 2, str(Decimal("0.5") + idle_cpu), str(512 * 2**20 + idle_memory),
                                     "2560Mi"))
    # A claim from a warm pool: one claim, and the pool's sandboxes count as sandboxes, their Pods as pods.
    cluster.create(template())
    cluster.create(pool(replicas=1))
    cluster.create(claim())
    await used_becomes(cluster, used(4, 1, 4, str(Decimal("1.5") + idle_cpu), str(1024 * 2**20 + idle_memory),
                                     "3Gi"))
    # A suspended sandbox's Pod is gone: it uses no compute, and still counts as a sandbox.
    cluster.patch(cluster.sandbox, "plain", {"spec": {"operatingMode": "Suspended"}})
    await used_becomes(cluster, used(4, 1, 3, "1500m", "1Gi", "1Gi"))
    cluster.registry.delete(cluster.sandbox, "default", "plain")
    cluster.registry.delete(cluster.sandbox, "default", "small")
    await used_becomes(cluster, used(2, 1, 2, "1", "512Mi", "512Mi"))


async def test_a_sandbox_over_a_compute_quota_is_stored_and_says_why_its_pod_is_refused(cluster: Cluster) -> None:
    cluster.create(quota({"limits.cpu": "1"}))
    big = sandbox("big")
    big["spec"]["podTemplate"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2"}}
    cluster.create(big)  # as a Deployment on a cluster: the object is stored, its Pod is what the quota refuses
    obj = await cluster.wait_condition(cluster.sandbox, "big", "Ready", "False")
    message = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["message"]
    assert 'pods "big" is forbidden: exceeded quota: q, requested: limits.cpu=2, used: limits.cpu=0, ' \
           "limited: limits.cpu=1" in message
    assert cluster.pods() == []


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
