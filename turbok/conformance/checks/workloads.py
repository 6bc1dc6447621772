"""Helpers the checks share: finding accelerators, running probe pods, reading metrics.

No requirement logic here: these answer "which nodes have accelerators, of
which vendor, requested how", "run this script in a pod and give me its
logs", "serve this text as a Prometheus endpoint", "parse this exposition".
Results of discovery are cached in ``CheckContext.shared`` for the run.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from turbok.conformance.checks.base import CheckContext, skipped
from turbok.conformance.errors import ClusterError

__all__ = [
    "VENDORS",
    "Accelerators",
    "PodRun",
    "Vendor",
    "ask_to_scrape",
    "claim_template",
    "container",
    "device_attributes",
    "device_class_drivers",
    "discover_accelerators",
    "dra_api",
    "metrics_endpoint_objects",
    "parse_metrics",
    "pin_to_node",
    "pod_problem",
    "request_accelerator",
    "require_accelerators",
    "require_pods",
    "run_pod",
]


@dataclass(frozen=True)
class Vendor:
    name: str
    resources: tuple[str, ...]
    resource_patterns: tuple[str, ...]
    dra_drivers: tuple[str, ...]
    device_glob: str
    taint_keys: tuple[str, ...]


VENDORS: tuple[Vendor, ...] = (
    Vendor("nvidia", ("nvidia.com/gpu",), ("nvidia.com/mig-*", "nvidia.com/gpu.shared"), ("gpu.nvidia.com",),
           "/dev/nvidia[0-9]*", ("nvidia.com/gpu",)),
    Vendor("amd", ("amd.com/gpu",), (), ("gpu.amd.com",), "/dev/dri/renderD*", ("amd.com/gpu",)),
    Vendor("intel", ("gpu.intel.com/i915", "gpu.intel.com/xe"), (), ("gpu.intel.com",), "/dev/dri/renderD*",
           ("gpu.intel.com/i915",)),
    Vendor("google-tpu", ("google.com/tpu",), (), ("tpu.google.com",), "/dev/accel*", ("google.com/tpu",)),
    Vendor("aws-neuron", ("aws.amazon.com/neuron", "aws.amazon.com/neuroncore", "aws.amazon.com/neurondevice"), (), (),
           "/dev/neuron*", ("aws.amazon.com/neuron",)),
    Vendor("habana", ("habana.ai/gaudi",), (), (), "/dev/accel/accel*", ("habana.ai/gaudi",)),
)


@dataclass
class Accelerators:
    """Accelerators the cluster exposes, through device plugins and/or DRA."""

    vendor: Vendor | None = None
    resource: str | None = None  # extended resource name, when a device plugin exposes them
    nodes: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    dra_driver: str | None = None
    dra_nodes: list[str] = field(default_factory=list)
    device_classes: list[str] = field(default_factory=list)
    custom_resource: bool = False

    @property
    def present(self) -> bool:
        return bool(self.nodes) or bool(self.dra_nodes)

    @property
    def node_names(self) -> list[str]:
        names = [n["metadata"]["name"] for n in self.nodes]
        return names + [n for n in self.dra_nodes if n not in names]

    def describe(self) -> str:
        via = []
        if self.resource:
            via.append(f"{self.total} x {self.resource} on {len(self.nodes)} node(s)")
        if self.dra_driver:
            via.append(f"DRA driver {self.dra_driver} on {len(self.dra_nodes)} node(s)")
        return f"{self.vendor.name if self.vendor else 'unrecognised'} accelerators: " + "; ".join(via)

    def tolerations(self) -> list[dict[str, Any]]:
        keys = set(self.vendor.taint_keys if self.vendor else ())
        if self.resource:
            keys.add(self.resource)
        return [{"key": k, "operator": "Exists", "effect": "NoSchedule"} for k in sorted(keys)]


def _allocatable(node: dict[str, Any], name: str) -> int:
    value = str(((node.get("status") or {}).get("allocatable") or {}).get(name, "0"))
    try:
        return int(value)
    except ValueError:
        return 0


def _vendor_of_resource(name: str) -> Vendor | None:
    for v in VENDORS:
        if name in v.resources or any(fnmatch.fnmatch(name, p) for p in v.resource_patterns):
            return v
    return None


def dra_api(ctx: CheckContext) -> str:
    """``resource.k8s.io/<the server's preferred version>``."""
    return f"resource.k8s.io/{ctx.client.discovery.preferred_version('resource.k8s.io') or 'v1'}"


def claim_template(api: str, name: str, request: str, device_class: str, count: int = 1) -> dict[str, Any]:
    """A ResourceClaimTemplate asking ``count`` devices of ``device_class``, in the shape of ``api``'s version."""
    spec_req = {"deviceClassName": device_class, "count": count}
    # v1 and v1beta2 wrap a plain request in ``exactly``; v1beta1 has the fields inline.
    req = {"name": request, **({"exactly": spec_req} if api.endswith(("/v1", "/v1beta2")) else spec_req)}
    return {"apiVersion": api, "kind": "ResourceClaimTemplate", "metadata": {"name": name},
            "spec": {"spec": {"devices": {"requests": [req]}}}}


def device_attributes(device: dict[str, Any]) -> dict[str, Any]:
    """A ResourceSlice device's attributes (``basic.attributes`` in v1beta1)."""
    return dict(device.get("attributes") or (device.get("basic") or {}).get("attributes") or {})


_DRIVER_CEL = re.compile(r"""device\.driver\s*==\s*["']([^"']+)["']""")


def device_class_drivers(device_class: dict[str, Any]) -> set[str]:
    """Drivers a DeviceClass selects, read from ``device.driver == "..."`` in its CEL selectors."""
    found: set[str] = set()
    for sel in (device_class.get("spec") or {}).get("selectors") or []:
        found.update(_DRIVER_CEL.findall(str((sel.get("cel") or {}).get("expression", ""))))
    return found


def require_pods(ctx: CheckContext) -> None:
    """End the check as Skipped when the cluster serves no Pods (turbok's embedded control plane)."""
    if not ctx.client.discovery.has_resource("", "pods", "v1"):
        raise skipped("the cluster serves no core Pods (turbok's embedded control plane runs Sandboxes only)")


def discover_accelerators(ctx: CheckContext) -> Accelerators:
    """Which accelerators the cluster has; cached for the run."""
    if "accelerators" in ctx.shared:
        return ctx.shared["accelerators"]  # type: ignore[no-any-return]
    found = Accelerators()
    nodes = ctx.client.list("v1", "Node") if ctx.client.discovery.has_resource("", "nodes", "v1") else []
    wanted = ctx.options.accelerator_resource
    counts: dict[str, int] = {}
    for node in nodes:
        for name in ((node.get("status") or {}).get("allocatable") or {}):
            if (wanted and name == wanted) or (not wanted and name in {r for v in VENDORS for r in v.resources}):
                counts[name] = counts.get(name, 0) + _allocatable(node, name)
    if counts:
        found.resource = max(counts, key=lambda k: counts[k])
        found.vendor = _vendor_of_resource(found.resource)
        found.custom_resource = found.vendor is None
        found.nodes = [n for n in nodes if _allocatable(n, found.resource) > 0]
        found.total = counts[found.resource]
    if ctx.client.discovery.has_group("resource.k8s.io"):
        try:
            slices = ctx.client.list(dra_api(ctx), "ResourceSlice")
            classes = ctx.client.list(dra_api(ctx), "DeviceClass")
        except ClusterError:
            slices, classes = [], []
        accel_drivers = {d: v for v in VENDORS for d in v.dra_drivers}
        for s in slices:
            spec = s.get("spec") or {}
            driver = spec.get("driver", "")
            if driver in accel_drivers and spec.get("devices") and spec.get("nodeName"):
                found.dra_driver = found.dra_driver or driver
                if driver == found.dra_driver and spec["nodeName"] not in found.dra_nodes:
                    found.dra_nodes.append(spec["nodeName"])
        if found.dra_driver:
            found.vendor = found.vendor or accel_drivers[found.dra_driver]
            found.device_classes = [c["metadata"]["name"] for c in classes if found.dra_driver in device_class_drivers(c)]
    if found.present:
        ctx.step(f"found {found.describe()}")
    ctx.shared["accelerators"] = found
    return found


def require_accelerators(ctx: CheckContext) -> Accelerators:
    """The accelerators, or end the check Skipped: most requirements need at least one."""
    require_pods(ctx)
    acc = discover_accelerators(ctx)
    if not acc.present:
        raise skipped(
            "no accelerators found: no node allocates a known accelerator resource and no DRA driver publishes "
            "accelerator devices (pass --accelerator-resource for other resource names)"
        )
    return acc


def request_accelerator(ctx: CheckContext, acc: Accelerators, pod_spec: dict[str, Any], *, index: int = 0,
                        resource: str | None = None, count: int = 1) -> dict[str, Any]:
    """Make container ``index`` of ``pod_spec`` request ``count`` accelerators (device plugin or DRA) and tolerate their taints.

    Device plugin when the cluster exposes an extended resource; otherwise a
    ResourceClaimTemplate for the accelerator DeviceClass (created once per check).
    """
    c = pod_spec["containers"][index]
    name = resource or acc.resource
    if name:
        c.setdefault("resources", {}).setdefault("limits", {})[name] = str(count)
    elif acc.device_classes:
        template = ctx.shared.get(f"claim-template/{ctx.id}")
        if template is None:
            obj = ctx.create(claim_template(dra_api(ctx), ctx.name("claim"), "accelerator", acc.device_classes[0], count))
            template = ctx.shared[f"claim-template/{ctx.id}"] = obj["metadata"]["name"]
        pod_spec.setdefault("resourceClaims", []).append({"name": "accelerator", "resourceClaimTemplateName": template})
        c.setdefault("resources", {})["claims"] = [{"name": "accelerator"}]
    pod_spec["tolerations"] = acc.tolerations()
    return pod_spec


def pin_to_node(ctx: CheckContext, pod_spec: dict[str, Any], node_name: str) -> dict[str, Any]:
    """Keep the scheduler (and DRA allocation) in the loop, but only allow ``node_name``."""
    hostname = node_name
    node = ctx.client.get_or_none("v1", "Node", node_name)
    if node is not None:
        hostname = ((node.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/hostname", node_name)
    pod_spec["nodeSelector"] = {**pod_spec.get("nodeSelector", {}), "kubernetes.io/hostname": hostname}
    return pod_spec


def container(name: str, image: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["/bin/sh", "-c", script], **extra}


@dataclass
class PodRun:
    pod: dict[str, Any]
    phase: str
    logs: dict[str, str]

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"


def pod_problem(pod: dict[str, Any]) -> str:
    """Why a pod is not running, in one line (scheduling, image pull, crash)."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"unschedulable: {cond.get('message') or cond.get('reason')}"
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            if key in state and state[key].get("reason") not in (None, "Completed"):
                return f"container {cs.get('name')}: {state[key].get('reason')}: {state[key].get('message', '')}".strip(": ")
    return f"phase {status.get('phase', 'Pending')}"


def run_pod(ctx: CheckContext, pod: dict[str, Any], *, timeout: float | None = None) -> PodRun:
    """Create a pod (restartPolicy Never), wait until it ends, collect each container's log."""
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    pod.setdefault("spec", {}).setdefault("restartPolicy", "Never")
    created = ctx.create(pod)
    name, ns = created["metadata"]["name"], created["metadata"]["namespace"]
    last: dict[str, Any] = created

    def ended() -> dict[str, Any] | None:
        nonlocal last
        last = ctx.client.get("v1", "Pod", name, ns)
        return last if (last.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    ctx.wait_for(ended, timeout=timeout, what=f"pod {name} to finish")
    phase = (last.get("status") or {}).get("phase", "Pending")
    logs: dict[str, str] = {}
    for c in (last.get("spec") or {}).get("containers") or []:
        try:
            logs[c["name"]] = ctx.client.pod_logs(ns, name, c["name"])
        except ClusterError as e:
            logs[c["name"]] = ""
            ctx.step(f"no log for {name}/{c['name']}: {e}")
    for cname, text in logs.items():
        if text:
            ctx.artifact(f"log of pod {name}, container {cname}", text)
    ctx.step(f"pod {name} ended {phase}" if phase in ("Succeeded", "Failed") else f"pod {name} did not finish: {pod_problem(last)}")
    return PodRun(last, phase, logs)


def metrics_endpoint_objects(ctx: CheckContext, name: str, text: str, *, port: int = 8080, resources: dict[str, Any] | None = None,
                             replicas: int | None = None) -> list[dict[str, Any]]:
    """A ConfigMap holding ``text`` and a workload serving it at ``:port/metrics`` (busybox httpd), plus a Service.

    With ``replicas`` a Deployment, otherwise a Pod. Changing the ConfigMap changes
    what is served (the kubelet refreshes the mounted file within a minute).
    """
    labels = {"app": name}
    pod_spec: dict[str, Any] = {
        "containers": [
            container(
                "server", ctx.options.image, f"httpd -f -p {port} -h /www",
                ports=[{"containerPort": port, "name": "metrics"}],
                volumeMounts=[{"name": "metrics", "mountPath": "/www"}],
                resources=resources or {},
            )
        ],
        "volumes": [{"name": "metrics", "configMap": {"name": name}}],
    }
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    workload: dict[str, Any]
    if replicas is None:
        workload = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": labels, "annotations": annotations}, "spec": pod_spec}
    else:
        workload = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": {**labels, **ctx.labels()}, "annotations": annotations}, "spec": pod_spec}},
        }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"metrics": text}},
        workload,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels, "annotations": annotations},
         "spec": {"selector": labels, "ports": [{"name": "metrics", "port": port, "targetPort": port}]}},
    ]


def ask_to_scrape(ctx: CheckContext, name: str) -> None:
    """Ask the monitoring stack to scrape pods labelled ``app=name`` on their ``metrics`` port.

    Prometheus Operator PodMonitor and Google Managed Prometheus PodMonitoring
    when served; the ``prometheus.io/*`` annotations of ``metrics_endpoint_objects``
    cover annotation-based setups.
    """
    disc = ctx.client.discovery
    selector = {"matchLabels": {"app": name}}
    if disc.has_resource("monitoring.coreos.com", "podmonitors", "v1"):
        ctx.create({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": name},
                    "spec": {"selector": selector, "podMetricsEndpoints": [{"port": "metrics", "interval": "15s"}]}})
    if disc.has_resource("monitoring.googleapis.com", "podmonitorings", "v1"):
        ctx.create({"apiVersion": "monitoring.googleapis.com/v1", "kind": "PodMonitoring", "metadata": {"name": name},
                    "spec": {"selector": selector, "endpoints": [{"port": "metrics", "interval": "15s"}]}})


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> {sample name: [(labels, value)]}; ValueError when it is not that format."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples
