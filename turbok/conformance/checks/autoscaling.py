"""Autoscaling with accelerators: ``cluster_autoscaling`` and ``pod_autoscaling``.

Both requirements are conditional ("if the platform provides ..."): without a
cluster autoscaler, or without the HorizontalPodAutoscaler API, they end
Skipped as N/A.

cluster_autoscaling (KAR-0055): one pod more than the accelerators the nodes
allocate (a Deployment of pause pods, one accelerator each); at least one
must be Pending as Unschedulable, the autoscaler must add an accelerator
node so that all run, and after the Deployment is deleted remove it again.
Scale-down often takes the autoscaler's ``scale-down-unneeded-time`` (10 min
by default): not seeing it within ``--autoscaling-timeout`` ends Unknown.

pod_autoscaling (KAR-0057): a Deployment whose pods request an accelerator
and serve a Prometheus gauge from a ConfigMap; an HPA on that gauge as a Pods
custom metric (target 5, the gauge says 10) must scale it to 2 replicas, both
Running; lowering the gauge to 1 must scale it back to 1. This needs the
platform's pipeline (Prometheus scraping annotated pods or a PodMonitor, and a
custom metrics adapter exposing pod series): exactly what the requirement asks.
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
    ask_to_scrape,
    discover_accelerators,
    metrics_endpoint_objects,
    pod_problem,
    request_accelerator,
    require_accelerators,
    require_pods,
)

__all__ = ["ClusterAutoscaling", "PodAutoscaling"]


def _allocatable(node: dict[str, Any], resource: str) -> int:
    try:
        return int(str(((node.get("status") or {}).get("allocatable") or {}).get(resource, "0")))
    except ValueError:
        return 0


@register
class ClusterAutoscaling(Check):
    id = "cluster_autoscaling"
    plan = (
        "Find a cluster autoscaler (cluster-autoscaler Deployment or status ConfigMap, Karpenter); run one pod "
        "more than the allocatable accelerators; require an Unschedulable pod, a new accelerator node, all pods "
        "Running; delete them and require the node count to return."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        autoscaler = self._autoscaler(ctx)
        if autoscaler is None:
            raise skipped(
                "no cluster autoscaler found (no cluster-autoscaler Deployment or status ConfigMap, no Karpenter): "
                "the requirement applies only where the platform provides one",
                not_applicable=True,
            )
        ctx.step(f"cluster autoscaler: {autoscaler}")
        acc = discover_accelerators(ctx)
        resource = ctx.options.accelerator_resource or acc.resource
        if not resource:
            raise skipped("no accelerator resource to scale on (pass --accelerator-resource for node groups that scale from zero)")
        if not ctx.client.discovery.has_resource("apps", "deployments", "v1"):
            return unknown("apps/v1 Deployments are not served")

        def accel_nodes() -> list[str]:
            return [n["metadata"]["name"] for n in ctx.client.list("v1", "Node") if _allocatable(n, resource) > 0]

        before = accel_nodes()
        total = sum(_allocatable(n, resource) for n in ctx.client.list("v1", "Node"))
        replicas = total + 1
        name = ctx.name("scale")
        labels = {"app": name}
        spec: dict[str, Any] = {"containers": [{"name": "pause", "image": ctx.options.pause_image}]}
        request_accelerator(ctx, acc, spec, resource=resource)
        if acc.resource != resource:
            spec["tolerations"] = [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
        ctx.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                             "template": {"metadata": {"labels": {**labels, **ctx.labels()}}, "spec": spec}}})
        ctx.step(f"{len(before)} node(s) allocate {total} x {resource}; asked for {replicas} pods")

        def pending() -> dict[str, Any] | None:
            for pod in ctx.client.list("v1", "Pod", ctx.namespace, label_selector=f"app={name}"):
                if pod_problem(pod).startswith("unschedulable"):
                    return pod
            return None

        stuck = ctx.wait_for(pending, what="a pod to be Unschedulable")
        if stuck is None:
            return unknown(f"all {replicas} pods were scheduled: the nodes had spare {resource} capacity; rerun on an idle node group")
        ctx.step(f"pod {stuck['metadata']['name']} is {pod_problem(stuck)}")

        def scaled_up() -> list[str] | None:
            nodes = accel_nodes()
            dep = ctx.client.get("apps/v1", "Deployment", name, ctx.namespace)
            ready = int((dep.get("status") or {}).get("availableReplicas") or 0)
            return nodes if len(nodes) > len(before) and ready >= replicas else None

        grown = ctx.wait_for(scaled_up, timeout=ctx.options.autoscaling_timeout, what="a new accelerator node and all pods Running")
        if grown is None:
            still = pending()
            return failed(f"the autoscaler did not add an accelerator node within {ctx.options.autoscaling_timeout:g}s"
                          + (f": {pod_problem(still)}" if still else ""), nodesBefore=before)
        added = sorted(set(grown) - set(before))
        ctx.step(f"scaled up: new node(s) {', '.join(added)}; all {replicas} pods Running")
        ctx.client.delete("apps/v1", "Deployment", name, ctx.namespace)
        for t in ctx.tracker.pending(ctx.id):
            if t.kind == "Deployment" and t.name == name:
                ctx.tracker.forget(t)
        shrunk = ctx.wait_for(lambda: len(accel_nodes()) <= len(before) or None, timeout=ctx.options.autoscaling_timeout,
                              what=f"the accelerator node count to return to {len(before)}")
        details = {"nodesBefore": before, "nodesAdded": added}
        if shrunk is None:
            return unknown(f"scale-up verified ({', '.join(added)} added); scale-down not observed within "
                           f"{ctx.options.autoscaling_timeout:g}s: raise --autoscaling-timeout above the autoscaler's "
                           "scale-down-unneeded-time", **details)
        return passed(f"{autoscaler} added {len(added)} accelerator node(s) for pending {resource} pods and removed them again", **details)

    @staticmethod
    def _autoscaler(ctx: CheckContext) -> str | None:
        if ctx.client.get_or_none("v1", "ConfigMap", "cluster-autoscaler-status", "kube-system") is not None:
            return "cluster-autoscaler (kube-system/cluster-autoscaler-status)"
        if ctx.client.discovery.has_resource("karpenter.sh", "nodepools"):
            return "Karpenter"
        if ctx.client.discovery.has_resource("apps", "deployments", "v1"):
            for dep in ctx.client.list("apps/v1", "Deployment"):
                if "cluster-autoscaler" in dep["metadata"]["name"]:
                    return f"cluster-autoscaler ({dep['metadata'].get('namespace')}/{dep['metadata']['name']})"
        return None


def _gauge(metric: str, value: int) -> str:
    return f"# HELP {metric} Requests waiting (turbok conformance workload).\n# TYPE {metric} gauge\n{metric} {value}\n"


@register
class PodAutoscaling(Check):
    id = "pod_autoscaling"
    plan = (
        "Deploy pods that request an accelerator and serve a Prometheus gauge (10) from a ConfigMap; create an "
        "HPA on that gauge as a Pods custom metric with target 5; require 2 Running replicas; lower the gauge "
        "to 1 and require 1 replica."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        disc = ctx.client.discovery
        if not disc.has_resource("autoscaling", "horizontalpodautoscalers", "v2"):
            raise skipped("autoscaling/v2 HorizontalPodAutoscaler is not served", not_applicable=True)
        if not disc.has_group("custom.metrics.k8s.io"):
            if disc.has_group("external.metrics.k8s.io"):
                return unknown("only external.metrics.k8s.io is registered (KEDA?): the automated check uses a Pods "
                               "custom metric; verify accelerator autoscaling manually")
            return failed("no custom metrics API (custom.metrics.k8s.io) is registered: the HPA cannot scale on AI "
                          "metrics; install a metrics adapter such as prometheus-adapter")
        acc = require_accelerators(ctx)
        metric = ctx.options.hpa_metric
        name = ctx.name("hpa")
        objs = metrics_endpoint_objects(ctx, name, _gauge(metric, 10), replicas=1)
        request_accelerator(ctx, acc, objs[1]["spec"]["template"]["spec"])
        for obj in objs:
            ctx.create(obj)
        ask_to_scrape(ctx, name)
        ctx.create({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 1, "maxReplicas": 2,
                "metrics": [{"type": "Pods", "pods": {"metric": {"name": metric}, "target": {"type": "AverageValue", "averageValue": "5"}}}],
                "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                             "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]}},
            },
        })
        up = ctx.wait_for(lambda: self._replicas(ctx, name, 2), what=f"the HPA to scale {name} to 2 replicas on {metric}=10")
        if up is None:
            return failed(f"the HPA did not scale up on the custom metric {metric}: {self._hpa_state(ctx, name)}")
        running = ctx.wait_for(lambda: self._running(ctx, name, 2), what="both replicas to be Running")
        if running is None:
            pods = ctx.client.list("v1", "Pod", ctx.namespace, label_selector=f"app={name}")
            problems = [pod_problem(p) for p in pods if (p.get("status") or {}).get("phase") != "Running"]
            return failed(f"the HPA scaled to 2 but the new accelerator pod did not run: {'; '.join(problems) or 'unknown'}")
        ctx.step(f"scaled up to 2 Running replicas ({self._hpa_state(ctx, name)})")
        ctx.client.patch("v1", "ConfigMap", name, ctx.namespace, {"data": {"metrics": _gauge(metric, 1)}})
        ctx.step(f"lowered {metric} to 1")
        down = ctx.wait_for(lambda: self._replicas(ctx, name, 1), what="the HPA to scale back to 1 replica")
        if down is None:
            return failed(f"the HPA did not scale down when {metric} fell below target: {self._hpa_state(ctx, name)}")
        return passed(f"the HPA scaled accelerator pods 1 -> 2 -> 1 on the custom metric {metric}", metric=metric)

    @staticmethod
    def _replicas(ctx: CheckContext, name: str, want: int) -> int | None:
        dep = ctx.client.get("apps/v1", "Deployment", name, ctx.namespace)
        return want if int((dep.get("spec") or {}).get("replicas") or 0) == want else None

    @staticmethod
    def _running(ctx: CheckContext, name: str, want: int) -> int | None:
        pods = ctx.client.list("v1", "Pod", ctx.namespace, label_selector=f"app={name}")
        n = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
        return n if n >= want else None

    @staticmethod
    def _hpa_state(ctx: CheckContext, name: str) -> str:
        hpa = ctx.client.get("autoscaling/v2", "HorizontalPodAutoscaler", name, ctx.namespace)
        st = hpa.get("status") or {}
        conds = "; ".join(f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".strip()
                          for c in st.get("conditions") or [])
        return f"desired {st.get('desiredReplicas', '?')}, current {st.get('currentReplicas', '?')}; {conds or 'no conditions'}"
