"""The router's resolver gives the runtime id the node keys the Pod by, from one indexed read of the Sandbox."""

from __future__ import annotations

import pytest

from turbok.api.kinds import POD
from turbok.controllers import labels as lb
from turbok.embedded.resolver import StoreResolver
from turbok.runtime.ids import sandbox_id
from turbok.sandboxd.errors import SandboxNotFound, SandboxNotReady

from .conftest import Cluster, claim, pool, sandbox, template


async def test_the_runtime_id_is_the_pods_identity_and_survives_adoption(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = StoreResolver(cluster.registry, cluster.sandbox)
    cluster.create(template())
    cluster.create(pool(replicas=1))
    await cluster.wait(lambda: (cluster.get(cluster.pool, "pool") or {}).get("status", {}).get("readyReplicas") == 1,
                       what="pool ready")
    [warm] = cluster.sandboxes()
    name = warm["metadata"]["name"]
    before = await resolver.resolve("default", name)
    assert before == sandbox_id(cluster.get(POD, name)["metadata"]["annotations"][lb.SANDBOX_IDENTITY])
    cluster.create(claim("c"))
    await cluster.wait_condition(cluster.claim, "c", "Ready")
    reads: list[str] = []
    original = cluster.registry.try_get
    monkeypatch.setattr(cluster.registry, "try_get", lambda *a: reads.append(a[0].kind) or original(*a))
    monkeypatch.setattr(cluster.registry, "list", lambda *a, **k: pytest.fail("the resolver must not list"))
    assert await resolver.resolve("default", name) == before, "adoption keeps the Pod, so the id"
    assert reads == ["Sandbox"]


async def test_a_sandbox_not_ready_or_missing_is_refused_with_why(cluster: Cluster) -> None:
    resolver = StoreResolver(cluster.registry, cluster.sandbox)
    with pytest.raises(SandboxNotFound):
        await resolver.resolve("default", "nobody")
    cluster.node.hold.add("later")
    cluster.create(sandbox("later"))
    await cluster.wait_condition(cluster.sandbox, "later", "Ready", "False")
    with pytest.raises(SandboxNotReady, match="DependenciesNotReady"):
        await resolver.resolve("default", "later")
