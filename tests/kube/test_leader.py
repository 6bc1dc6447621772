"""Leader election on a real Lease, and an operator killed with SIGKILL in the middle of a burst of claims.

Two ``turbok operator`` processes share the Lease ``turbok-system/turbok-operator``: one acts, the
other waits with warm caches. The leader is killed -9 while claims are arriving and started again;
the standby takes over within the lease duration and every claim ends with exactly one Sandbox,
nothing duplicated, nothing lost, the pool back at its size.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube_cluster import KubeCluster
from turbok.client.api import AsyncApi
from turbok.client.kubeconfig import load_kubeconfig
from turbok.kube.leader import LeaderElector, LeaseSettings

LEASE = "/apis/coordination.k8s.io/v1/namespaces/turbok-system/leases/turbok-operator"
EXT = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/burst"
Obj = dict[str, Any]


def _holder(kube: KubeCluster) -> str:
    r = kube.client.get(LEASE)
    return str((r.json().get("spec") or {}).get("holderIdentity") or "") if r.status_code == 200 else ""


async def test_one_candidate_leads_a_release_hands_over_at_once_a_dead_leader_after_the_lease(
        kube: KubeCluster) -> None:
    settings = LeaseSettings("turbok-system", name="election-test", lease_duration=2.0, renew_deadline=1.5,
                             retry_period=0.2)
    config = load_kubeconfig(kube.kubeconfig)
    a = LeaderElector(AsyncApi(config), "a", settings)
    b = LeaderElector(AsyncApi(config), "b", settings)
    await a.acquire()
    b_task = asyncio.create_task(b.acquire())
    await asyncio.sleep(1.0)
    assert a.leading.is_set() and not b.leading.is_set(), "a renews: b waits"
    started = time.monotonic()
    await a.release()
    await asyncio.wait_for(b_task, 5)
    assert time.monotonic() - started < 1.5, "a released Lease is taken at the next try, not after its duration"
    # b dies without releasing (its renewals stop): a takes over only once the lease duration has passed
    assert b._task is not None
    b._task.cancel()
    died = time.monotonic()
    await asyncio.wait_for(a.acquire(), 10)
    assert time.monotonic() - died >= settings.lease_duration - settings.retry_period
    assert a.transitions >= 2
    await a.release()
    await a.api.close()
    await b.api.close()


def _operator(kube: KubeCluster, identity: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "turbok", "operator", "--kubeconfig", str(kube.kubeconfig), "--namespace",
             "turbok-system", "--identity", identity, "--health-address", "", "--lease-duration", "3",
             "--renew-deadline", "2", "--retry-period", "0.3"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TURBOK_LOG": "INFO"})


@pytest.fixture
def operators(kube: KubeCluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    procs: dict[str, Any] = {"log": tmp_path / "operators.log"}
    yield procs
    for key, proc in procs.items():
        if key != "log" and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_an_operator_killed_mid_burst_loses_and_duplicates_nothing(kube: KubeCluster, operators: dict[str, Any]) -> None:
    n = 30
    kube.client.post("/api/v1/namespaces", json={"metadata": {"name": "burst"}})
    kube.wait("default ServiceAccount", lambda: kube.client.get(
        "/api/v1/namespaces/burst/serviceaccounts/default").status_code == 200)
    log = operators["log"]
    operators["a"] = _operator(kube, "op-a", log)
    kube.wait("op-a to lead", lambda: _holder(kube) == "op-a", timeout=60)
    operators["b"] = _operator(kube, "op-b", log)
    pod: Obj = {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}
    kube.client.post(f"{EXT}/sandboxtemplates", json={
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
        "metadata": {"name": "tpl"}, "spec": {"podTemplate": pod}})
    kube.client.post(f"{EXT}/sandboxwarmpools", json={
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
        "metadata": {"name": "pool"}, "spec": {"replicas": n, "sandboxTemplateRef": {"name": "tpl"}}})
    kube.wait("the pool ready", lambda: (kube.client.get(f"{EXT}/sandboxwarmpools/pool").json().get("status")
                                         or {}).get("readyReplicas") == n, timeout=120)
    for i in range(n):
        r = kube.client.post(f"{EXT}/sandboxclaims", json={
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
            "metadata": {"name": f"c{i}"}, "spec": {"warmPoolRef": {"name": "pool"}}})
        assert r.status_code == 201, r.text
        if i == n // 2:
            leader = operators["a"] if _holder(kube) == "op-a" else operators["b"]
            leader.send_signal(signal.SIGKILL)  # no release, no cleanup: mid-burst
            leader.wait()
            killed = "op-a" if leader is operators["a"] else "op-b"
    operators["a2"] = _operator(kube, f"{killed}-again", log)

    def all_ready() -> list[Obj] | None:
        claims = kube.client.get(f"{EXT}/sandboxclaims").json()["items"]
        ready = [c for c in claims if any(x["type"] == "Ready" and x["status"] == "True"
                                          for x in (c.get("status") or {}).get("conditions") or [])]
        return claims if len(ready) == n else None

    claims = kube.wait("every claim Ready", all_ready, timeout=120)
    assert _holder(kube) not in ("", killed), "the survivor leads"
    bound = [c["status"]["sandbox"]["name"] for c in claims]
    assert len(set(bound)) == n, "no two claims share a Sandbox"
    # every Sandbox a claim owns is the one its status names; the pool refills to its size (counted from
    # the Sandboxes it owns: its status may still show the count from before the burst)
    def refilled() -> list[Obj] | None:
        items: list[Obj] = kube.client.get("/apis/agents.x-k8s.io/v1beta1/namespaces/burst/sandboxes").json()["items"]
        warm = [s for s in items if any(r["kind"] == "SandboxWarmPool" for r in s["metadata"].get("ownerReferences") or [])
                and any(c["type"] == "Ready" and c["status"] == "True" for c in (s.get("status") or {}).get("conditions") or [])]
        return items if len(warm) >= n else None

    kube.wait("the pool refilled", refilled, timeout=120)
    time.sleep(2 * 0.5 + 1)  # the pool's coalescing window, twice, and a margin: a surplus would show by now
    sandboxes = kube.client.get("/apis/agents.x-k8s.io/v1beta1/namespaces/burst/sandboxes").json()["items"]
    owned_by_claims = [s for s in sandboxes if any(r["kind"] == "SandboxClaim"
                                                   for r in s["metadata"].get("ownerReferences") or [])]
    assert sorted(s["metadata"]["name"] for s in owned_by_claims) == sorted(bound), "no duplicate, none lost"
    assert len(sandboxes) == 2 * n, f"{n} claimed and {n} warm, nothing more: {len(sandboxes)}"
    pods = kube.client.get("/api/v1/namespaces/burst/pods").json()["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(s["metadata"]["name"] for s in sandboxes), \
        "one Pod per Sandbox"
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
