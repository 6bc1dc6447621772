"""Every check, driven over HTTP against the conformant and the non-conformant cluster doubles."""

from __future__ import annotations

import pytest

from tests.unit.conformance.support import Cluster, fast_options
from turbok.conformance.cleanup import MANAGED_BY_SELECTOR
from turbok.conformance.results import CheckResult, RunReport, Status


def _by_id(report: RunReport) -> dict[str, CheckResult]:
    return {r.requirement.id: r for r in report.results}


def _created(cluster: Cluster, kind: str, check: str) -> list[dict]:  # type: ignore[type-arg]
    return [o for o in cluster.api.store.created_of(kind)
            if (o["metadata"].get("labels") or {}).get("conformance.turbok.dev/check") == check]


# -- conformant ----------------------------------------------------------------------------------

CONFORMANT_1_35 = {
    "dra_support": "resource.k8s.io/v1 served and usable; 3 complete pool(s) from dra.net, gpu.nvidia.com; DeviceClass(es) dranet, gpu.nvidia.com",
    "driver_runtime_management": "published and installed driver agree on gpu-node-1 (580.105.08, CUDA 13.0",
    "gpu_sharing": "2 pods shared GPU(s) GPU-5d1e0a77-1c2b-4e9f-9a33-0b6f2c7d8e11 through time-slicing",
    "virtualized_accelerator": "a pod used a vGPU on gpu-node-1",
    "ai_inference": "GatewayClass double-gateway accepted a Gateway, a weighted (90/10) and a header-matched HTTPRoute",
    "gang_scheduling": "Kueue admitted 3 co-scheduled pods as one unit and held back a Job exceeding its quota",
    "cluster_autoscaling": "cluster-autoscaler (kube-system/cluster-autoscaler-status) added 1 accelerator node(s)",
    "pod_autoscaling": "the HPA scaled accelerator pods 1 -> 2 -> 1 on the custom metric turbok_conformance_queue_depth",
    "accelerator_metrics": "gpu-operator/nvidia-dcgm-exporter:9400/metrics exposes per-accelerator utilization (DCGM_FI_DEV_GPU_UTIL) and memory (DCGM_FI_DEV_FB_USED) for 2 device(s); also temperature, power, interconnect",
    "ai_service_metrics": "Prometheus at monitoring/prometheus-operated collected turbok_conformance_requests_total=",
    "secure_accelerator_access": "on gpu-node-1, only containers that requested an accelerator saw /dev/nvidia[0-9]*",
    "robust_controller": "KubeRay: CRD established, controller ready, webhook denied an invalid RayCluster, valid one reconciled",
    "workload_sandboxing": "RuntimeClass gvisor on node cpu-node-1 reports kernel '4.4.0' (differs from the host in "
                           "release, /proc/version, boot id); no host processes, memory devices, host paths or host "
                           "network in reach",
}
CONFORMANT_1_36_ONLY = {
    "advanced_inference_ingress": "GatewayClass double-gateway accepted an HTTPRoute to an InferencePool (inference.networking.k8s.io/v1)",
    "high_performance_networking": "a pod attached to DRA DeviceClass dranet (characteristics: ifname, numanode, pciaddress, rdma) saw interfaces eth0, net1",
    "disaggregated_inference": "namespace llm-d runs 1 prefill and 1 decode pod(s) separately",
}


def test_conformant_cluster_passes_1_35(conformant_cluster: Cluster) -> None:
    report = conformant_cluster.run()
    results = _by_id(report)
    assert report.checklist_version == "1.35" and report.cluster.git_version == "v1.35.2" and report.notes == []
    # what the 1.36 and 1.37 checklists add runs after the 1.35 requirements, as extras
    assert list(results) == [*[r for r in CONFORMANT_1_35 if r != "workload_sandboxing"], *CONFORMANT_1_36_ONLY,
                             "workload_sandboxing"]
    for rid, reason in {**CONFORMANT_1_35, **CONFORMANT_1_36_ONLY}.items():
        assert results[rid].status is Status.PASSED, (rid, results[rid].reason)
        assert results[rid].reason.startswith(reason), (rid, results[rid].reason)
    extras = [r.requirement for r in report.results if r.requirement.extra]
    assert [(r.id, r.version) for r in extras] == [(rid, "1.36") for rid in CONFORMANT_1_36_ONLY] + [
        ("workload_sandboxing", "1.37")]
    assert not any(r.counts_for_exit for r in report.results if r.requirement.extra)
    # workload_sandboxing compares the sandboxed pod with an unsandboxed control pod pinned to the same node
    sandboxed, control = _created(conformant_cluster, "Pod", "workload_sandboxing")
    assert sandboxed["spec"]["runtimeClassName"] == "gvisor" and "runtimeClassName" not in control["spec"]
    assert control["spec"]["nodeName"] == "cpu-node-1"
    verdicts = results["workload_sandboxing"].details["verdicts"]
    assert verdicts["memory"] == "no raw memory device readable" and "closed" in verdicts["network"]
    assert report.must_satisfied and report.exit_code == 0
    # everything created was labelled and is gone again, the namespace too
    assert conformant_cluster.api.store.labelled(MANAGED_BY_SELECTOR) == []
    created = conformant_cluster.api.store.created
    assert created and all((o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "turbok-conformance" for o in created)
    assert report.namespace.startswith("turbok-conformance-") and report.cleanup_leftovers == []


def test_conformant_cluster_passes_1_36(conformant_cluster: Cluster) -> None:
    report = conformant_cluster.run(version="1.36")
    results = _by_id(report)
    assert report.checklist_version == "1.36"
    assert report.notes == ["checking against the 1.36 checklist (--version); the cluster is 1.35"]
    assert "dra_support" not in results
    for rid, reason in CONFORMANT_1_36_ONLY.items():
        assert results[rid].status is Status.PASSED and results[rid].reason.startswith(reason), results[rid].reason
    assert all(r.status is Status.PASSED for r in report.results)


def test_gang_scheduling_holds_back_the_whole_nonfitting_job(conformant_cluster: Cluster) -> None:
    report = conformant_cluster.run(focus="gang_scheduling")
    assert _by_id(report)["gang_scheduling"].status is Status.PASSED
    jobs = _created(conformant_cluster, "Job", "gang_scheduling")
    fit, nofit = (j["metadata"]["name"] for j in jobs)
    pods = conformant_cluster.api.store.created_of("Pod") + [
        o for o in conformant_cluster.api.store.deleted if o["kind"] == "Pod"]
    by_job = {name: {p["metadata"]["name"] for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == name} for name in (fit, nofit)}
    assert len(by_job[fit]) == 3 and by_job[nofit] == set()
    assert all(j["spec"]["suspend"] is True for j in jobs)  # submitted suspended, Kueue decides
    cq = _created(conformant_cluster, "ClusterQueue", "gang_scheduling")[0]
    assert cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0] == {"name": "cpu", "nominalQuota": "1"}


def test_ai_inference_routes(conformant_cluster: Cluster) -> None:
    conformant_cluster.run(focus="ai_inference")
    routes = {r["metadata"]["name"].rsplit("-", 1)[-1]: r for r in _created(conformant_cluster, "HTTPRoute", "ai_inference")}
    weights = [b["weight"] for b in routes["weighted"]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [90, 10]
    match = routes["header"]["spec"]["rules"][0]["matches"][0]["headers"][0]
    assert match == {"type": "Exact", "name": "X-Gateway-Model-Name", "value": "model-b"}


def test_secure_access_pods(conformant_cluster: Cluster) -> None:
    conformant_cluster.run(focus="secure_accelerator_access")
    pods = {p["metadata"]["name"].rsplit("-", 1)[-1]: p for p in _created(conformant_cluster, "Pod", "secure_accelerator_access")}
    assert set(pods) == {"positive", "negative", "multi"}
    limits = [((c.get("resources") or {}).get("limits") or {}) for c in pods["multi"]["spec"]["containers"]]
    assert limits == [{"nvidia.com/gpu": "1"}, {}]
    assert "resources" not in pods["negative"]["spec"]["containers"][0]
    assert {p["spec"]["nodeSelector"]["kubernetes.io/hostname"] for p in pods.values()} == {"gpu-node-1"}


def test_pod_autoscaling_moves_the_gauge(conformant_cluster: Cluster) -> None:
    conformant_cluster.run(focus="pod_autoscaling")
    hpa = _created(conformant_cluster, "HorizontalPodAutoscaler", "pod_autoscaling")[0]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "turbok_conformance_queue_depth"
    patches = [r for r in conformant_cluster.api.requests if r.method == "PATCH" and "/configmaps/" in r.path]
    assert len(patches) == 1 and "turbok_conformance_queue_depth 1\n" in patches[0].body["data"]["metrics"]
    dep = _created(conformant_cluster, "Deployment", "pod_autoscaling")[0]
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_evidence_is_recorded(conformant_cluster: Cluster) -> None:
    report = conformant_cluster.run(focus="accelerator_metrics|robust")
    metrics = _by_id(report)["accelerator_metrics"]
    assert any("DCGM_FI_DEV_GPU_UTIL" in a.content for a in metrics.artifacts)
    assert metrics.details["devices"] == ["gpu-node-1/GPU-c2f76b33-7953-256e-8f33-1343419b1a1c", "gpu-node-2/GPU-5d1e0a77-1c2b-4e9f-9a33-0b6f2c7d8e11"]
    robust = _by_id(report)["robust_controller"]
    assert any("denied the request: worker group names must be unique" in s.message for s in robust.steps)


# -- non-conformant ------------------------------------------------------------------------------

NONCONFORMANT = {
    "dra_support": (Status.FAILED, "resource.k8s.io/v1 is not served (DRA is GA since Kubernetes 1.34); served: v1beta1"),
    "driver_runtime_management": (Status.FAILED, "no verifiable mechanism: accelerator nodes carry no driver version label"),
    "gpu_sharing": (Status.FAILED, "no GPU sharing mechanism"),
    "virtualized_accelerator": (Status.SKIPPED, "no virtualized accelerators: no node reports nvidia.com/vgpu.present=true"),
    "ai_inference": (Status.FAILED, "no accepted GatewayClass (found: unconfigured)"),
    "advanced_inference_ingress": (Status.FAILED, "the Gateway API Inference Extension is not installed"),
    "high_performance_networking": (Status.FAILED, "a pod attached to Multus network default/rdma-net saw only eth0 interface(s)"),
    "disaggregated_inference": (Status.FAILED, "no disaggregated inference solution found"),
    "gang_scheduling": (Status.FAILED, "no gang scheduling solution found: install Kueue"),
    "cluster_autoscaling": (Status.FAILED, "the autoscaler did not add an accelerator node within 1s: unschedulable: 0/1 nodes are available"),
    "pod_autoscaling": (Status.FAILED, "no custom metrics API (custom.metrics.k8s.io) is registered"),
    "accelerator_metrics": (Status.FAILED, "gpu-operator/gpu-metrics-exporter:9400/metrics lacks per-accelerator utilization and memory metrics"),
    "ai_service_metrics": (Status.FAILED, "no monitoring system found"),
    "secure_accelerator_access": (Status.FAILED, "VIOLATION: a pod without an accelerator request saw /dev/nvidia[0-9]*; the non-requesting container"),
    "robust_controller": (Status.FAILED, "KubeRay has no ValidatingWebhookConfiguration for ray.io"),
    "workload_sandboxing": (Status.FAILED, "RuntimeClass gvisor on node gpu-node-1 is not isolated from the host: it "
                                           "runs on the host's kernel 5.15.0-1071-azure (same release, /proc/version, "
                                           "boot id)"),
}


@pytest.mark.parametrize("version", ["1.35", "1.36"])
def test_nonconformant_cluster_fails(nonconformant_cluster: Cluster, version: str) -> None:
    report = nonconformant_cluster.run(version=version, options=fast_options(autoscaling_timeout=1.0))
    results = _by_id(report)
    for rid, result in results.items():
        status, reason = NONCONFORMANT[rid]
        assert result.status is status and result.reason.startswith(reason), (rid, result.status, result.reason)
    assert results["virtualized_accelerator"].not_applicable
    assert not report.must_satisfied and report.exit_code == 1
    assert nonconformant_cluster.api.store.labelled(MANAGED_BY_SELECTOR) == []
