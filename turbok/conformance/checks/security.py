"""``secure_accelerator_access``: only containers that request an accelerator can touch one.

Test plan (KAR-0049, and the upstream ``TestSecureAcceleratorAccess``): on
one accelerator node, three pods run a probe that lists the vendor's device
nodes and prints ``RESULT: ACCELERATOR_FOUND`` or ``RESULT: ACCELERATOR_MISSING``:

- positive: a pod requesting one accelerator must find it;
- negative: a pod on the same node requesting none must not;
- multi-container: in a pod whose first container requests one, the second must not.

Requests go through the device plugin's extended resource, or a DRA
ResourceClaimTemplate when devices are only published through DRA.
"""

from __future__ import annotations

from turbok.conformance.checks.base import Check, CheckContext, Outcome, failed, passed, register, unknown
from turbok.conformance.checks.workloads import (
    Accelerators,
    PodRun,
    container,
    pin_to_node,
    pod_problem,
    request_accelerator,
    require_accelerators,
    run_pod,
)

__all__ = ["SecureAcceleratorAccess"]

FOUND, MISSING = "RESULT: ACCELERATOR_FOUND", "RESULT: ACCELERATOR_MISSING"


def _probe(glob: str) -> str:
    return f"if ls {glob} >/dev/null 2>&1; then echo '{FOUND}'; else echo '{MISSING}'; fi"


@register
class SecureAcceleratorAccess(Check):
    id = "secure_accelerator_access"
    plan = (
        "On one accelerator node run three probe pods listing the device nodes: one requesting an accelerator "
        "(must find it), one requesting none (must not), one with two containers of which only the first "
        "requests one (the second must not)."
    )

    def run(self, ctx: CheckContext) -> Outcome:
        acc = require_accelerators(ctx)
        if acc.vendor is None:
            return unknown(f"accelerator resource {acc.resource} is not recognised: the device path to probe is unknown; verify manually")
        node = acc.node_names[0]
        probe = _probe(acc.vendor.device_glob)
        ctx.step(f"probing {acc.vendor.device_glob} on node {node}")

        positive = self._pod(ctx, acc, node, "positive", [container("prober", ctx.options.image, probe)], request=True)
        if not positive.succeeded:
            return failed(f"a pod requesting an accelerator did not run on {node}: {pod_problem(positive.pod)}")
        if FOUND not in positive.logs.get("prober", ""):
            return failed(f"a container that requested an accelerator cannot see {acc.vendor.device_glob}")

        negative = self._pod(ctx, acc, node, "negative", [container("prober", ctx.options.image, probe)], request=False)
        multi = self._pod(ctx, acc, node, "multi", [container("authorized", ctx.options.image, probe),
                                                     container("unauthorized", ctx.options.image, probe)], request=True)
        checks = [
            ("a pod without an accelerator request", negative, "prober", MISSING),
            ("the requesting container of a two-container pod", multi, "authorized", FOUND),
            ("the non-requesting container of a two-container pod", multi, "unauthorized", MISSING),
        ]
        violations = []
        for what, run, cname, expected in checks:
            if not run.succeeded:
                return failed(f"{what} did not run on {node}: {pod_problem(run.pod)}")
            if expected not in run.logs.get(cname, ""):
                violations.append(f"{what} {'saw' if expected == MISSING else 'did not see'} {acc.vendor.device_glob}")
        if violations:
            return failed("VIOLATION: " + "; ".join(violations), node=node)
        return passed(
            f"on {node}, only containers that requested an accelerator saw {acc.vendor.device_glob} "
            f"({'device plugin ' + acc.resource if acc.resource else 'DRA ' + (acc.dra_driver or '')})",
            node=node,
        )

    @staticmethod
    def _pod(ctx: CheckContext, acc: Accelerators, node: str, suffix: str, containers: list[dict[str, object]], *, request: bool) -> PodRun:
        spec: dict[str, object] = {"containers": containers}
        if request:
            request_accelerator(ctx, acc, spec)
        else:
            spec["tolerations"] = acc.tolerations()
        pin_to_node(ctx, spec, node)
        return run_pod(ctx, {"metadata": {"name": ctx.name(suffix)}, "spec": spec})
