"""Serving at scale: ``high_performance_networking`` and ``disaggregated_inference``.

Test plans: KAR-0010 (secondary network resources are discoverable and pods
attach to them) and KAR-0041 (prefill and decode run as separate instances).
Both requirements are SHOULD. The checks find what the platform offers
(DRA network devices, Multus NetworkAttachmentDefinitions, RDMA/SR-IOV device
plugins; running prefill/decode pods of llm-d, Dynamo, KServe...) and
exercise it where that can be done without installing anything: a pod
attached to the secondary network must see an extra interface.
"""

from __future__ import annotations

from typing import Any

from turbok.conformance.checks.base import (
    Check,
    CheckContext,
    Outcome,
    failed,
    passed,
    register,
    skipped,
    unknown,
)
from turbok.conformance.checks.workloads import (
    claim_template,
    container,
    device_attributes,
    device_class_drivers,
    discover_accelerators,
    dra_api,
    pod_problem,
    require_pods,
    run_pod,
)

__all__ = ["DisaggregatedInference", "HighPerformanceNetworking", "interfaces"]

_NET_ATTRS = {"ifname", "interface", "rdma", "pciaddress", "numanode", "mac", "mtu", "linkspeed", "bandwidth"}
_NET_RESOURCE_HINTS = ("rdma", "sriov", "infiniband", "hca", "networking.gke.io.networks", "vfio-net")
_SCRIPT = "echo IFACES=$(ls /sys/class/net | tr '\\n' ' '); if ls /dev/infiniband >/dev/null 2>&1; then echo RDMA=yes; else echo RDMA=no; fi"


def interfaces(log: str) -> tuple[list[str], bool]:
    """Non-loopback interfaces and RDMA presence printed by the probe."""
    ifaces: list[str] = []
    rdma = False
    for line in log.splitlines():
        if line.startswith("IFACES="):
            ifaces = [i for i in line[7:].split() if i != "lo"]
        if line.strip() == "RDMA=yes":
            rdma = True
    return ifaces, rdma


@register
class HighPerformanceNetworking(Check):
    id = "high_performance_networking"
    plan = (
        "Find specialized network resources (DRA devices with network attributes, Multus "
        "NetworkAttachmentDefinitions, RDMA/SR-IOV device plugin resources); attach a pod to one and require a "
        "secondary interface (or RDMA devices). N/A when the platform advertises none."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        dra = self._dra_network_classes(ctx)
        if dra:
            cls, attrs = dra
            ctx.step(f"DRA DeviceClass {cls} selects network devices with attributes {', '.join(sorted(attrs))}")
            tmpl = ctx.create(claim_template(dra_api(ctx), ctx.name("nic"), "nic", cls))
            pod_spec = {"containers": [container("probe", ctx.options.image, _SCRIPT, resources={"claims": [{"name": "nic"}]})],
                        "resourceClaims": [{"name": "nic", "resourceClaimTemplateName": tmpl["metadata"]["name"]}]}
            return self._judge(ctx, pod_spec, f"DRA DeviceClass {cls} (characteristics: {', '.join(sorted(attrs))})")
        nads = []
        if ctx.client.discovery.has_resource("k8s.cni.cncf.io", "network-attachment-definitions"):
            version = ctx.client.discovery.preferred_version("k8s.cni.cncf.io") or "v1"
            nads = ctx.client.list(f"k8s.cni.cncf.io/{version}", "NetworkAttachmentDefinition")
        if nads:
            nad = nads[0]["metadata"]
            ref = f"{nad.get('namespace', 'default')}/{nad['name']}"
            pod = {"containers": [container("probe", ctx.options.image, _SCRIPT)]}
            return self._judge(ctx, pod, f"Multus network {ref}", annotations={"k8s.v1.cni.cncf.io/networks": ref})
        resource = self._device_plugin_resource(ctx)
        if resource:
            pod = {"containers": [container("probe", ctx.options.image, _SCRIPT, resources={"limits": {resource: "1"}})]}
            return self._judge(ctx, pod, f"device plugin resource {resource}")
        raise skipped(
            "no specialized network resources advertised (no DRA network devices, no NetworkAttachmentDefinitions, "
            "no RDMA/SR-IOV resources): N/A when high-performance pod-to-pod networking is not offered",
            not_applicable=True,
        )

    def _judge(self, ctx: CheckContext, pod_spec: dict[str, Any], via: str, annotations: dict[str, str] | None = None) -> Outcome:
        meta: dict[str, Any] = {"name": ctx.name("nic-probe")}
        if annotations:
            meta["annotations"] = annotations
        run = run_pod(ctx, {"metadata": meta, "spec": pod_spec})
        if not run.succeeded:
            return failed(f"a pod attached to {via} did not run: {pod_problem(run.pod)}")
        ifaces, rdma = interfaces(run.logs.get("probe", ""))
        if len(ifaces) > 1 or rdma:
            return passed(f"a pod attached to {via} saw interfaces {', '.join(ifaces)}" + (" and RDMA devices" if rdma else ""),
                          interfaces=ifaces, rdma=rdma)
        return failed(f"a pod attached to {via} saw only {', '.join(ifaces) or 'no'} interface(s) and no RDMA devices")

    @staticmethod
    def _dra_network_classes(ctx: CheckContext) -> tuple[str, set[str]] | None:
        if not ctx.client.discovery.has_group("resource.k8s.io"):
            return None
        drivers: dict[str, set[str]] = {}
        for s in ctx.client.list(dra_api(ctx), "ResourceSlice"):
            spec = s.get("spec") or {}
            for dev in spec.get("devices") or []:
                keys = {k.rsplit("/", 1)[-1].lower() for k in device_attributes(dev)}
                if keys & _NET_ATTRS:
                    drivers.setdefault(spec.get("driver", ""), set()).update(keys & _NET_ATTRS)
        for dc in ctx.client.list(dra_api(ctx), "DeviceClass"):
            for driver in device_class_drivers(dc) & set(drivers):
                return dc["metadata"]["name"], drivers[driver]
        return None

    @staticmethod
    def _device_plugin_resource(ctx: CheckContext) -> str | None:
        for node in ctx.client.list("v1", "Node"):
            for name, value in ((node.get("status") or {}).get("allocatable") or {}).items():
                if any(h in name.lower() for h in _NET_RESOURCE_HINTS) and str(value) not in ("0", ""):
                    return str(name)
        return None


_SOLUTIONS = {
    ("nvidia.com", "dynamographdeployments"): "NVIDIA Dynamo",
    ("serving.kserve.io", "llminferenceservices"): "KServe LLMInferenceService",
    ("ome.io", "inferenceservices"): "SGLang OME",
    ("leaderworkerset.x-k8s.io", "leaderworkersets"): "LeaderWorkerSet",
}


def _role(labels: dict[str, str]) -> str | None:
    for key, value in labels.items():
        v = value.lower()
        k = key.lower()
        if v in ("prefill", "decode") or (("role" in k or "component" in k or "phase" in k) and ("prefill" in v or "decode" in v)):
            return "prefill" if "prefill" in v else "decode"
    return None


@register
class DisaggregatedInference(Check):
    id = "disaggregated_inference"
    plan = (
        "Look for a running disaggregated inference deployment: Running pods labelled with a prefill role and "
        "separate Running pods labelled with a decode role in one namespace (llm-d, Dynamo, KServe, SGLang...)."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        by_ns: dict[str, dict[str, list[str]]] = {}
        for pod in ctx.client.list("v1", "Pod"):
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            role = _role((pod.get("metadata") or {}).get("labels") or {})
            if role:
                ns = pod["metadata"].get("namespace", "")
                by_ns.setdefault(ns, {"prefill": [], "decode": []})[role].append(pod["metadata"]["name"])
        for ns, roles in sorted(by_ns.items()):
            if roles["prefill"] and roles["decode"]:
                return passed(
                    f"namespace {ns} runs {len(roles['prefill'])} prefill and {len(roles['decode'])} decode pod(s) separately",
                    namespace=ns, prefill=roles["prefill"], decode=roles["decode"],
                )
        installed = sorted({name for (group, res), name in _SOLUTIONS.items() if ctx.client.discovery.has_resource(group, res)})
        if installed:
            return unknown(
                f"{', '.join(installed)} installed, but no running prefill/decode pods found: deploy a disaggregated "
                "model and rerun, or verify manually"
            )
        if not discover_accelerators(ctx).present:
            raise skipped("no accelerators and no inference solution found")
        return failed("no disaggregated inference solution found (llm-d, Dynamo, KServe, SGLang...) and no prefill/decode pods")
