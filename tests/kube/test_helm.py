"""The cluster install: the Helm chart and kustomize against a real apiserver, with upstream's helm and kubectl.

``helm lint``; ``helm template | kubectl apply --server-side --dry-run=server`` (every object valid for
kube-apiserver 1.37); the kustomize output is the same objects as the chart's; ``helm install`` makes
them (the router's Secret once, kept by an upgrade; the checkpoint operator) and ``helm uninstall`` leaves
nothing behind: no CRD, cluster role, RuntimeClass or namespace of turbok's.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.kube_cluster import REPO, KubeCluster, binary, kube_cluster, missing
from turbok.kube.manifests import Install

CHART = REPO / "deploy" / "helm" / "turbok"
KUSTOMIZE = REPO / "deploy" / "kustomize"
pytestmark = pytest.mark.skipif(missing("helm", "kubectl", "kube-controller-manager") is not None,
                                reason=str(missing("helm", "kubectl", "kube-controller-manager")))


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    # Without the watch cache: in full local runs a CRD of the chart stayed Terminating after the uninstall with
    # InstanceDeletionFailed "could not list instances: storage is (re)initializing" (the cache of a CRD the
    # upgrade had just updated, not ready again within 180 s); that is the cache's error, and the test is about
    # what the chart leaves behind.
    with kube_cluster(scheduler=False, kwok=False, watch_cache=False) as cluster:
        yield cluster


def _run(kube: KubeCluster, tool: str, *args: str, stdin: str | None = None, ok: bool = True) -> str:
    out = subprocess.run([str(binary(tool)), *args, "--kubeconfig", str(kube.kubeconfig)], input=stdin,
                         capture_output=True, text=True, timeout=120,
                         env={"HOME": str(kube.work), "PATH": "/usr/bin:/bin"})
    if ok:
        assert out.returncode == 0, f"{tool} {' '.join(args)}: {out.stderr}"
    return out.stdout


def _objects(text: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
            for o in yaml.safe_load_all(text) if o}


def test_lint_dry_run_and_kustomize_agree(kube: KubeCluster) -> None:
    lint = subprocess.run([str(binary("helm")), "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = _run(kube, "helm", "template", "turbok", str(CHART), "--namespace", "turbok-system")
    # a dry run makes nothing, namespaces included: the chart's namespaced objects need theirs to exist
    _run(kube, "kubectl", "create", "namespace", "turbok-system")
    _run(kube, "kubectl", "create", "namespace", "agent-sandbox-system")
    _run(kube, "kubectl", "create", "namespace", "turbok-checkpoint")
    applied = _run(kube, "kubectl", "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "serverside-applied (server dry run)" in applied
    _run(kube, "kubectl", "delete", "namespace", "agent-sandbox-system", "turbok-checkpoint", "--wait=true")
    chart = _objects(rendered)
    kustomized = _objects(_run(kube, "kubectl", "kustomize", str(KUSTOMIZE)))
    only_chart = set(chart) - set(kustomized)
    only_kustomize = set(kustomized) - set(chart)
    assert only_chart == {("Secret", "agent-sandbox-system", "sandbox-router-token")}, \
        "the chart makes the router's token; with kustomize it is made by hand (docs/kube.md)"
    assert only_kustomize == {("Namespace", "", "turbok-system")}, "helm install --create-namespace makes it"
    for key, obj in chart.items():
        if key in kustomized:
            assert obj == kustomized[key], f"{key} differs between the chart and kustomize"


def test_install_upgrade_and_uninstall_leave_nothing_behind(kube: KubeCluster) -> None:
    _run(kube, "helm", "install", "turbok", str(CHART), "--namespace", "turbok-system", "--create-namespace")
    c = kube.client
    assert c.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/sandboxes.agents.x-k8s.io").status_code == 200
    assert c.get("/apis/apps/v1/namespaces/turbok-system/deployments/turbok-operator").status_code == 200
    svc = c.get("/api/v1/namespaces/agent-sandbox-system/services/sandbox-router-svc").json()
    assert svc["spec"]["ports"][0]["port"] == 8080 and svc["spec"]["selector"] == {"app": "sandbox-router"}
    assert c.get("/apis/node.k8s.io/v1/runtimeclasses/gvisor").json()["handler"] == "runsc"
    checkpoint = c.get("/apis/apps/v1/namespaces/turbok-system/deployments/turbok-checkpoint-operator").json()
    assert checkpoint["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["checkpoint", "operator"]
    # the examples docs/kube.md applies after an install are valid for the installed CRDs
    kube.wait("the CRDs served", lambda: c.get("/apis/extensions.agents.x-k8s.io/v1beta1").status_code == 200)
    # a fresh discovery cache: kubectl's, from the dry run above, was taken before the CRDs were installed; and
    # kube-apiserver's aggregated discovery (what kubectl reads) lists new kinds a moment after their group serves
    fresh = tempfile.mkdtemp(prefix="kubectl-cache-")
    kube.wait("kubectl's discovery lists the CRDs", lambda: "sandboxtemplates" in _run(
        kube, "kubectl", "--cache-dir", tempfile.mkdtemp(dir=fresh), "api-resources",
        "--api-group=extensions.agents.x-k8s.io", "-o", "name", ok=False), timeout=60)
    examples = _run(kube, "kubectl", "--cache-dir", fresh, "apply", "--dry-run=server", "-n", "default", "-f",
                    str(REPO / "examples"))
    shutil.rmtree(fresh, ignore_errors=True)
    assert examples.count("(server dry run)") == len(list((REPO / "examples").glob("*.yaml")))
    secret = c.get("/api/v1/namespaces/agent-sandbox-system/secrets/sandbox-router-token").json()
    _run(kube, "helm", "upgrade", "turbok", str(CHART), "--namespace", "turbok-system",
         "--set", "operator.replicas=1")
    again = c.get("/api/v1/namespaces/agent-sandbox-system/secrets/sandbox-router-token").json()
    assert again["data"]["token"] == secret["data"]["token"], "an upgrade keeps the router's token"
    deployment = c.get("/apis/apps/v1/namespaces/turbok-system/deployments/turbok-operator").json()
    assert deployment["spec"]["replicas"] == 1

    _run(kube, "helm", "uninstall", "turbok", "--namespace", "turbok-system")
    for ns in ("agent-sandbox-system", "turbok-checkpoint"):
        kube.wait(f"{ns} gone", lambda ns=ns: c.get(f"/api/v1/namespaces/{ns}").status_code == 404, timeout=60)
    ours = {crd["metadata"]["name"] for crd in Install().crds()}

    def crds() -> set[str]:
        return {x["metadata"]["name"] for x in
                c.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()["items"]}

    # A CRD goes once the apiextensions controller has removed its objects (its cleanup finalizer): after the
    # uninstall returns, not before; one at a time, and on a loaded 2-core machine over a minute for all.
    try:
        kube.wait("the chart's CRDs gone", lambda: not ours & crds(), timeout=180)
    except AssertionError as e:
        left = [crd for crd in c.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()["items"]
                if crd["metadata"]["name"] in ours]
        raise AssertionError(f"{e}: " + "; ".join(
            f"{crd['metadata']['name']} (deleted {crd['metadata'].get('deletionTimestamp')}, finalizers "
            f"{crd['metadata'].get('finalizers')}, conditions "
            f"{[(x['type'], x['status'], x.get('reason'), x.get('message')) for x in crd['status'].get('conditions') or []]})"
            for crd in left)) from None
    for path in ("/apis/rbac.authorization.k8s.io/v1/clusterroles", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                 "/apis/node.k8s.io/v1/runtimeclasses", "/apis/networking.k8s.io/v1/networkpolicies",
                 "/apis/apps/v1/deployments", "/api/v1/serviceaccounts", "/api/v1/secrets"):
        left = [o["metadata"]["name"] for o in c.get(path).json()["items"]
                if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/part-of") == "turbok"]
        assert not left, f"{path}: {left} left behind"


def test_deploy_is_what_the_generator_writes() -> None:
    from turbok.kube.manifests import rendered

    for rel, text in rendered().items():
        path = REPO / "deploy" / rel
        assert path.exists() and path.read_text() == text, \
            f"deploy/{rel} is stale: run `python -m turbok.kube.manifests deploy`"
    generated = {str(p.relative_to(REPO / "deploy")) for sub in ("kustomize", "helm")
                 for p in (REPO / "deploy" / sub).rglob("*") if p.is_file()}
    assert generated == set(rendered()), "deploy/kustomize or deploy/helm holds files the generator does not write"
