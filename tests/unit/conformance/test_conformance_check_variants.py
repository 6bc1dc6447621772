"""Checks against variations of the cluster doubles: each branch that decides an outcome."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from aiohttp import web

from tests.doubles import KubeApiDouble, Reject
from tests.doubles.kube_store import Event
from tests.unit.conformance.support import Cluster, fast_options
from turbok.client.kubeconfig import load_kubeconfig
from turbok.conformance.checks import REGISTRY
from turbok.conformance.checks.sandboxing import kernel_identity, parse_probe, probe_script
from turbok.conformance.errors import InvalidOptionError
from turbok.conformance.kube import KubeClient
from turbok.conformance.results import CheckResult, Status
from turbok.conformance.runner import Runner, RunSettings


def _one(cluster: Cluster, rid: str, **settings: Any) -> CheckResult:
    report = cluster.run(focus=f"^[^/]+/{rid}$", **settings)
    (result,) = [r for r in report.results if r.selected]
    assert isinstance(result, CheckResult)
    assert result.requirement.id == rid
    return result


def _drop_reactor(cluster: Cluster, fn: Any) -> None:
    cluster.api.store.reactors = [r for r in cluster.api.store.reactors if r[3] != fn]


def test_driver_mismatch(nonconformant_cluster: Cluster) -> None:
    store = nonconformant_cluster.api.store
    node = store.get("v1", "Node", "gpu-node-1")
    assert node is not None
    node["metadata"]["labels"]["nvidia.com/cuda.driver-version.full"] = "580.105.08"
    store.update(node)
    result = _one(nonconformant_cluster, "driver_runtime_management")
    assert result.status is Status.FAILED
    assert result.reason == "published driver 580.105.08 but 575.57.08 is installed on gpu-node-1"
    assert result.details["actual"] == {"DRIVER": "575.57.08", "CUDA": "13.0"}


def test_kueue_that_does_not_manage_jobs(conformant_cluster: Cluster) -> None:
    _drop_reactor(conformant_cluster, conformant_cluster.sim._job_created)
    result = _one(conformant_cluster, "gang_scheduling", options=fast_options(timeout=1.0))
    assert result.status is Status.FAILED
    assert "did not complete: workload missing, job suspend=True, active=0, succeeded=0" in result.reason


def test_no_autoscaler_is_not_applicable(conformant_cluster: Cluster) -> None:
    store = conformant_cluster.api.store
    store.remove(store.resource_for("v1", "ConfigMap"), "kube-system", "cluster-autoscaler-status")
    result = _one(conformant_cluster, "cluster_autoscaling")
    assert result.status is Status.SKIPPED and result.not_applicable
    assert result.reason.startswith("no cluster autoscaler found")


def test_autoscaler_that_never_scales_down(conformant_cluster: Cluster) -> None:
    conformant_cluster.sim.scale_down = False
    result = _one(conformant_cluster, "cluster_autoscaling", options=fast_options(autoscaling_timeout=1.5))
    assert result.status is Status.UNKNOWN
    assert result.reason.startswith("scale-up verified (gpu-node-3 added); scale-down not observed within 1.5s")


def test_rejection_not_by_a_webhook(conformant_cluster: Cluster) -> None:
    _drop_reactor(conformant_cluster, conformant_cluster.sim._ray_admission)

    def schema(event: Event) -> None:
        raise Reject(422, "Invalid", 'RayCluster.ray.io "x" is invalid: spec.workerGroupSpecs: Duplicate value')

    conformant_cluster.api.store.on("create", schema, group="ray.io", resource="rayclusters")
    result = _one(conformant_cluster, "robust_controller")
    assert result.status is Status.FAILED
    assert result.reason.startswith("the invalid RayCluster was rejected, but not by an admission webhook")


def test_webhook_that_accepts_everything(conformant_cluster: Cluster) -> None:
    _drop_reactor(conformant_cluster, conformant_cluster.sim._ray_admission)
    result = _one(conformant_cluster, "robust_controller")
    assert result.status is Status.FAILED and result.reason.startswith("the webhook accepted an invalid RayCluster")


def test_prometheus_that_scrapes_nothing(conformant_cluster: Cluster) -> None:
    conformant_cluster.sim.conformant = False
    result = _one(conformant_cluster, "ai_service_metrics", options=fast_options(timeout=1.0))
    assert result.status is Status.FAILED
    assert "did not collect turbok_conformance_requests_total from a workload within 1s: last answer empty" in result.reason


def test_incomplete_resource_pools(conformant_cluster: Cluster) -> None:
    store = conformant_cluster.api.store
    for s in store.list("resource.k8s.io/v1", "ResourceSlice"):
        s["spec"]["pool"]["resourceSliceCount"] = 2
        store.update(s)
    result = _one(conformant_cluster, "dra_support")
    assert result.status is Status.FAILED and result.reason.startswith("no complete resource pool")


def test_no_resource_slices(conformant_cluster: Cluster) -> None:
    store = conformant_cluster.api.store
    for s in store.list("resource.k8s.io/v1", "ResourceSlice"):
        store.remove(store.resource_for("resource.k8s.io/v1", "ResourceSlice"), None, s["metadata"]["name"])
    result = _one(conformant_cluster, "dra_support")
    assert result.status is Status.SKIPPED and not result.not_applicable
    assert "no DRA driver publishes devices (no ResourceSlices)" in result.reason
    # the CRUD probe ran before: created, read back, deleted
    kinds = [(r.method, r.path.rsplit("/", 2)[-2:]) for r in conformant_cluster.api.requests if "resourceclaimtemplates" in r.path]
    assert [m for m, _ in kinds] == ["POST", "GET", "DELETE"]


def test_api_failure_inside_a_check_is_unknown(conformant_cluster: Cluster) -> None:
    def broken(event: Event) -> None:
        raise Reject(500, "InternalError", "etcdserver: request timed out")

    conformant_cluster.api.store.on("read", broken, group="gateway.networking.k8s.io", resource="gatewayclasses")
    result = _one(conformant_cluster, "ai_inference")
    assert result.status is Status.UNKNOWN
    assert result.reason.startswith("cluster error: GET /apis/gateway.networking.k8s.io/v1/gatewayclasses: 500 InternalError: etcdserver")


def test_a_crashing_check_does_not_stop_the_run(conformant_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: Any, ctx: Any) -> Any:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(REGISTRY["gang_scheduling"], "run", crash)
    report = conformant_cluster.run(focus="gang_scheduling|ai_inference")
    by_id = {r.requirement.id: r for r in report.results if r.selected}
    assert by_id["gang_scheduling"].status is Status.UNKNOWN
    assert by_id["gang_scheduling"].reason == "internal error in the check: ZeroDivisionError: bug"
    assert any(a.title == "internal error" and "ZeroDivisionError" in a.content for a in by_id["gang_scheduling"].artifacts)
    assert by_id["ai_inference"].status is Status.PASSED
    assert report.exit_code == 1  # an Unknown MUST is not a pass


def test_bad_endpoint_option_is_a_usage_error(conformant_cluster: Cluster) -> None:
    with pytest.raises(InvalidOptionError, match="--metrics-endpoint: 'dcgm:9400' is not NAMESPACE/SERVICE:PORT"):
        conformant_cluster.run(options=fast_options(metrics_endpoint="dcgm:9400"))


def test_explicit_metrics_endpoint(conformant_cluster: Cluster) -> None:
    result = _one(conformant_cluster, "accelerator_metrics", options=fast_options(metrics_endpoint="gpu-operator/nvidia-dcgm-exporter:9400/metrics"))
    assert result.status is Status.PASSED and result.details["endpoint"] == "gpu-operator/nvidia-dcgm-exporter:9400/metrics"
    result = _one(conformant_cluster, "accelerator_metrics", options=fast_options(metrics_endpoint="gpu-operator/nothing:9400"))
    assert result.status is Status.FAILED and result.reason.startswith("the metrics endpoint gpu-operator/nothing:9400/metrics did not answer")


# -- small fixtures written inline -------------------------------------------------------------

BASE_RESOURCES = [
    {"apiVersion": "v1", "kind": "Namespace", "name": "namespaces", "namespaced": False},
    {"apiVersion": "v1", "kind": "Node", "name": "nodes", "namespaced": False},
    {"apiVersion": "v1", "kind": "Pod", "name": "pods", "subresources": ["log", "status"]},
    {"apiVersion": "v1", "kind": "Service", "name": "services", "subresources": ["proxy"]},
    {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "name": "runtimeclasses", "namespaced": False},
]


def _cluster_double(tmp_path: Path, nodes: list[dict[str, Any]], extra: list[dict[str, Any]] | None = None) -> Iterator[Cluster]:
    from tests.doubles.ai_cluster import AiClusterDouble

    fixture = {"version": {"major": "1", "minor": "34", "gitVersion": "v1.34.3"},
               "resources": BASE_RESOURCES + (extra or []),
               "objects": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}, *nodes]}
    api = KubeApiDouble(fixture)
    sim = AiClusterDouble(api.store)
    with api.running():
        yield Cluster(api, sim, api.write_kubeconfig(tmp_path / "kubeconfig"))


def _node(name: str, allocatable: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "4", **allocatable}, "nodeInfo": {"kernelVersion": "6.1.0-28-amd64"}}}


@pytest.fixture
def cpu_only_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """DOUBLE: a Kubernetes 1.34 cluster with CPU nodes only and no RuntimeClass."""
    yield from _cluster_double(tmp_path, [_node("cpu-1", {})])


@pytest.fixture
def npu_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """DOUBLE: a cluster whose accelerators are an extended resource turbok does not know."""
    extra = [{"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "name": "podgroups"}]
    yield from _cluster_double(tmp_path, [_node("npu-1", {"example.com/npu": "8"})], extra)


def test_no_accelerators(cpu_only_cluster: Cluster) -> None:
    report = cpu_only_cluster.run()
    by_id = {r.requirement.id: r for r in report.results}
    assert report.checklist_version == "1.34"
    for rid in ("secure_accelerator_access", "accelerator_metrics"):
        assert by_id[rid].status is Status.SKIPPED and by_id[rid].reason.startswith("no accelerators found"), by_id[rid].reason
    assert by_id["workload_sandboxing"].status is Status.SKIPPED
    assert by_id["workload_sandboxing"].reason.startswith("no sandbox RuntimeClass (gvisor, kata...) found (RuntimeClasses: none)")
    assert by_id["pod_autoscaling"].status is Status.SKIPPED and by_id["pod_autoscaling"].not_applicable  # no HPA API at all
    assert report.exit_code == 1  # skipped MUSTs prove nothing


def test_unrecognised_accelerator(npu_cluster: Cluster) -> None:
    result = _one(npu_cluster, "secure_accelerator_access", options=fast_options(accelerator_resource="example.com/npu"))
    assert result.status is Status.UNKNOWN and "example.com/npu is not recognised" in result.reason
    result = _one(npu_cluster, "driver_runtime_management", version="1.35", options=fast_options(accelerator_resource="example.com/npu"))
    assert result.status is Status.UNKNOWN and result.reason.startswith("unrecognised accelerators")
    result = _one(npu_cluster, "gang_scheduling")
    assert result.status is Status.UNKNOWN and result.reason.startswith("Volcano found")


# -- turbok's embedded control plane (a double of it) --------------------------------------------

TURBOK_RESOURCES = [
    {"apiVersion": "v1", "kind": "Namespace", "name": "namespaces", "namespaced": False},
    {"apiVersion": "v1", "kind": "ConfigMap", "name": "configmaps"},
    {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "name": "sandboxes", "subresources": ["status"]},
    {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim", "name": "sandboxclaims"},
]


GVISOR_PROBE = {"release": "4.4.0", "version": "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016",
                "boot_id": "0b1d7d1e-5a1d-4b0c-9a11-000000000001", "pids": "3", "daemons": "", "memory": "",
                "host_paths": "", "interfaces": "lo ", "loopback_port": "0 closed"}


def probe_output(**overrides: str | None) -> str:
    """What the isolation probe prints in a gVisor sandbox, with some lines changed (None: left out)."""
    lines = {**GVISOR_PROBE, **overrides}
    out = "".join(f"PROBE {k}={v}\n" for k, v in lines.items() if v is not None and k != "done")
    return out + ("" if overrides.get("done", "yes") is None else "PROBE done\n")


class TurbokDouble:
    """DOUBLE of turbok's control plane: Sandboxes become Ready, its router runs commands "in" them.

    ``isolated``: the router answers as a gVisor sandbox would (``probe`` changes lines of that
    answer); otherwise it really runs the command on this machine, as an unsandboxed runtime would.
    """

    def __init__(self, tmp_path: Path, *, isolated: bool, ready: bool = True, router: bool = True,
                 probe: dict[str, str | None] | None = None) -> None:
        self.isolated = isolated
        self.probe = probe or {}
        self.executed: list[dict[str, Any]] = []
        self.api = KubeApiDouble({"version": {"major": "1", "minor": "35", "gitVersion": "v1.35.0+turbok"},
                                  "resources": TURBOK_RESOURCES,
                                  "objects": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}]},
                                 token="turbok-token", routes=[("POST", "/execute", self._execute)])
        if ready:
            self.api.store.on("created", self._ready, group="agents.x-k8s.io", resource="sandboxes")
        self.tmp_path, self.router = tmp_path, router

    def _ready(self, event: Event) -> None:
        assert event.obj is not None
        sb = dict(event.obj)
        sb["status"] = {"conditions": [{"type": "Ready", "status": "True", "reason": "SandboxReady"}]}
        event.store.update(sb)

    async def _execute(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.executed.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("Authorization") != "Bearer turbok-router-token":  # its own, not the API's
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.api.store.get("agents.x-k8s.io/v1beta1", "Sandbox", request.headers["X-Sandbox-ID"], request.headers["X-Sandbox-Namespace"]) is None:
            return web.json_response({"error": "no such sandbox"}, status=404)
        if self.isolated:
            out = probe_output(**self.probe)
        else:  # no sandbox at all: the command runs on this machine
            done = await asyncio.to_thread(subprocess.run, ["/bin/sh", "-c", body["command"]], capture_output=True,
                                           text=True, timeout=60, check=False)
            out = done.stdout
        return web.json_response({"stdout": out, "stderr": "", "exit_code": 0, "timed_out": False})

    def run(self, **settings: Any) -> Any:
        with self.api.running():
            ext = {"turbok.dev/router": {"url": self.api.url, "token": "turbok-router-token"}} if self.router else None
            kc = self.api.write_kubeconfig(self.tmp_path / "kubeconfig", extensions=ext)
            with KubeClient(load_kubeconfig(kc)) as client:
                return Runner(client, RunSettings(options=fast_options(timeout=1.0), **settings)).run()


def test_turbok_sandbox_has_its_own_kernel(tmp_path: Path) -> None:
    double = TurbokDouble(tmp_path, isolated=True)
    report = double.run()
    by_id = {r.requirement.id: r for r in report.results}
    assert report.cluster.engine == "turbok"
    sandboxing = by_id["workload_sandboxing"]
    assert sandboxing.status is Status.PASSED, sandboxing.reason
    assert sandboxing.reason.startswith(f"turbok Sandbox tc-workload-sandboxing-{report.run_id}-sandbox reports kernel "
                                        "'4.4.0' (differs from the host in release, /proc/version, boot id); no host "
                                        "processes, memory devices, host paths or host network in reach")
    host = sandboxing.details["host"]
    assert host["release"] == os.uname().release and host["bootId"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert set(sandboxing.details["verdicts"]) == {"kernel", "processes", "memory", "filesystem", "network"}
    (call,) = double.executed
    port = urlparse(double.api.url).port
    assert call["body"] == {"command": probe_script(port or 0), "timeout_seconds": 60}  # the API's loopback port
    assert call["headers"]["X-Sandbox-ID"] == f"tc-workload-sandboxing-{report.run_id}-sandbox"
    assert call["headers"]["X-Sandbox-Namespace"] == report.namespace
    (sandbox,) = double.api.store.created_of("Sandbox")
    assert sandbox["spec"]["podTemplate"]["spec"]["containers"][0]["image"] == "python-runtime-sandbox"
    assert sandbox["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "turbok-conformance"
    assert double.api.store.labelled("app.kubernetes.io/managed-by=turbok-conformance") == []
    # pod-based checks do not apply to an engine without Pods
    assert by_id["gang_scheduling"].status is Status.SKIPPED
    assert by_id["gang_scheduling"].reason.startswith("the cluster serves no core Pods")
    assert any("turbok embedded control plane" in n for n in report.notes)


def test_turbok_sandbox_on_the_host_kernel_fails(tmp_path: Path) -> None:
    """The probe really runs on this machine: same kernel and boot id, and the host's loopback answers."""
    report = TurbokDouble(tmp_path, isolated=False).run(focus="workload_sandboxing")
    (result,) = [r for r in report.results if r.selected]
    assert result.status is Status.FAILED
    assert result.reason.startswith("turbok Sandbox") and "is not isolated from the host" in result.reason
    assert f"it runs on the host's kernel {os.uname().release} (same release, /proc/version, boot id)" in result.reason
    assert "it reaches a port the host listens on at 127.0.0.1" in result.reason
    assert result.details["sandbox"]["bootId"] == result.details["host"]["bootId"] != ""


@pytest.mark.parametrize(("probe", "reason"), [
    ({"daemons": " kubelet containerd"}, "it sees host processes (containerd, kubelet)"),
    ({"memory": " /dev/mem"}, "it can read /dev/mem"),
    ({"host_paths": " /var/lib/kubelet"}, "host paths are mounted (/var/lib/kubelet)"),
    ({"interfaces": "lo eth0 docker0 "}, "it sees host network interfaces (docker0)"),
    ({"loopback_port": "6443 open"}, "it reaches a port the host listens on at 127.0.0.1"),
])
def test_each_isolation_breach_fails_the_check(tmp_path: Path, probe: dict[str, str], reason: str) -> None:
    report = TurbokDouble(tmp_path, isolated=True, probe=dict(probe)).run(focus="workload_sandboxing")
    (result,) = [r for r in report.results if r.selected]
    assert result.status is Status.FAILED and reason in result.reason, result.reason
    assert "runs on the host's kernel" not in result.reason  # the kernel itself is the sandbox's


def test_a_probe_that_does_not_finish_is_unknown(tmp_path: Path) -> None:
    report = TurbokDouble(tmp_path, isolated=True, probe={"done": None, "interfaces": None}).run(
        focus="workload_sandboxing")
    (result,) = [r for r in report.results if r.selected]
    assert result.status is Status.UNKNOWN and "did not finish" in result.reason


def test_probe_lines_parse() -> None:
    p = parse_probe(probe_output(daemons=" kubelet", interfaces="lo eth0 "))
    assert (p.release, p.boot_id, p.daemons, p.interfaces, p.loopback, p.done) == (
        "4.4.0", GVISOR_PROBE["boot_id"], ["kubelet"], ["lo", "eth0"], "closed", True)
    assert kernel_identity("6.1.0\nLinux version 6.1.0 (x)\n") == ("6.1.0", "Linux version 6.1.0 (x)")


def test_turbok_sandbox_never_ready(tmp_path: Path) -> None:
    report = TurbokDouble(tmp_path, isolated=True, ready=False).run(focus="workload_sandboxing")
    (result,) = [r for r in report.results if r.selected]
    assert result.status is Status.FAILED and "did not become Ready: no Ready condition" in result.reason


def test_turbok_without_router(tmp_path: Path) -> None:
    report = TurbokDouble(tmp_path, isolated=True, router=False).run(focus="workload_sandboxing")
    (result,) = [r for r in report.results if r.selected]
    assert result.status is Status.UNKNOWN and "publishes no turbok.dev/router extension" in result.reason


def test_transient_errors_while_waiting_are_retried(conformant_cluster: Cluster) -> None:
    failures = {"left": 2}

    def flaky(event: Event) -> None:
        if event.name and failures["left"]:
            failures["left"] -= 1
            raise Reject(503, "ServiceUnavailable", "the server is currently unable to handle the request")

    conformant_cluster.api.store.on("read", flaky, group="gateway.networking.k8s.io", resource="gateways")
    result = _one(conformant_cluster, "ai_inference")
    assert result.status is Status.PASSED and failures["left"] == 0


def test_persistent_errors_while_waiting_end_unknown(conformant_cluster: Cluster) -> None:
    def down(event: Event) -> None:
        if event.name:
            raise Reject(503, "ServiceUnavailable", "the server is currently unable to handle the request")

    conformant_cluster.api.store.on("read", down, group="gateway.networking.k8s.io", resource="gateways")
    result = _one(conformant_cluster, "ai_inference", options=fast_options(timeout=0.3))
    assert result.status is Status.UNKNOWN
    assert "503 ServiceUnavailable" in result.reason
