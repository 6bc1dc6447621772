"""``robust_controller``: an AI operator with a CRD is installed, validates through its webhook, reconciles.

Test plan (KAR-0063): the operator's pods run and its CRD is established;
an invalid custom resource (valid for the CRD schema, invalid for the
operator's rules) is rejected by its admission webhook; a valid one is
reconciled (the operator creates its children and writes status).

Operators known to the check, each an ``OperatorProfile``:

- KubeRay (``ray.io`` RayCluster): invalid = two worker groups with one name;
  valid = a head-only RayCluster, reconciled when the head Pod and Service exist.
- Kubeflow Trainer (``trainer.kubeflow.org`` TrainJob): invalid = a runtimeRef
  to a ClusterTrainingRuntime that does not exist; valid = a TrainJob on an
  installed runtime, reconciled when its JobSet exists.

The check does not install operators: "can be installed" is demonstrated by
the one the platform runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turbok.conformance.checks.base import Check, CheckContext, Outcome, failed, passed, register
from turbok.conformance.checks.networking import condition
from turbok.conformance.checks.workloads import require_pods
from turbok.conformance.errors import ApiError

__all__ = ["PROFILES", "OperatorProfile", "RobustController"]


@dataclass(frozen=True)
class OperatorProfile:
    name: str
    group: str
    resource: str  # plural of the custom resource the check creates
    kind: str
    deployment_hint: str
    invalid: Callable[[CheckContext, str], dict[str, Any]]
    valid: Callable[[CheckContext, str], dict[str, Any] | None]
    reconciled: Callable[[CheckContext, str, dict[str, Any]], str | None]


def _ray_head(ctx: CheckContext) -> dict[str, Any]:
    return {"rayStartParams": {}, "template": {"spec": {"containers": [{
        "name": "ray-head", "image": "rayproject/ray:2.41.0",
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}}]}}}


def _ray_invalid(ctx: CheckContext, api: str) -> dict[str, Any]:
    worker = {"groupName": "workers", "replicas": 0, "minReplicas": 0, "maxReplicas": 1, "rayStartParams": {},
              "template": {"spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray:2.41.0"}]}}}
    return {"apiVersion": api, "kind": "RayCluster", "metadata": {"name": ctx.name("invalid")},
            "spec": {"headGroupSpec": _ray_head(ctx), "workerGroupSpecs": [worker, dict(worker)]}}


def _ray_valid(ctx: CheckContext, api: str) -> dict[str, Any]:
    return {"apiVersion": api, "kind": "RayCluster", "metadata": {"name": ctx.name("valid")},
            "spec": {"headGroupSpec": _ray_head(ctx)}}


def _ray_reconciled(ctx: CheckContext, api: str, obj: dict[str, Any]) -> str | None:
    name = obj["metadata"]["name"]
    pods = ctx.client.list("v1", "Pod", ctx.namespace, label_selector=f"ray.io/cluster={name}")
    services = ctx.client.list("v1", "Service", ctx.namespace, label_selector=f"ray.io/cluster={name}")
    current = ctx.client.get(api, "RayCluster", name, ctx.namespace)
    status = current.get("status") or {}
    if pods and services and status:
        return f"head pod {pods[0]['metadata']['name']} and service {services[0]['metadata']['name']} created; state {status.get('state', '?')}"
    return None


def _trainer_invalid(ctx: CheckContext, api: str) -> dict[str, Any]:
    return {"apiVersion": api, "kind": "TrainJob", "metadata": {"name": ctx.name("invalid")},
            "spec": {"runtimeRef": {"name": ctx.name("no-such-runtime"), "kind": "ClusterTrainingRuntime",
                                    "apiGroup": "trainer.kubeflow.org"}}}


def _trainer_valid(ctx: CheckContext, api: str) -> dict[str, Any] | None:
    runtimes = ctx.client.list(api, "ClusterTrainingRuntime")
    if not runtimes:
        return None
    return {"apiVersion": api, "kind": "TrainJob", "metadata": {"name": ctx.name("valid")},
            "spec": {"runtimeRef": {"name": runtimes[0]["metadata"]["name"], "kind": "ClusterTrainingRuntime",
                                    "apiGroup": "trainer.kubeflow.org"},
                     "trainer": {"numNodes": 1, "command": ["echo", "reconciled"]}}}


def _trainer_reconciled(ctx: CheckContext, api: str, obj: dict[str, Any]) -> str | None:
    name = obj["metadata"]["name"]
    disc = ctx.client.discovery
    version = disc.preferred_version("jobset.x-k8s.io")
    if version and ctx.client.get_or_none(f"jobset.x-k8s.io/{version}", "JobSet", name, ctx.namespace):
        return f"JobSet {name} created for TrainJob {name}"
    return None


PROFILES = (
    OperatorProfile("KubeRay", "ray.io", "rayclusters", "RayCluster", "kuberay-operator", _ray_invalid, _ray_valid, _ray_reconciled),
    OperatorProfile("Kubeflow Trainer", "trainer.kubeflow.org", "trainjobs", "TrainJob", "trainer-controller-manager",
                    _trainer_invalid, _trainer_valid, _trainer_reconciled),
)


@register
class RobustController(Check):
    id = "robust_controller"
    plan = (
        "Find an installed AI operator (KubeRay, Kubeflow Trainer); require its CRD Established, its controller "
        "pods ready and a validating webhook for its group; submit an invalid custom resource (must be denied "
        "by the webhook) and a valid one (must be reconciled: children created, status written)."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        require_pods(ctx)
        disc = ctx.client.discovery
        profile = next((p for p in PROFILES if disc.has_resource(p.group, p.resource)), None)
        if profile is None:
            return failed("no AI operator with a CRD found (looked for KubeRay ray.io, Kubeflow Trainer trainer.kubeflow.org)")
        version = disc.preferred_version(profile.group) or "v1"
        api = f"{profile.group}/{version}"
        ctx.step(f"operator: {profile.name} ({profile.kind} in {api})")
        crd = ctx.client.get_or_none("apiextensions.k8s.io/v1", "CustomResourceDefinition", f"{profile.resource}.{profile.group}")
        if crd is not None and (condition(crd, "Established") or {}).get("status") != "True":
            return failed(f"CRD {profile.resource}.{profile.group} is not Established")
        ready = self._controller_ready(ctx, profile)
        if ready is not None:
            return ready
        hooks = [
            w["metadata"]["name"] for w in ctx.client.list("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration")
            if any(profile.group in (rule.get("apiGroups") or []) for hook in w.get("webhooks") or [] for rule in hook.get("rules") or [])
        ]
        if not hooks:
            return failed(f"{profile.name} has no ValidatingWebhookConfiguration for {profile.group}: its webhook is not operational")
        ctx.step(f"validating webhook configuration(s): {', '.join(hooks)}")

        bad = profile.invalid(ctx, api)
        try:
            ctx.create(bad)
        except ApiError as e:
            if not e.denied_by_webhook:
                return failed(f"the invalid {profile.kind} was rejected, but not by an admission webhook: {e.api_message}")
            ctx.step(f"invalid {profile.kind} denied: {e.api_message}")
        else:
            return failed(f"the webhook accepted an invalid {profile.kind} ({bad['metadata']['name']})")

        good = profile.valid(ctx, api)
        if good is None:
            return failed(f"{profile.name} is installed but has nothing to run a valid {profile.kind} on (no runtimes)")
        created = ctx.create(good)
        done = ctx.wait_for(lambda: profile.reconciled(ctx, api, created), what=f"{profile.name} to reconcile {profile.kind} {good['metadata']['name']}")
        if done is None:
            current = ctx.client.get_or_none(api, profile.kind, good["metadata"]["name"], ctx.namespace) or {}
            return failed(f"{profile.name} did not reconcile {profile.kind} {good['metadata']['name']} within "
                          f"{ctx.options.timeout:g}s (status: {current.get('status') or 'none'})")
        return passed(f"{profile.name}: CRD established, controller ready, webhook denied an invalid {profile.kind}, "
                      f"valid one reconciled ({done})", operator=profile.name, webhooks=hooks)

    @staticmethod
    def _controller_ready(ctx: CheckContext, profile: OperatorProfile) -> Outcome | None:
        deployments = [d for d in ctx.client.list("apps/v1", "Deployment") if profile.deployment_hint in d["metadata"]["name"]]
        if not deployments:
            ctx.step(f"no Deployment named like {profile.deployment_hint}: relying on reconciliation to show the controller runs")
            return None
        dep = deployments[0]
        ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
        where = f"{dep['metadata'].get('namespace')}/{dep['metadata']['name']}"
        if ready < 1:
            return failed(f"the {profile.name} controller Deployment {where} has no ready replica")
        ctx.step(f"controller {where}: {ready} ready replica(s)")
        return None
