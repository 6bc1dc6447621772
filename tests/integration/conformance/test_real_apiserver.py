"""The checks that need only the API, against a real kube-apiserver 1.37.2 (not a double).

``real_apiserver`` (conftest.py) runs etcd, kube-apiserver and kube-controller-manager from
../shared/kube on loopback: DRA objects, CRD presence (Gateway API, Kueue, KubeRay) and the
PRODUCT.yaml draft meet the real API's validation, discovery, admission and namespace
finalization. Nothing implements those CRDs: the checks must say so rather than pass.

Cost: one etcd, kube-apiserver and kube-controller-manager start for the module (about 6 s),
then a few seconds per run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.kube_cluster import KubeCluster
from tests.unit.conformance.support import DATA, fast_options
from turbok.cli.main import app
from turbok.client.kubeconfig import load_kubeconfig
from turbok.conformance.cleanup import MANAGED_BY_SELECTOR
from turbok.conformance.kube import KubeClient
from turbok.conformance.results import RunReport, Status
from turbok.conformance.runner import Runner, RunSettings
from turbok.conformance.validator import validate_file

pytestmark = pytest.mark.integration

CRDS = DATA / "crds" / "minimal-crds.yaml"


def _run(kubeconfig: Path, **settings: Any) -> RunReport:
    with KubeClient(load_kubeconfig(kubeconfig)) as client:
        return Runner(client, RunSettings(options=fast_options(timeout=2.0), **settings)).run()


def _one(report: RunReport, rid: str) -> Any:
    (result,) = [r for r in report.results if r.requirement.id == rid and r.selected]
    return result


def _apply(cp: KubeCluster, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        r = cp.client.post(cp.path_of(doc, collection=True), json=doc)
        assert r.status_code in (201, 409), r.text


def _nothing_left(cp: KubeCluster, namespace: str) -> None:
    """Every labelled object of the run is gone, and its namespace finalized (kube-controller-manager)."""
    with KubeClient(load_kubeconfig(cp.kubeconfig)) as client:
        assert client.list("v1", "ConfigMap", label_selector=MANAGED_BY_SELECTOR) == []
    deadline = time.monotonic() + 60
    while cp.client.get(f"/api/v1/namespaces/{namespace}").status_code != 404:
        assert time.monotonic() < deadline, f"namespace {namespace} was not finalized"
        time.sleep(0.5)


def test_dra_support_meets_the_real_dra_api(real_apiserver: tuple[Path, KubeCluster]) -> None:
    kubeconfig, cp = real_apiserver
    # no driver publishes devices: the APIs work (a ResourceClaimTemplate went through create/get/delete), Skipped
    report = _run(kubeconfig, version="1.35", focus="dra_support")
    result = _one(report, "dra_support")
    assert result.status is Status.SKIPPED and "no DRA driver publishes devices" in result.reason, result.reason
    assert any("created, read back and deleted a ResourceClaimTemplate" in s.message for s in result.steps)
    assert report.notes == ["checking against the 1.35 checklist (--version); the cluster is 1.37"]
    _nothing_left(cp, report.namespace)

    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-1"}}
    device_class = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "gpu.example.com"},
                    "spec": {"selectors": [{"cel": {"expression": "device.driver == 'gpu.example.com'"}}]}}
    pool = {"name": "gpu-node-1", "generation": 1, "resourceSliceCount": 1}
    slice_ = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": "gpu-node-1-gpus"},
              "spec": {"driver": "gpu.example.com", "nodeName": "gpu-node-1", "pool": pool,
                       "devices": [{"name": "gpu-0"}, {"name": "gpu-1"}]}}
    _apply(cp, [node, device_class, slice_])
    result = _one(_run(kubeconfig, version="1.35", focus="dra_support"), "dra_support")
    assert result.status is Status.PASSED, result.reason
    assert result.reason.startswith("resource.k8s.io/v1 served and usable; 1 complete pool(s) from gpu.example.com; "
                                    "DeviceClass(es) gpu.example.com")

    # a pool that announces two slices but has one is incomplete
    partial = {**slice_, "metadata": {"name": "gpu-node-2-gpus"},
               "spec": {**slice_["spec"], "driver": "other.example.com", "pool": {**pool, "name": "p2",
                                                                                 "resourceSliceCount": 2}}}
    _apply(cp, [partial])
    result = _one(_run(kubeconfig, version="1.35", focus="dra_support"), "dra_support")
    assert result.status is Status.PASSED  # gpu.example.com's pool is still complete
    assert {p["driver"]: p["complete"] for p in result.details["pools"]} == {"gpu.example.com": True,
                                                                            "other.example.com": False}


def test_crd_based_checks_see_apis_without_implementations(real_apiserver: tuple[Path, KubeCluster]) -> None:
    kubeconfig, cp = real_apiserver
    focus = "ai_inference|gang_scheduling|robust_controller"
    report = _run(kubeconfig, focus=focus)
    reasons = {r.requirement.id: (r.status, r.reason) for r in report.results if r.selected}
    assert reasons["ai_inference"] == (Status.FAILED, "the Gateway API (gateway.networking.k8s.io/v1) is not installed: "
                                                      "install a Gateway API implementation")
    assert reasons["gang_scheduling"][0] is Status.FAILED and reasons["gang_scheduling"][1].startswith(
        "no gang scheduling solution found")
    assert reasons["robust_controller"][0] is Status.FAILED and reasons["robust_controller"][1].startswith(
        "no AI operator with a CRD found")
    _nothing_left(cp, report.namespace)

    _apply(cp, list(yaml.safe_load_all(CRDS.read_text())))
    time.sleep(2)  # discovery of freshly established CRDs
    report = _run(kubeconfig, focus=focus)
    reasons = {r.requirement.id: (r.status, r.reason) for r in report.results if r.selected}
    # the CRDs are there, nothing implements them: no check may pass
    assert reasons["ai_inference"] == (Status.FAILED, "no accepted GatewayClass (found: none): install a Gateway API "
                                                      "implementation")
    assert reasons["robust_controller"] == (Status.FAILED, "KubeRay has no ValidatingWebhookConfiguration for ray.io: "
                                                           "its webhook is not operational")
    gang = reasons["gang_scheduling"]  # no Kueue controller marks its ClusterQueue Active
    assert gang[0] is Status.FAILED and gang[1].endswith("never became Active: no Active condition"), gang
    # Kueue's objects went through the real API (cluster-scoped ones are deleted by the checks themselves)
    assert cp.client.get("/apis/kueue.x-k8s.io/v1beta1/clusterqueues",
                         params={"labelSelector": MANAGED_BY_SELECTOR}).json()["items"] == []
    _nothing_left(cp, report.namespace)


def test_product_yaml_draft_of_a_real_run_validates(real_apiserver: tuple[Path, KubeCluster], tmp_path: Path) -> None:
    kubeconfig, cp = real_apiserver
    out = tmp_path / "v1.35" / "acme"
    r = CliRunner().invoke(app, ["conformance", "run", "--kubeconfig", str(kubeconfig), "--version", "1.35",
                                 "--focus", "dra_support|ai_inference|robust_controller", "--no-drafts",
                                 "--output-dir", str(out), "-o", "json", "--timeout", "2", "--negative-wait", "0.2"])
    assert r.exit_code == 1, r.stderr  # MUST requirements fail: no Gateway, no operator
    doc = json.loads(r.stdout)
    assert doc["cluster"]["gitVersion"] == "v1.37.2" and doc["cluster"]["engine"] == "kubernetes"
    product = out / "PRODUCT.yaml"
    text = product.read_text()
    draft = yaml.safe_load(text)
    draft["metadata"].update(platformName="Acme Kube", platformVersion="1.0", vendorName="Acme",
                             websiteUrl="https://acme.example", repoUrl="https://github.com/acme/kube",
                             documentationUrl="https://acme.example/docs", productLogoUrl="https://acme.example/logo.svg",
                             description="Acme's Kubernetes.", contactEmailAddress="kube@acme.example",
                             k8sConformanceUrl="https://github.com/cncf/k8s-conformance/tree/master/v1.35/acme")
    product.write_text(yaml.safe_dump(draft, sort_keys=False, width=1000))
    result = validate_file(product)
    # the file is the 1.35 checklist unchanged, with evidence files next to it; only the statuses of what did not
    # pass (or did not run) keep it from being a valid submission
    assert result.version == "1.35"
    bad = {(f.location.rsplit(".", 1)[-1], f.location.split("[")[1].split("]")[0]) for f in result.errors}
    assert all(field == "status" for field, _ in bad), result.errors
    ran = {x["id"]: x["status"] for x in doc["results"] if x["selected"]}
    assert {rid for _, rid in bad} >= {rid for rid, s in ran.items() if s == "Failed"}
    for x in doc["results"]:
        if x["selected"]:
            assert (out / x["evidence"]).is_file()
    assert cp.client.get("/readyz").status_code == 200
