"""Inference traffic: ``ai_inference`` (Gateway API) and ``advanced_inference_ingress`` (GAIE).

Test plans: the upstream AI inference tests apply a Gateway and HTTPRoutes
with weighted backends and header matches and wait for the implementation to
accept them (``status.parents[].conditions`` Accepted=True); KAR-0011 routes
to an ``InferencePool`` of the Gateway API Inference Extension. The checks
never need the Gateway's address: acceptance and resolved references are
what the implementation reports through the API, so they work from outside
the cluster. Backend Services have no pods; references resolve to Services.
"""

from __future__ import annotations

from typing import Any

from turbok.conformance.checks.base import Check, CheckContext, Outcome, failed, passed, register

__all__ = ["AdvancedInferenceIngress", "AiInference", "condition", "route_state"]

GATEWAY_API = "gateway.networking.k8s.io/v1"
# OpenAI-compatible gateways route on the model name carried in a header.
MODEL_HEADER = "X-Gateway-Model-Name"


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def route_state(route: dict[str, Any] | None, gateway: str) -> dict[str, str]:
    """Condition type -> status reported for ``gateway`` in an HTTPRoute's ``status.parents``."""
    for parent in ((route or {}).get("status") or {}).get("parents") or []:
        if (parent.get("parentRef") or {}).get("name") == gateway:
            return {c.get("type", ""): c.get("status", "") for c in parent.get("conditions") or []}
    return {}


class _GatewayCheck(Check):
    """Shared steps: Gateway API served, an accepted GatewayClass, a Gateway, routes accepted."""

    def _require_gateway_api(self, ctx: CheckContext) -> None:
        disc = ctx.client.discovery
        if not disc.has_group("gateway.networking.k8s.io", "v1"):
            raise failed("the Gateway API (gateway.networking.k8s.io/v1) is not installed: install a Gateway API implementation")
        names = {r.name for r in disc.resources("gateway.networking.k8s.io", "v1")}
        missing = {"gatewayclasses", "gateways", "httproutes"} - names
        if missing:
            raise failed(f"gateway.networking.k8s.io/v1 lacks {', '.join(sorted(missing))}")

    def _gateway_class(self, ctx: CheckContext) -> str:
        classes = ctx.client.list(GATEWAY_API, "GatewayClass")
        wanted = ctx.options.gateway_class
        if wanted:
            chosen = [c for c in classes if c["metadata"]["name"] == wanted]
            if not chosen:
                raise failed(f"GatewayClass {wanted!r} (from --gateway-class) does not exist")
        else:
            chosen = [c for c in classes if (condition(c, "Accepted") or {}).get("status") == "True"]
            if not chosen:
                listed = ", ".join(c["metadata"]["name"] for c in classes) or "none"
                raise failed(f"no accepted GatewayClass (found: {listed}): install a Gateway API implementation")
        name = str(chosen[0]["metadata"]["name"])
        ctx.step(f"using GatewayClass {name} ({chosen[0].get('spec', {}).get('controllerName', '?')})")
        return name

    def _gateway(self, ctx: CheckContext, gateway_class: str) -> str:
        name = ctx.name("gw")
        ctx.create({
            "apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": {"name": name},
            "spec": {"gatewayClassName": gateway_class,
                     "listeners": [{"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "Same"}}}]},
        })

        def accepted() -> dict[str, Any] | None:
            gw = ctx.client.get(GATEWAY_API, "Gateway", name, ctx.namespace)
            return gw if (condition(gw, "Accepted") or {}).get("status") == "True" else None

        if ctx.wait_for(accepted, what=f"Gateway {name} to be Accepted") is None:
            gw = ctx.client.get(GATEWAY_API, "Gateway", name, ctx.namespace)
            raise failed(f"Gateway {name} was not accepted by {gateway_class}: {condition(gw, 'Accepted') or 'no Accepted condition'}")
        return name

    def _service(self, ctx: CheckContext, suffix: str) -> str:
        name = ctx.name(suffix)
        ctx.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                    "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8000, "targetPort": 8000}]}})
        return name

    def _route_accepted(self, ctx: CheckContext, route: str, gateway: str, what: str) -> None:
        def ready() -> dict[str, str] | None:
            state = route_state(ctx.client.get(GATEWAY_API, "HTTPRoute", route, ctx.namespace), gateway)
            return state if state.get("Accepted") == "True" and state.get("ResolvedRefs") == "True" else None

        if ctx.wait_for(ready, what=f"{what} HTTPRoute {route} to be Accepted with ResolvedRefs") is None:
            state = route_state(ctx.client.get(GATEWAY_API, "HTTPRoute", route, ctx.namespace), gateway)
            raise failed(f"{what} HTTPRoute {route} was not accepted: conditions {state or 'none reported'}")
        ctx.step(f"{what} HTTPRoute {route} accepted, references resolved")


@register
class AiInference(_GatewayCheck):
    id = "ai_inference"
    plan = (
        "Require gateway.networking.k8s.io/v1 and an accepted GatewayClass; create a Gateway, two backend "
        "Services, an HTTPRoute splitting traffic 90/10 by weight and one routing on the "
        f"{MODEL_HEADER} header; require both routes Accepted with ResolvedRefs."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        self._require_gateway_api(ctx)
        gateway_class = self._gateway_class(ctx)
        gateway = self._gateway(ctx, gateway_class)
        a, b = self._service(ctx, "model-a"), self._service(ctx, "model-b")
        parent = [{"name": gateway}]
        weighted, header = ctx.name("weighted"), ctx.name("header")
        ctx.create({"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": weighted},
                    "spec": {"parentRefs": parent, "rules": [{"backendRefs": [
                        {"name": a, "port": 8000, "weight": 90}, {"name": b, "port": 8000, "weight": 10}]}]}})
        ctx.create({"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": header},
                    "spec": {"parentRefs": parent, "rules": [
                        {"matches": [{"headers": [{"type": "Exact", "name": MODEL_HEADER, "value": "model-b"}]}],
                         "backendRefs": [{"name": b, "port": 8000}]},
                        {"backendRefs": [{"name": a, "port": 8000}]}]}})
        self._route_accepted(ctx, weighted, gateway, "weighted")
        self._route_accepted(ctx, header, gateway, "header-matched")
        return passed(f"GatewayClass {gateway_class} accepted a Gateway, a weighted (90/10) and a header-matched HTTPRoute",
                      gatewayClass=gateway_class)


@register
class AdvancedInferenceIngress(_GatewayCheck):
    id = "advanced_inference_ingress"
    plan = (
        "Require the Gateway API Inference Extension (InferencePool in inference.networking.k8s.io/v1 or "
        "inference.networking.x-k8s.io/v1alpha2) and an accepted GatewayClass; create a Gateway, an "
        "InferencePool and an HTTPRoute whose backend is the pool; require the route Accepted with ResolvedRefs."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        disc = ctx.client.discovery
        if disc.has_resource("inference.networking.k8s.io", "inferencepools", "v1"):
            group, version = "inference.networking.k8s.io", "v1"
        elif disc.has_resource("inference.networking.x-k8s.io", "inferencepools"):
            group = "inference.networking.x-k8s.io"
            version = disc.preferred_version(group) or "v1alpha2"
        else:
            return failed("the Gateway API Inference Extension is not installed (no InferencePool in inference.networking.k8s.io)")
        self._require_gateway_api(ctx)
        gateway_class = self._gateway_class(ctx)
        gateway = self._gateway(ctx, gateway_class)
        pool = ctx.name("pool")
        if version == "v1":
            spec: dict[str, Any] = {"selector": {"matchLabels": {"app": pool}}, "targetPorts": [{"number": 8000}],
                                    "endpointPickerRef": {"name": ctx.name("epp"), "port": {"number": 9002}}}
        else:
            spec = {"selector": {"app": pool}, "targetPortNumber": 8000, "extensionRef": {"name": ctx.name("epp")}}
        ctx.create({"apiVersion": f"{group}/{version}", "kind": "InferencePool", "metadata": {"name": pool}, "spec": spec})
        route = ctx.name("pool-route")
        ctx.create({"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": route},
                    "spec": {"parentRefs": [{"name": gateway}],
                             "rules": [{"backendRefs": [{"group": group, "kind": "InferencePool", "name": pool}]}]}})
        self._route_accepted(ctx, route, gateway, "InferencePool")
        return passed(
            f"GatewayClass {gateway_class} accepted an HTTPRoute to an InferencePool ({group}/{version}); "
            "run the GAIE conformance suite for model-aware routing",
            gatewayClass=gateway_class,
        )
