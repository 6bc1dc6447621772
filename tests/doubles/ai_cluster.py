"""DOUBLE of the controllers of an AI cluster, for the Kubernetes API double (``kube_api``).

Installs reactors on a ``kube_store.Store`` so that objects created through
the API behave roughly as on a real cluster: a scheduler and a kubelet
(pods land on nodes with free extended resources and "run" the probe
scripts turbok's checks use, printing what a real node would), a Deployment
controller, Kueue (quota admission of suspended Jobs, all or nothing), a
Gateway API implementation (Accepted/ResolvedRefs), an HPA fed by the metrics
pods serve, a cluster autoscaler (adds an accelerator node when pods stay
unschedulable, removes it when idle), KubeRay (webhook + reconcile) and
Prometheus (its query API answers from the pods it scrapes).

``conformant=False`` makes the same controllers misbehave the way a
non-conformant platform would: every container sees the GPU, the sandbox
runtime shares the host kernel, a driver differs from its label, secondary
networks attach nothing, the autoscaler never adds a node, Prometheus
scrapes nothing. Reconciliation is level-triggered and runs before every read.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .kube_store import Event, Reject, Store

__all__ = ["AiClusterDouble", "quantity"]

GVISOR_RELEASE = "4.4.0"
GVISOR_VERSION = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"


def quantity(text: str | int | float) -> float:
    """Kubernetes quantity -> float (``100m`` -> 0.1, ``1Gi`` -> 2**30)."""
    s = str(text)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factor
    return float(s)


def _cond(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"}


class AiClusterDouble:
    def __init__(self, store: Store, *, conformant: bool = True) -> None:
        self.store = store
        self.conformant = conformant
        self._pending_seen = 0
        self._idle_seen = 0
        self._uid = 0
        self._managed: set[tuple[str, str]] = set()
        self.scale_down = True  # False: the autoscaler adds nodes but never removes them
        store.on("created", self._pod_created, group="", resource="pods")
        store.on("created", self._cluster_queue_created, group="kueue.x-k8s.io", resource="clusterqueues")
        store.on("created", self._job_created, group="batch", resource="jobs")
        store.on("created", self._gateway_created, group="gateway.networking.k8s.io", resource="gateways")
        store.on("created", self._route_created, group="gateway.networking.k8s.io", resource="httproutes")
        store.on("create", self._ray_admission, group="ray.io", resource="rayclusters")
        store.on("created", self._ray_created, group="ray.io", resource="rayclusters")
        store.on("created", lambda e: self._managed.add((e.namespace or "", e.name or "")), group="apps", resource="deployments")
        store.on("deleted", self._deployment_deleted, group="apps", resource="deployments")
        store.on("read", lambda e: self.reconcile())
        for svc in self._list("v1", "Service"):
            if svc["metadata"]["name"] == "prometheus-operated":
                ns = svc["metadata"]["namespace"]
                store.set_proxy(ns, "prometheus-operated:9090", "api/v1/query", self._prometheus_query)

    def _list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.store.list(api_version, kind, namespace) if self.store.serves(api_version, kind) else []

    def _get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.store.get(api_version, kind, name, namespace) if self.store.serves(api_version, kind) else None

    # -- scheduler and kubelet ---------------------------------------------------------------

    @staticmethod
    def _extended(pod: dict[str, Any]) -> dict[str, float]:
        want: dict[str, float] = {}
        spec = pod.get("spec") or {}
        for c in spec.get("containers") or []:
            res = c.get("resources") or {}
            for name, value in {**(res.get("requests") or {}), **(res.get("limits") or {})}.items():
                if "/" in name:
                    want[name] = max(want.get(name, 0.0), quantity(value))
            if res.get("claims"):
                want["nvidia.com/gpu"] = want.get("nvidia.com/gpu", 0.0) + len(res["claims"])
        return want

    def _free(self, node: dict[str, Any]) -> dict[str, float]:
        free = {k: quantity(v) for k, v in ((node.get("status") or {}).get("allocatable") or {}).items() if "/" in k}
        for pod in self._list("v1", "Pod"):
            if (pod.get("spec") or {}).get("nodeName") == node["metadata"]["name"] and \
                    (pod.get("status") or {}).get("phase") in ("Pending", "Running"):
                for k, v in self._extended(pod).items():
                    free[k] = free.get(k, 0.0) - v
        return free

    def _schedule(self, pod: dict[str, Any]) -> str | None:
        want = self._extended(pod)
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        for node in self._list("v1", "Node"):
            labels = node["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            free = self._free(node)
            if all(free.get(k, 0.0) >= v for k, v in want.items()):
                return str(node["metadata"]["name"])
        return None

    def _pod_created(self, event: Event) -> None:
        assert event.obj is not None
        self._place(copy.deepcopy(event.obj))

    def _place(self, pod: dict[str, Any]) -> None:
        node = self._schedule(pod)
        status = pod.setdefault("status", {})
        if node is None:
            nodes = len(self._list("v1", "Node"))
            wanted = ", ".join(sorted(self._extended(pod))) or "cpu"
            status.update(phase="Pending", conditions=[_cond("PodScheduled", "False", "Unschedulable",
                                                             f"0/{nodes} nodes are available: {nodes} Insufficient {wanted}.")])
            self.store.update(pod)
            return
        pod["spec"]["nodeName"] = node
        long_running = any(not c.get("command") or "httpd" in " ".join(c.get("command") or []) for c in pod["spec"]["containers"])
        status["conditions"] = [_cond("PodScheduled", "True")]
        if long_running:
            status["phase"] = "Running"
            status["containerStatuses"] = [{"name": c["name"], "ready": True, "state": {"running": {}}} for c in pod["spec"]["containers"]]
        else:
            status["phase"] = "Succeeded"
            status["containerStatuses"] = [{"name": c["name"], "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}
                                           for c in pod["spec"]["containers"]]
            for c in pod["spec"]["containers"]:
                self.store.set_log(pod["metadata"]["namespace"], pod["metadata"]["name"], self._output(pod, c, node), c["name"])
        self.store.update(pod)

    def _output(self, pod: dict[str, Any], c: dict[str, Any], node_name: str) -> str:
        """What the container's script prints on this (double) node."""
        script = " ".join(c.get("command") or [])
        node = self._get("v1", "Node", node_name) or {}
        kernel = ((node.get("status") or {}).get("nodeInfo") or {}).get("kernelVersion", "6.8.0")
        has_gpu = any("/" in k for k in {**((c.get("resources") or {}).get("limits") or {})}) or bool((c.get("resources") or {}).get("claims"))
        if "ACCELERATOR_FOUND" in script:
            return "RESULT: ACCELERATOR_FOUND\n" if has_gpu or not self.conformant else "RESULT: ACCELERATOR_MISSING\n"
        if "driver_version" in script:
            driver = "580.105.08" if self.conformant else "575.57.08"
            return f"DRIVER={driver}\nCUDA=13.0\n"
        if "Virtualization Mode" in script:
            return "    Virtualization Mode                   : VGPU\nGPU 0: NVIDIA L4 (UUID: GPU-c2f76b33-7953-256e-8f33-1343419b1a1c)\n"
        if "nvidia-smi -L" in script:
            uuid = "GPU-5d1e0a77-1c2b-4e9f-9a33-0b6f2c7d8e11" if node_name == "gpu-node-2" else "GPU-c2f76b33-7953-256e-8f33-1343419b1a1c"
            return f"GPU 0: NVIDIA L4 (UUID: {uuid})\n"
        if "PROBE release" in script:  # turbok.conformance.checks.sandboxing's isolation probe
            sandboxed = (pod.get("spec") or {}).get("runtimeClassName") == "gvisor" and self.conformant
            release, version = (GVISOR_RELEASE, GVISOR_VERSION) if sandboxed else (kernel, f"Linux version {kernel} (buildd@lcy02) #16-Ubuntu SMP")
            boot = f"5a1d-{pod['metadata']['name']}" if sandboxed else f"b007-{node_name}"
            return (f"PROBE release={release}\nPROBE version={version}\nPROBE boot_id={boot}\nPROBE pids=2\nPROBE daemons=\n"
                    "PROBE memory=\nPROBE host_paths=\nPROBE interfaces=lo eth0 \nPROBE loopback_port=10248 closed\nPROBE done\n")
        if "IFACES=" in script:
            annotated = "k8s.v1.cni.cncf.io/networks" in ((pod.get("metadata") or {}).get("annotations") or {})
            claimed = bool((pod.get("spec") or {}).get("resourceClaims"))
            extra = " net1" if (annotated or claimed) and self.conformant else ""
            return f"IFACES=eth0 lo{extra}\nRDMA=no\n"
        return "gang member up\n" if "gang member" in script else ""

    # -- Deployment controller, HPA, autoscaler (level-triggered, on every read) --------------

    def reconcile(self) -> None:
        with self.store.lock:
            self._hpas()
            self._deployments()
            self._retry_pending()
            self._autoscaler()

    def _owned(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        name, ns = dep["metadata"]["name"], dep["metadata"]["namespace"]
        return [p for p in self._list("v1", "Pod", ns)
                if any(o.get("kind") == "Deployment" and o.get("name") == name for o in p["metadata"].get("ownerReferences") or [])]

    def _deployments(self) -> None:
        for dep in self._list("apps/v1", "Deployment"):
            if (dep["metadata"].get("namespace", ""), dep["metadata"]["name"]) not in self._managed:
                continue  # fixture deployments (operators) have no simulated pods
            want = int((dep.get("spec") or {}).get("replicas", 1))
            pods = self._owned(dep)
            for extra in pods[want:]:
                self.store.remove(self.store.resource_for("v1", "Pod"), extra["metadata"]["namespace"], extra["metadata"]["name"])
            for _ in range(len(pods), want):
                template = copy.deepcopy(dep["spec"]["template"])
                pod = {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {**template.get("metadata", {}), "name": f"{dep['metadata']['name']}-{self._next()}",
                                    "namespace": dep["metadata"]["namespace"],
                                    "ownerReferences": [{"kind": "Deployment", "name": dep["metadata"]["name"], "apiVersion": "apps/v1"}]},
                       "spec": template["spec"]}
                self._place(self.store.add(pod))
            running = sum(1 for p in self._owned(dep) if (p.get("status") or {}).get("phase") == "Running")
            status = {"replicas": want, "readyReplicas": running, "availableReplicas": running}
            if dep.get("status") != status:
                dep["status"] = status
                self.store.update(dep)

    def _next(self) -> str:
        self._uid += 1
        return f"{self._uid:05d}"

    def _retry_pending(self) -> None:
        for pod in self._list("v1", "Pod"):
            if (pod.get("status") or {}).get("phase") == "Pending" and not (pod.get("spec") or {}).get("nodeName"):
                self._place(copy.deepcopy(pod))

    def _deployment_deleted(self, event: Event) -> None:
        assert event.obj is not None
        for pod in self._owned(event.obj):
            self.store.remove(self.store.resource_for("v1", "Pod"), pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _autoscaler(self) -> None:
        if not self.conformant or self._get("v1", "ConfigMap", "cluster-autoscaler-status", "kube-system") is None:
            return
        pending = [p for p in self._list("v1", "Pod") if (p.get("status") or {}).get("phase") == "Pending"
                   and "nvidia.com/gpu" in self._extended(p)]
        extra = self._get("v1", "Node", "gpu-node-3")
        if pending and extra is None:
            self._pending_seen += 1
            if self._pending_seen >= 3:  # the autoscaler reacts after a while, not on the first look
                template = copy.deepcopy(self._get("v1", "Node", "gpu-node-1"))
                assert template is not None
                template["metadata"] = {"name": "gpu-node-3", "labels": {**template["metadata"]["labels"], "kubernetes.io/hostname": "gpu-node-3"}}
                self.store.add(template)
                self._pending_seen = 0
        elif extra is not None and self.scale_down and not any((p.get("spec") or {}).get("nodeName") == "gpu-node-3" and
                                           (p.get("status") or {}).get("phase") in ("Pending", "Running") for p in self._list("v1", "Pod")):
            self._idle_seen += 1
            if self._idle_seen >= 3:
                self.store.remove(self.store.resource_for("v1", "Node"), None, "gpu-node-3")
                self._idle_seen = 0

    def _served_value(self, pod: dict[str, Any], metric: str, labels: dict[str, str] | None = None) -> float | None:
        """The value a pod serves from its ConfigMap-mounted /metrics file."""
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            cm_name = (vol.get("configMap") or {}).get("name")
            cm = self._get("v1", "ConfigMap", cm_name, pod["metadata"]["namespace"]) if cm_name else None
            if not cm:
                continue
            for family in text_string_to_metric_families((cm.get("data") or {}).get("metrics", "")):
                for s in family.samples:
                    if s.name == metric and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                        return float(s.value)
        return None

    def _hpas(self) -> None:
        if "custom.metrics.k8s.io" not in self.store.extra_groups:
            return
        for hpa in self._list("autoscaling/v2", "HorizontalPodAutoscaler"):
            spec, ns = hpa["spec"], hpa["metadata"]["namespace"]
            dep = self._get("apps/v1", "Deployment", spec["scaleTargetRef"]["name"], ns)
            metric = spec["metrics"][0]["pods"]
            if dep is None:
                continue
            pods = [p for p in self._owned(dep) if (p.get("status") or {}).get("phase") == "Running"]
            values = [v for p in pods if (v := self._served_value(p, metric["metric"]["name"])) is not None]
            current = int(dep["spec"].get("replicas", 1))
            if not values:
                continue
            avg = sum(values) / len(values)
            target = quantity(metric["target"]["averageValue"])
            desired = max(spec.get("minReplicas", 1), min(spec["maxReplicas"], math.ceil(current * avg / target)))
            hpa["status"] = {"currentReplicas": current, "desiredReplicas": desired,
                             "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": metric["metric"]["name"]}, "current": {"averageValue": str(avg)}}}],
                             "conditions": [_cond("AbleToScale", "True", "SucceededGetScale"), _cond("ScalingActive", "True", "ValidMetricFound")]}
            self.store.update(hpa)
            if desired != current:
                dep["spec"]["replicas"] = desired
                self.store.update(dep)

    # -- Prometheus ---------------------------------------------------------------------------

    def _scraped(self, pod: dict[str, Any]) -> bool:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        if annotations.get("prometheus.io/scrape") == "true":
            return True
        labels = (pod.get("metadata") or {}).get("labels") or {}
        for pm in self._list("monitoring.coreos.com/v1", "PodMonitor", pod["metadata"]["namespace"]):
            want = ((pm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if all(labels.get(k) == v for k, v in want.items()):
                return True
        return False

    def _prometheus_query(self, query: dict[str, str]) -> tuple[int, str]:
        self.reconcile()
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})?", query.get("query", "").strip())
        if not m:
            return 400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})
        wanted = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        result = []
        if self.conformant:
            for pod in self._list("v1", "Pod"):
                if (pod.get("status") or {}).get("phase") != "Running" or not self._scraped(pod):
                    continue
                value = self._served_value(pod, m.group(1), wanted)
                if value is not None:
                    labels = {"__name__": m.group(1), **wanted, "namespace": pod["metadata"]["namespace"], "pod": pod["metadata"]["name"]}
                    result.append({"metric": labels, "value": [1774011473.784, str(int(value)) if value.is_integer() else str(value)]})
        return 200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})

    # -- Kueue, Gateway API, KubeRay ----------------------------------------------------------

    def _cluster_queue_created(self, event: Event) -> None:
        assert event.obj is not None
        cq = copy.deepcopy(event.obj)
        cq["status"] = {"conditions": [_cond("Active", "True", "Ready", "Can admit new workloads")]}
        self.store.update(cq)

    def _job_created(self, event: Event) -> None:
        assert event.obj is not None
        job = copy.deepcopy(event.obj)
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        spec = job["spec"]
        queue = (job["metadata"].get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        if not queue or not spec.get("suspend"):
            return
        lq = self._get("kueue.x-k8s.io/v1beta1", "LocalQueue", queue, ns)
        cq = self._get("kueue.x-k8s.io/v1beta1", "ClusterQueue", lq["spec"]["clusterQueue"]) if lq else None
        if cq is None:
            return
        flavor = cq["spec"]["resourceGroups"][0]["flavors"][0]
        quota = {r["name"]: quantity(r["nominalQuota"]) for r in flavor["resources"]}
        container = spec["template"]["spec"]["containers"][0]
        per_pod = quantity(container["resources"]["requests"]["cpu"])
        total = per_pod * spec["parallelism"]
        fits = total <= quota["cpu"] + 1e-9
        owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"], "controller": True}]
        conds = [_cond("QuotaReserved", "True", "QuotaReserved"), _cond("Admitted", "True", "Admitted")] if fits else [
            _cond("QuotaReserved", "False", "Pending",
                  f"couldn't assign flavors to pod set main: insufficient quota for cpu in flavor {flavor['name']}, "
                  f"request > maximum capacity ({int(total * 1000)}m > {quota['cpu']:g})")]
        self.store.add({"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
                        "metadata": {"name": f"job-{name}-{self._next()}", "namespace": ns, "ownerReferences": owner},
                        "spec": {"queueName": queue}, "status": {"conditions": conds}})
        if not fits:
            return
        job["spec"]["suspend"] = False
        for i in range(spec["parallelism"]):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{name}-{i}-{self._next()}", "namespace": ns,
                                "labels": {**(spec["template"].get("metadata", {}).get("labels") or {}), "job-name": name}},
                   "spec": copy.deepcopy(spec["template"]["spec"])}
            self._place(self.store.add(pod))
        job["status"] = {"succeeded": spec["parallelism"], "conditions": [_cond("Complete", "True")]}
        self.store.update(job)

    def _gateway_created(self, event: Event) -> None:
        assert event.obj is not None
        gw = copy.deepcopy(event.obj)
        cls = self._get("gateway.networking.k8s.io/v1", "GatewayClass", gw["spec"]["gatewayClassName"])
        ok = cls is not None and any(c["type"] == "Accepted" and c["status"] == "True" for c in (cls.get("status") or {}).get("conditions") or [])
        gw["status"] = {"conditions": [_cond("Accepted", "True" if ok else "False", "Accepted" if ok else "InvalidParameters"),
                                       _cond("Programmed", "True" if ok else "False")]}
        self.store.update(gw)

    def _route_created(self, event: Event) -> None:
        assert event.obj is not None
        route = copy.deepcopy(event.obj)
        ns = route["metadata"]["namespace"]
        resolved = True
        for rule in route["spec"].get("rules") or []:
            for ref in rule.get("backendRefs") or []:
                if ref.get("kind", "Service") == "Service":
                    resolved &= self._get("v1", "Service", ref["name"], ns) is not None
                elif ref.get("kind") == "InferencePool":
                    resolved &= self._get(f"{ref['group']}/v1", "InferencePool", ref["name"], ns) is not None
        route["status"] = {"parents": [{"parentRef": p, "controllerName": "example.com/gateway-double",
                                        "conditions": [_cond("Accepted", "True", "Accepted"),
                                                       _cond("ResolvedRefs", "True" if resolved else "False", "ResolvedRefs" if resolved else "BackendNotFound")]}
                                       for p in route["spec"]["parentRefs"]]}
        self.store.update(route)

    def _ray_admission(self, event: Event) -> None:
        assert event.obj is not None
        hooks = self._list("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration")
        if not any("ray.io" in rule.get("apiGroups", []) for h in hooks for w in h.get("webhooks") or [] for rule in w.get("rules") or []):
            return
        names = [g.get("groupName") for g in (event.obj.get("spec") or {}).get("workerGroupSpecs") or []]
        if len(names) != len(set(names)):
            raise Reject(403, "Forbidden", 'admission webhook "vraycluster.kb.io" denied the request: worker group names must be unique')

    def _ray_created(self, event: Event) -> None:
        assert event.obj is not None
        rc = copy.deepcopy(event.obj)
        ns, name = rc["metadata"]["namespace"], rc["metadata"]["name"]
        head = rc["spec"]["headGroupSpec"]["template"]["spec"]
        self.store.add({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": f"{name}-head-svc", "namespace": ns, "labels": {"ray.io/cluster": name}},
                        "spec": {"ports": [{"name": "gcs", "port": 6379}]}})
        self._place(self.store.add({"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": f"{name}-head-{self._next()}", "namespace": ns, "labels": {"ray.io/cluster": name}},
                                    "spec": {"containers": [{**head["containers"][0], "command": None}]}}))
        rc["status"] = {"state": "ready", "conditions": [_cond("HeadPodReady", "True", "HeadPodRunningAndReady")]}
        self.store.update(rc)
