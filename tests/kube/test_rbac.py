"""Least privilege, checked: the operator under its own ServiceAccount, its calls read back from the audit log.

deploy/'s RBAC (``turbok.kube.manifests``) is applied, the operator runs with a token of its
ServiceAccount ``turbok-system/turbok-operator`` and is walked through every path that writes (pools,
claims adopting and expiring, services on and off, volume claims, suspend, template policies managed,
drifting and unmanaged). Then the apiserver's audit log says what it called: every call was allowed
(no 403), and every verb the ClusterRole and Role grant was used, except those in ``NOT_EXERCISED``,
each with the code path that needs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.conftest import prepare
from tests.kube.engine import KubeEngineCluster, OperatorThread
from tests.kube_cluster import KubeCluster, kube_cluster
from turbok.controllers import labels as lb
from turbok.kube.manifests import OPERATOR_RULES, Install

USER = "system:serviceaccount:turbok-system:turbok-operator"
#: Granted verbs this scenario does not reach, and the code that needs them.
NOT_EXERCISED: dict[tuple[str, str, str], str] = {}


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    with kube_cluster(prepare=prepare, audit=True) as cluster:
        yield cluster


def _granted() -> set[tuple[str, str, str]]:
    out = {(g, r, v) for g, rs, vs, _ in OPERATOR_RULES for r in rs for v in vs}
    out |= {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    return out


def _used(kube: KubeCluster) -> tuple[set[tuple[str, str, str]], list[dict[str, Any]]]:
    used, denied = set(), []
    for event in kube.audit(USER):
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if (event.get("responseStatus") or {}).get("code") == 403:
            denied.append(event)
    return used, denied


def _later(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_the_operator_needs_exactly_what_its_role_grants(kube: KubeCluster, tmp_path: Any) -> None:
    install = Install()
    kube.apply(*[n for n in install.namespaces() if n["metadata"]["name"] != "turbok-system"], *install.rbac())
    kubeconfig = kube.write_kubeconfig(tmp_path / "operator.kubeconfig",
                                       kube.service_account_token("turbok-system", "turbok-operator"),
                                       namespace="turbok-system")
    op = OperatorThread(kubeconfig).start()
    try:
        ns = "rbac"
        kube.client.post("/api/v1/namespaces", json={"metadata": {"name": ns}})
        kube.wait("default ServiceAccount", lambda: kube.client.get(
            f"/api/v1/namespaces/{ns}/serviceaccounts/default").status_code == 200)
        c = KubeEngineCluster(kube, ns)
        pod: dict[str, Any] = {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}
        ext = "extensions.agents.x-k8s.io/v1beta1"
        c.create({"apiVersion": ext, "kind": "SandboxTemplate", "metadata": {"name": "tpl"},
                  "spec": {"podTemplate": pod}})
        c.create({"apiVersion": ext, "kind": "SandboxWarmPool", "metadata": {"name": "pool"},
                  "spec": {"replicas": 2, "sandboxTemplateRef": {"name": "tpl"}}})
        await c.wait(lambda: (c.get(c.pool, "pool") or {}).get("status", {}).get("readyReplicas") == 2,
                     what="pool ready")
        # a claim adopts a warm sandbox (sandbox update, Pod relabelled), then expires: claim and sandbox deleted
        c.create({"apiVersion": ext, "kind": "SandboxClaim", "metadata": {"name": "warm"},
                  "spec": {"warmPoolRef": {"name": "pool"},
                           "lifecycle": {"shutdownTime": _later(4), "shutdownPolicy": "Delete"}}})
        await c.wait_condition(c.claim, "warm", "Ready")
        await c.wait(lambda: c.get(c.claim, "warm") is None, timeout=10, what="the claim expired")
        # the pool shrinks: a sandbox deleted
        c.patch(c.pool, "pool", {"spec": {"replicas": 1}})

        def pool_size() -> int:
            return sum(1 for s in c.sandboxes() if not s["metadata"].get("deletionTimestamp") and any(
                r["kind"] == "SandboxWarmPool" for r in s["metadata"].get("ownerReferences") or []))

        await c.wait(lambda: pool_size() == 1, what="the pool trimmed to 1")
        # a sandbox with a Service and a volume claim, then without the Service, then suspended
        sb = {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "full"},
              "spec": {"podTemplate": pod, "service": True, "volumeClaimTemplates": [{
                  "metadata": {"name": "data"},
                  "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}
        c.create(sb)
        await c.wait_condition(c.sandbox, "full", "Ready")
        c.patch(c.sandbox, "full", {"spec": {"podTemplate": {"metadata": {"labels": {"tier": "gold"}}}}})
        # a hand-edited label on its Service is put back (patch)
        service_kind = c.kinds.by_kind("v1", "Service")
        c.patch(service_kind, "full", {"metadata": {"labels": {lb.SANDBOX_NAME_HASH: "edited"}}})
        await c.wait(lambda: (c.get(service_kind, "full") or {}).get("metadata", {}).get("labels", {}).get(
            lb.SANDBOX_NAME_HASH) == lb.name_hash("full"), what="the Service's label put back")
        # unowned adoptable objects in the way: a PVC and a headless Service are adopted (patch, update)
        adoptable = {lb.ADOPTABLE: "true"}
        c.call("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", json={
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-adopt", "labels": adoptable},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        c.call("POST", f"/api/v1/namespaces/{ns}/services", json={
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "adopt", "labels": adoptable},
            "spec": {"clusterIP": "None", "selector": {"x": "y"}}})
        c.create({**sb, "metadata": {"name": "adopt"}})
        await c.wait_condition(c.sandbox, "adopt", "Ready")
        c.patch(c.sandbox, "full", {"spec": {"operatingMode": "Suspended"}})
        await c.wait_condition(c.sandbox, "full", "Suspended", "True", timeout=10)
        c.patch(c.sandbox, "full", {"spec": {"service": False}})
        await c.wait(lambda: c.get(service_kind, "full") is None, what="the Service removed")
        # the template's NetworkPolicy drifts (put back), then is unmanaged (deleted)
        policy = c.kinds.by_kind("networking.k8s.io/v1", "NetworkPolicy")
        c.patch(policy, "tpl-network-policy", {"spec": {"policyTypes": ["Ingress"]}})
        await c.wait(lambda: (c.get(policy, "tpl-network-policy") or {}).get("spec", {}).get("policyTypes")
                     == ["Ingress", "Egress"], what="the policy put back")
        c.patch(c.template, "tpl", {"spec": {"networkPolicyManagement": "Unmanaged"}})
        await c.wait(lambda: c.get(policy, "tpl-network-policy") is None, what="the policy removed")
    finally:
        op.stop()
    used, denied = _used(kube)
    assert not denied, f"calls the Role does not allow: {[(e['verb'], e['objectRef']) for e in denied]}"
    granted = _granted()
    assert used <= granted
    unused = granted - used - set(NOT_EXERCISED)
    assert not unused, f"granted but never used: {sorted(unused)}"


CHECKPOINT_USER = "system:serviceaccount:turbok-system:turbok-checkpoint-operator"
#: Granted to the checkpoint operator but not called: RBAC lets a subject grant only what it holds itself
#: (the agents' ClusterRole and Role), and a server-side apply that creates an object is authorized as
#: ``create`` inside the PATCH handler, which the audit log records as ``patch``.
CHECKPOINT_NOT_CALLED = {
    ("checkpointing.turbok.dev", "checkpointconfigurations", "get"): "granted to the agents",
    ("checkpointing.turbok.dev", "checkpointconfigurations", "watch"): "granted to the agents",
    ("", "pods", "get"): "granted to the agents",
    ("", "pods", "watch"): "granted to the agents",
    ("", "pods", "patch"): "granted to the agents",
    **{(g, r, "create"): "the first server-side apply" for g, r in (
        ("rbac.authorization.k8s.io", "clusterroles"), ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"), ("apps", "daemonsets"))},
}


def test_the_checkpoint_operator_needs_exactly_what_its_roles_grant(kube: KubeCluster, tmp_path: Any) -> None:
    from turbok.checkpoint.operator import Reconciler
    from turbok.client.kubeconfig import load_kubeconfig
    from turbok.client.rest import RestClient
    from turbok.kube.manifests import CHECKPOINT_NS_RULES, CHECKPOINT_RULES

    install = Install()
    kube.apply(*[o for o in install.checkpoint() if o["kind"] not in ("Deployment", "NetworkPolicy")])
    kubeconfig = kube.write_kubeconfig(
        tmp_path / "checkpoint.kubeconfig",
        kube.service_account_token("turbok-system", "turbok-checkpoint-operator"), namespace="turbok-system")
    kube.apply({"apiVersion": "checkpointing.turbok.dev/v1", "kind": "CheckpointConfiguration",
                "metadata": {"name": "train"},
                "spec": {"storageURL": "file:///nonexistent/bucket", "hostNetwork": False, "image": "turbok:test"}})
    with RestClient(load_kubeconfig(kubeconfig)) as client:
        reconciler = Reconciler(client, namespace="turbok-checkpoint", image="turbok:test")
        first = reconciler.reconcile_all()
        assert set(first) == {"train"}
        ds = kube.client.get("/apis/apps/v1/namespaces/turbok-checkpoint/daemonsets/checkpoint-agent-train")
        assert ds.status_code == 200, f"the agents' DaemonSet was not applied: {first['train'].reason}"
        # kube-controller-manager makes the agent's Pod on the kwok node; the next pass reports it
        kube.wait("the agent's Pod", lambda: kube.client.get("/api/v1/namespaces/turbok-checkpoint/pods").json()["items"])
        reconciler.reconcile_all()
    status = kube.client.get("/apis/checkpointing.turbok.dev/v1/checkpointconfigurations/train").json()["status"]
    assert [n["name"] for n in status["nodes"]] == ["kwok-node-0"]
    used, denied = set(), []
    for event in kube.audit(CHECKPOINT_USER):
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if (event.get("responseStatus") or {}).get("code") == 403:
            denied.append(event)
    assert not denied, f"calls the roles do not allow: {[(e['verb'], e['objectRef']) for e in denied]}"
    granted = {(g, r, v) for g, rs, vs, _ in CHECKPOINT_RULES + CHECKPOINT_NS_RULES for r in rs for v in vs}
    assert used <= granted
    unused = granted - used - set(CHECKPOINT_NOT_CALLED)
    assert not unused, f"granted but never used: {sorted(unused)}"
