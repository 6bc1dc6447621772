"""Warm pool reconciler: replicas kept, labelled and owned as upstream; refill; scale; Recreate."""

from __future__ import annotations

import asyncio

from turbok.api.kinds import POD
from turbok.controllers import labels as lb

from .conftest import Cluster, claim, pool, template


def _pool_sandboxes(cluster: Cluster, name: str = "pool") -> list[dict]:
    return [s for s in cluster.sandboxes()
            if (s["metadata"].get("labels") or {}).get(lb.WARM_POOL_SANDBOX) == lb.name_hash(name)
            and not s["metadata"].get("deletionTimestamp")]


async def test_pool_keeps_replicas_ready_with_upstream_names_labels_and_owner(cluster: Cluster) -> None:
    cluster.create(template())
    created = cluster.create(pool(replicas=3))
    await cluster.wait(lambda: (cluster.get(cluster.pool, "pool") or {}).get("status", {}).get("readyReplicas") == 3,
                       what="3 ready replicas")
    sandboxes = _pool_sandboxes(cluster)
    assert len(sandboxes) == 3
    for sb in sandboxes:
        md = sb["metadata"]
        assert md["name"].startswith("pool-") and len(md["name"]) == len("pool-") + 5
        assert md["labels"][lb.TEMPLATE_REF_HASH] == lb.name_hash("tpl")
        assert md["labels"][lb.LAUNCH_TYPE] == "warm"
        assert md["annotations"][lb.TEMPLATE_REF] == "tpl"
        owner = lb.controller_of(sb)
        assert owner and owner["kind"] == "SandboxWarmPool" and owner["uid"] == created["metadata"]["uid"]
        pod = cluster.get(POD, md["name"])
        assert pod["metadata"]["labels"] == {
            lb.SANDBOX_NAME_HASH: lb.name_hash(md["name"]), lb.WARM_POOL_SANDBOX: lb.name_hash("pool"),
            lb.TEMPLATE_REF_HASH: lb.name_hash("tpl"), lb.CREATED_BY: "controller"}, \
            "pool labels in the template are system labels; the Pod gets them as extension labels"
    status = cluster.get(cluster.pool, "pool")["status"]
    assert status["replicas"] == 3
    assert status["selector"] == f"{lb.WARM_POOL_SANDBOX}={lb.name_hash('pool')}"
    assert status["observedGeneration"] == 1


async def test_scaling_down_deletes_excess_and_scale_subresource_reads_back(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=3))
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 3, what="3 sandboxes")
    scale = cluster.registry.get_scale(cluster.pool, "default", "pool")
    scale["spec"]["replicas"] = 1
    cluster.registry.update_scale(cluster.pool, "default", "pool", scale)
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 1, what="scaled to 1")
    await cluster.wait(lambda: cluster.registry.get_scale(cluster.pool, "default", "pool")["status"]["replicas"] == 1,
                       what="status.replicas 1")


async def test_pool_without_template_creates_nothing_until_it_exists(cluster: Cluster) -> None:
    cluster.create(pool(replicas=2))
    await cluster.wait(lambda: "status" in (cluster.get(cluster.pool, "pool") or {}), what="pool status")
    assert _pool_sandboxes(cluster) == []
    cluster.create(template())
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2, what="pool filled after template appears")


async def test_claimed_sandbox_leaves_the_pool_and_the_pool_refills(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=2))
    await cluster.wait(lambda: cluster.get(cluster.pool, "pool").get("status", {}).get("readyReplicas") == 2,
                       what="pool ready")
    before = {s["metadata"]["name"] for s in _pool_sandboxes(cluster)}
    cluster.create(claim("c"))
    bound = await cluster.wait_condition(cluster.claim, "c", "Ready")
    taken = bound["status"]["sandbox"]["name"]
    assert taken in before
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2 and
                       taken not in {s["metadata"]["name"] for s in _pool_sandboxes(cluster)}, what="refill")


async def test_recreate_replaces_sandboxes_of_an_older_template(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=2, updateStrategy={"type": "Recreate"}))
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2, what="pool filled")
    old = {s["metadata"]["name"] for s in _pool_sandboxes(cluster)}
    cluster.patch(cluster.template, "tpl", {"spec": {"podTemplate": {"spec": {"containers": [
        {"name": "main", "image": "python-runtime-sandbox", "env": [{"name": "V", "value": "2"}]}]}}}})
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2 and
                       not old & {s["metadata"]["name"] for s in _pool_sandboxes(cluster)}, what="recreated")
    fresh = _pool_sandboxes(cluster)[0]
    env = fresh["spec"]["podTemplate"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "V", "value": "2"}]


async def test_on_replenish_keeps_older_sandboxes(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=2))
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2, what="pool filled")
    old = {s["metadata"]["name"] for s in _pool_sandboxes(cluster)}
    cluster.patch(cluster.template, "tpl", {"metadata": {"labels": {"x": "y"}}, "spec": {"service": True}})
    await asyncio.sleep(0.3)  # the template change wakes the pool; give it time to (not) act
    assert {s["metadata"]["name"] for s in _pool_sandboxes(cluster)} == old


async def test_deleting_the_pool_deletes_unclaimed_sandboxes_but_not_claimed_ones(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=2))
    await cluster.wait(lambda: cluster.get(cluster.pool, "pool").get("status", {}).get("readyReplicas") == 2,
                       what="pool ready")
    cluster.create(claim("keep"))
    bound = (await cluster.wait_condition(cluster.claim, "keep", "Ready"))["status"]["sandbox"]["name"]
    cluster.registry.delete(cluster.pool, "default", "pool")
    await cluster.wait(lambda: _pool_sandboxes(cluster) == [], what="pool sandboxes collected")
    assert cluster.get(cluster.sandbox, bound) is not None


class _Everyone(set):  # type: ignore[type-arg]
    def __contains__(self, name: object) -> bool:
        return True


async def test_a_bounded_pool_keeps_at_most_max_starting_sandboxes_starting(cluster: Cluster) -> None:
    cluster.suite.pools.max_starting = 2  # the embedded engine's bound (its node boots a few at a time)
    cluster.node.hold = _Everyone()  # every Pod stays Pending until the test runs it
    cluster.create(template())
    cluster.create(pool(replicas=5))
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2, what="two starting")
    await asyncio.sleep(0.2)
    assert len(_pool_sandboxes(cluster)) == 2, "no more than two start at once"
    first = _pool_sandboxes(cluster)[0]["metadata"]["name"]
    await cluster.wait(lambda: cluster.get(POD, first) is not None, what="its Pod")
    cluster.node.run(first)
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 3, what="the next one once the first is Ready")
    for sb in _pool_sandboxes(cluster):
        name = sb["metadata"]["name"]
        await cluster.wait(lambda: cluster.get(POD, name) is not None, what="its Pod")  # noqa: B023
        if name != first:
            cluster.node.run(name)
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 5, what="the pool full in the end")


async def test_a_pool_refills_once_a_burst_of_claims_pauses(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=6))
    await cluster.wait(lambda: len([s for s in _pool_sandboxes(cluster) if _ready(s)]) == 6, what="a full pool")
    pools = cluster.suite.pools
    # the embedded engine's pause, longer to be seen: a burst's refill waits for 1.5 s without claims, 2 s at most
    pools.burst_quiet, pools.burst_max_wait = 1.5, 2.0
    for i in range(2):  # a burst of two claims 0.2 s apart, each adopting a warm sandbox; four stay Ready
        cluster.create(claim(f"c{i}"))
        await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 5 - i, what=f"claim {i} adopting")  # noqa: B023
        await asyncio.sleep(0.2)
    assert len(_pool_sandboxes(cluster)) == 4, "no refill while the stock outlasts the burst"
    began = asyncio.get_running_loop().time()
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 6, what="the refill after the pause")
    assert asyncio.get_running_loop().time() - began >= 0.5, "the refill waited for the pause"


async def test_a_pool_that_a_burst_would_empty_refills_at_once(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=3))
    await cluster.wait(lambda: len([s for s in _pool_sandboxes(cluster) if _ready(s)]) == 3, what="a full pool")
    pools = cluster.suite.pools
    # A pause of up to 30 s: at the burst's rate (one claim in its first 1.5 s) two Ready sandboxes do not last it,
    # so waiting would leave the next claims to start cold: the refill starts at once.
    pools.burst_quiet, pools.burst_max_wait = 1.5, 30.0
    cluster.create(claim("c0"))
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2, what="c0 adopting")
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 3, timeout=1.0, what="an immediate refill")
    # Without a pause (upstream's, the operator's), the pool refills at once too.
    pools.burst_quiet = 0.0
    await cluster.wait(lambda: len([s for s in _pool_sandboxes(cluster) if _ready(s)]) == 3, what="ready again")
    cluster.create(claim("c9"))
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2, what="c9 adopting")
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 3, timeout=1.0, what="an immediate refill")


async def test_while_a_burst_goes_on_past_the_longest_wait_the_pool_refills_one_at_a_time(cluster: Cluster) -> None:
    cluster.create(template())
    cluster.create(pool(replicas=8))
    await cluster.wait(lambda: len([s for s in _pool_sandboxes(cluster) if _ready(s)]) == 8, what="a full pool")
    pools = cluster.suite.pools
    pools.max_starting = 4
    pools.burst_quiet, pools.burst_max_wait = 1.0, 0.4
    cluster.node.hold = _Everyone()  # refills stay starting: what is counted is how many start at once
    for i in range(6):  # claims every 0.2 s, 1.2 s in all: past the longest wait, never a pause
        cluster.create(claim(f"c{i}"))
        await asyncio.sleep(0.2)
    starting = [s for s in _pool_sandboxes(cluster) if not _ready(s)]
    assert len(starting) == 1, "past the longest wait the refill goes on, one sandbox starting at a time"
    await cluster.wait(lambda: len(_pool_sandboxes(cluster)) == 2 + 4, what="max_starting once the burst ended")


def _ready(sb: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (sb.get("status") or {}).get("conditions") or [])
