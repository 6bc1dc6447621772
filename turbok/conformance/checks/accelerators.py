"""Accelerator management: ``driver_runtime_management``, ``gpu_sharing``, ``virtualized_accelerator``.

Test plans: KAR-0001, KAR-0003, KAR-0004. Each compares what the platform
publishes (node labels from GPU feature discovery, DRA device attributes)
with what a pod actually sees on that node. The vendor specifics known today
are NVIDIA (and AMD for driver versions); other accelerators end Unknown,
"verify manually", as the test plans ask.
"""

from __future__ import annotations

import re
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
    Accelerators,
    container,
    device_attributes,
    dra_api,
    pin_to_node,
    pod_problem,
    request_accelerator,
    require_accelerators,
    run_pod,
)

__all__ = ["DriverRuntimeManagement", "GpuSharing", "VirtualizedAccelerator", "published_versions", "same_version"]


def _labels(node: dict[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def _joined(labels: dict[str, str], *keys: str) -> str | None:
    parts = [labels.get(k) for k in keys]
    parts = [p for p in parts if p]
    return ".".join(p for p in parts if p) if parts else None


def same_version(a: str, b: str) -> bool:
    """``580.105.08`` equals ``580.105.8``; ``12.9`` equals ``12.9.0``."""
    def norm(v: str) -> list[int]:
        nums = [int(x) for x in re.findall(r"\d+", v)]
        while nums and nums[-1] == 0 and len(nums) > 2:
            nums.pop()
        return nums
    return bool(a and b) and norm(a) == norm(b)


def published_versions(ctx: CheckContext, acc: Accelerators, node: dict[str, Any] | str) -> dict[str, str]:
    """Driver and runtime versions the platform publishes for a node: labels first, then DRA attributes."""
    name = node if isinstance(node, str) else node["metadata"]["name"]
    labels = {} if isinstance(node, str) else _labels(node)
    found: dict[str, str] = {}
    vendor = acc.vendor.name if acc.vendor else ""
    if vendor == "nvidia":
        driver = labels.get("nvidia.com/cuda.driver-version.full") or _joined(
            labels, "nvidia.com/cuda.driver.major", "nvidia.com/cuda.driver.minor", "nvidia.com/cuda.driver.rev")
        runtime = labels.get("nvidia.com/cuda.runtime-version.full") or _joined(
            labels, "nvidia.com/cuda.runtime.major", "nvidia.com/cuda.runtime.minor")
        if driver:
            found["driver"], found["driverSource"] = driver, "node label nvidia.com/cuda.driver-version.full"
        if runtime:
            found["runtime"], found["runtimeSource"] = runtime, "node label nvidia.com/cuda.runtime-version.full"
    elif vendor == "amd" and labels.get("amd.com/gpu.driver-version"):
        found["driver"], found["driverSource"] = labels["amd.com/gpu.driver-version"], "node label amd.com/gpu.driver-version"
    if acc.dra_driver and ("driver" not in found or "runtime" not in found):
        for s in ctx.client.list(dra_api(ctx), "ResourceSlice"):
            spec = s.get("spec") or {}
            if spec.get("driver") != acc.dra_driver or spec.get("nodeName") != name:
                continue
            for dev in spec.get("devices") or []:
                attrs = device_attributes(dev)
                for attr, key in (("driverVersion", "driver"), ("cudaDriverVersion", "runtime")):
                    value = (attrs.get(attr) or {}).get("version") or (attrs.get(attr) or {}).get("string")
                    if value and key not in found:
                        found[key], found[f"{key}Source"] = value, f"DRA attribute {acc.dra_driver}/{attr}"
    return found


_PROBES = {
    "nvidia": "echo DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1); "
              "echo CUDA=$(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | grep -o '[0-9.]*$')",
    "amd": "echo DRIVER=$(cat /sys/module/amdgpu/version)",
}


@register
class DriverRuntimeManagement(Check):
    id = "driver_runtime_management"
    plan = (
        "Read the driver and runtime versions the platform publishes for an accelerator node (GPU feature "
        "discovery labels or DRA device attributes), run a pod with one accelerator on that node that prints "
        "the installed driver and CUDA versions, and compare."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        acc = require_accelerators(ctx)
        vendor = acc.vendor.name if acc.vendor else "unrecognised"
        if vendor not in _PROBES:
            return unknown(f"{vendor} accelerators: the automated check knows NVIDIA and AMD drivers; verify manually")
        candidates = acc.nodes or acc.node_names
        published: dict[str, str] = {}
        node: dict[str, Any] | str = candidates[0]
        for candidate in candidates:
            published = published_versions(ctx, acc, candidate)
            if published.get("driver"):
                node = candidate
                break
        node_name = node if isinstance(node, str) else node["metadata"]["name"]
        if not published.get("driver"):
            return failed(
                "no verifiable mechanism: accelerator nodes carry no driver version label and DRA devices no "
                "driverVersion attribute (deploy GPU feature discovery or a DRA driver that publishes them)"
            )
        ctx.step(f"node {node_name} publishes " + ", ".join(f"{k}={v}" for k, v in published.items() if "Source" not in k))
        image = ctx.options.cuda_image if vendor == "nvidia" else ctx.options.image
        spec = {"containers": [container("probe", image, _PROBES[vendor])]}
        request_accelerator(ctx, acc, spec)
        pin_to_node(ctx, spec, node_name)
        run = run_pod(ctx, {"metadata": {"name": ctx.name("probe")}, "spec": spec})
        if not run.succeeded:
            return failed(f"a pod with one accelerator could not use it on {node_name}: {pod_problem(run.pod)}", published=published)
        out = run.logs.get("probe", "")
        actual = dict(re.findall(r"^(DRIVER|CUDA)=(\S*)", out, re.M))
        details = {"node": node_name, "published": published, "actual": actual}
        if not actual.get("DRIVER"):
            return failed("the probe pod ran but could not read the installed driver version", **details)
        if not same_version(published["driver"], actual["DRIVER"]):
            return failed(f"published driver {published['driver']} but {actual['DRIVER']} is installed on {node_name}", **details)
        if published.get("runtime") and actual.get("CUDA") and not same_version(published["runtime"], actual["CUDA"]):
            return failed(f"published CUDA runtime {published['runtime']} but the driver reports {actual['CUDA']}", **details)
        return passed(
            f"published and installed driver agree on {node_name} ({actual['DRIVER']}"
            + (f", CUDA {actual['CUDA']}" if actual.get("CUDA") else "") + f"; via {published['driverSource']})",
            **details,
        )


@register
class GpuSharing(Check):
    id = "gpu_sharing"
    plan = (
        "Find a GPU sharing mechanism (MIG resources, time-slicing or MPS replicas, partitionable DRA devices); "
        "for time-slicing run one more pod than there are physical GPUs on a node and require a shared GPU UUID; "
        "for MIG run a pod on one MIG slice."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        acc = require_accelerators(ctx)
        if not acc.vendor or acc.vendor.name != "nvidia":
            return unknown(f"{acc.vendor.name if acc.vendor else 'unrecognised'} accelerators: the automated check knows NVIDIA sharing; verify manually")
        nodes = ctx.client.list("v1", "Node")
        for node in nodes:
            labels, alloc = _labels(node), (node.get("status") or {}).get("allocatable") or {}
            mig = sorted(k for k in alloc if k.startswith("nvidia.com/mig-") and str(alloc[k]) not in ("0", ""))
            if mig:
                return self._mig(ctx, acc, node, mig[0])
            strategy = labels.get("nvidia.com/gpu.sharing-strategy", "")
            replicas = int(labels.get("nvidia.com/gpu.replicas", "1") or "1")
            if strategy in ("time-slicing", "mps") or replicas > 1:
                resource = "nvidia.com/gpu.shared" if "nvidia.com/gpu.shared" in alloc else "nvidia.com/gpu"
                return self._shared(ctx, acc, node, resource, strategy or "time-slicing", max(replicas, 2))
        if acc.dra_driver:
            partitions = self._dra_partitions(ctx, acc)
            if partitions:
                return passed(f"{partitions} partitionable or MIG device(s) published through DRA by {acc.dra_driver}")
        return failed("no GPU sharing mechanism: no MIG resources, no time-slicing/MPS replicas, no partitionable DRA devices")

    def _mig(self, ctx: CheckContext, acc: Accelerators, node: dict[str, Any], resource: str) -> Outcome:
        spec = {"containers": [container("probe", ctx.options.cuda_image, "nvidia-smi -L")]}
        request_accelerator(ctx, acc, spec, resource=resource)
        pin_to_node(ctx, spec, node["metadata"]["name"])
        run = run_pod(ctx, {"metadata": {"name": ctx.name("mig")}, "spec": spec})
        if run.succeeded and "MIG" in run.logs.get("probe", ""):
            return passed(f"a pod ran on one {resource} slice (MIG) on {node['metadata']['name']}")
        return failed(f"a pod requesting {resource} did not get a MIG device: {pod_problem(run.pod)}")

    def _shared(self, ctx: CheckContext, acc: Accelerators, node: dict[str, Any], resource: str, strategy: str, replicas: int) -> Outcome:
        labels = _labels(node)
        allocatable = int(str(((node.get("status") or {}).get("allocatable") or {}).get(resource, "0")) or 0)
        physical = int(labels.get("nvidia.com/gpu.count") or max(1, allocatable // replicas))
        count = min(physical + 1, allocatable)
        if count < 2:
            return failed(f"{strategy} is configured on {node['metadata']['name']} but only {allocatable} {resource} is allocatable")
        ctx.step(f"{strategy}: {allocatable} x {resource} over {physical} physical GPU(s); running {count} pods")
        runs = []
        for i in range(count):
            spec = {"containers": [container("probe", ctx.options.cuda_image, "nvidia-smi -L")]}
            request_accelerator(ctx, acc, spec, resource=resource)
            pin_to_node(ctx, spec, node["metadata"]["name"])
            runs.append(run_pod(ctx, {"metadata": {"name": ctx.name(f"share-{i}")}, "spec": spec}))
        bad = [r for r in runs if not r.succeeded]
        if bad:
            return failed(f"{len(bad)} of {count} pods sharing GPUs did not run: {pod_problem(bad[0].pod)}")
        uuids = [set(re.findall(r"UUID: (GPU-[0-9a-f-]+)", r.logs.get("probe", ""))) for r in runs]
        seen: dict[str, int] = {}
        for group in uuids:
            for u in group:
                seen[u] = seen.get(u, 0) + 1
        shared = sorted(u for u, n in seen.items() if n > 1)
        if not shared:
            return failed(f"{count} pods ran but no two saw the same GPU: {strategy} did not oversubscribe", uuids=[sorted(u) for u in uuids])
        return passed(f"{count} pods shared GPU(s) {', '.join(shared)} through {strategy} ({resource})", strategy=strategy)

    @staticmethod
    def _dra_partitions(ctx: CheckContext, acc: Accelerators) -> int:
        count = 0
        for s in ctx.client.list(dra_api(ctx), "ResourceSlice"):
            if (s.get("spec") or {}).get("driver") != acc.dra_driver:
                continue
            for dev in (s.get("spec") or {}).get("devices") or []:
                attrs = device_attributes(dev)
                kind = (attrs.get("type") or {}).get("string", "")
                if dev.get("consumesCounters") or kind == "mig":
                    count += 1
        return count


@register
class VirtualizedAccelerator(Check):
    id = "virtualized_accelerator"
    plan = (
        "Find nodes whose accelerators are virtualized (nvidia.com/vgpu.present=true); run a pod with one "
        "accelerator there and require the device to report vGPU mode. N/A when no virtualized accelerators exist."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        acc = require_accelerators(ctx)
        if not acc.vendor or acc.vendor.name != "nvidia":
            return unknown(f"{acc.vendor.name if acc.vendor else 'unrecognised'} accelerators: the automated check knows NVIDIA vGPU; verify manually")
        vnodes = [n for n in acc.nodes if _labels(n).get("nvidia.com/vgpu.present") == "true"]
        if not vnodes:
            raise skipped("no virtualized accelerators: no node reports nvidia.com/vgpu.present=true", not_applicable=True)
        node = vnodes[0]["metadata"]["name"]
        spec = {"containers": [container("probe", ctx.options.cuda_image, "nvidia-smi -q | grep -i 'Virtualization Mode'; nvidia-smi -L")]}
        request_accelerator(ctx, acc, spec)
        pin_to_node(ctx, spec, node)
        run = run_pod(ctx, {"metadata": {"name": ctx.name("vgpu")}, "spec": spec})
        if not run.succeeded:
            return failed(f"a pod could not use a virtualized accelerator on {node}: {pod_problem(run.pod)}")
        if "vgpu" not in run.logs.get("probe", "").lower():
            return failed(f"{node} is labelled vGPU but the device does not report vGPU virtualization mode")
        return passed(f"a pod used a vGPU on {node} through the same resource request as a physical GPU")
