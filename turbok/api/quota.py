"""ResourceQuota semantics: what a namespace's objects use, and what a new write would exceed.

What kube-apiserver's quota admission and kube-controller-manager's quota
controller compute, over the kinds turbok serves:

- Object counts: ``count/<plural>.<group>`` (``count/sandboxes.agents.x-k8s.io``,
  ``count/sandboxclaims.extensions.agents.x-k8s.io``), ``count/<plural>`` for
  core kinds, and the legacy ``resourcequotas``.
- Compute, from each Sandbox's pod template as its Pod would count
  (``sandbox_usage``): ``requests.cpu``/``cpu``, ``requests.memory``/``memory``,
  ``limits.cpu``, ``limits.memory`` and the ``ephemeral-storage`` triple. A
  Suspended or Finished sandbox has no Pod, so it uses none (it still counts
  as an object).
- Standard names of things turbok has none of (``pods``, ``services``...) are
  reported as used ``0``; other fully qualified names are accepted and not
  tracked, as upstream does.

``exceeded`` and ``unspecified`` give kube's messages (``exceeded quota: q,
requested: ..., used: ..., limited: ...``; ``must specify limits.memory for:
main``); the admission refuses with 403 Forbidden and writes nothing. Scopes
and scopeSelector are refused by ``validate``: no kind here has the Pod fields
they select on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from turbok.api.kinds import Kind, KindRegistry
from turbok.api.podtemplate import container_resources, containers, pod_resources
from turbok.api.quantity import QuantityError, format_quantity, parse_quantity
from turbok.api.status import Cause

__all__ = ["COMPUTE", "Tracked", "count_name", "exceeded", "format_usage", "hard_of", "is_sandbox", "sandbox_usage",
           "tracked", "unspecified", "validate"]

Obj = dict[str, Any]

SANDBOX_GROUP = "agents.x-k8s.io"
#: Resources of a Sandbox's containers that a quota can cap.
COMPUTE = ("cpu", "memory", "ephemeral-storage")
_COMPUTE_NAMES = frozenset({n for r in COMPUTE for n in (r, f"requests.{r}", f"limits.{r}")})
#: Standard quota names of objects turbok does not serve: accepted, always used 0.
_UNSERVED = frozenset({"pods", "services", "replicationcontrollers", "secrets", "configmaps",
                       "persistentvolumeclaims", "services.nodeports", "services.loadbalancers",
                       "requests.storage"})
_LEGACY_COUNTS = {"resourcequotas": "count/resourcequotas"}


def count_name(kind: Kind) -> str:
    """The object-count quota name of a kind: ``count/<plural>.<group>``, ``count/<plural>`` for core."""
    return f"count/{kind.plural}.{kind.group}" if kind.group else f"count/{kind.plural}"


def is_sandbox(kind: Kind) -> bool:
    return kind.group == SANDBOX_GROUP and kind.kind == "Sandbox"


def hard_of(quota: Obj) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for name, value in ((quota.get("spec") or {}).get("hard") or {}).items():
        try:
            out[name] = parse_quantity(value)
        except (QuantityError, TypeError):
            continue
    return out


@dataclass(frozen=True)
class Tracked:
    """What a set of hard limits asks to measure."""

    #: quota name -> kind whose objects it counts
    counts: dict[str, Kind] = field(default_factory=dict)
    #: compute names (``requests.cpu``...), summed over Sandboxes
    compute: frozenset[str] = frozenset()
    #: standard names with nothing to count here
    zero: frozenset[str] = frozenset()


def tracked(names: Iterable[str], kinds: KindRegistry) -> Tracked:
    by_count = {count_name(k): k for k in kinds if k.namespaced}
    counts: dict[str, Kind] = {}
    compute, zero = set(), set()
    for name in names:
        key = _LEGACY_COUNTS.get(name, name)
        if key in by_count:
            counts[name] = by_count[key]
        elif name in _COMPUTE_NAMES:
            compute.add(name)
        elif name in _UNSERVED or name.startswith("count/"):
            zero.add(name)
    return Tracked(counts, frozenset(compute), frozenset(zero))


def sandbox_usage(sandbox: Obj) -> dict[str, Decimal]:
    """The compute a Sandbox's Pod would count against a quota (nothing while Suspended or Finished)."""
    spec = sandbox.get("spec") or {}
    if spec.get("operatingMode", "Running") == "Suspended":
        return {}
    for cond in (sandbox.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Finished" and cond.get("status") == "True":
            return {}
    pod_spec = ((spec.get("podTemplate") or {}).get("spec")) or {}
    res = pod_resources(pod_spec)
    usage: dict[str, Decimal] = {}
    for resource in COMPUTE:
        if resource in res.requests:
            usage[resource] = usage[f"requests.{resource}"] = res.requests[resource]
        if resource in res.limits:
            usage[f"limits.{resource}"] = res.limits[resource]
    return usage


def unspecified(sandbox: Obj, names: Iterable[str]) -> str:
    """kube's ``must specify ...`` for compute names some container leaves unset ("" when none)."""
    if (sandbox.get("spec") or {}).get("operatingMode") == "Suspended":
        return ""  # no Pod, nothing to specify
    pod_spec = (((sandbox.get("spec") or {}).get("podTemplate") or {}).get("spec")) or {}
    missing: dict[str, list[str]] = {}
    for name in sorted(set(names) & _COMPUTE_NAMES):
        part, _, resource = name.rpartition(".")
        for _, container in containers(pod_spec):
            res = container_resources(container)
            have = res.limits if part == "limits" else res.requests
            if resource not in have:
                missing.setdefault(name, []).append(str(container.get("name", "")))
    return "; ".join(f"{name} for: {','.join(who)}" for name, who in missing.items())


def _is_bytes(name: str) -> bool:
    return not name.endswith("cpu")


def format_usage(values: Mapping[str, Decimal]) -> dict[str, str]:
    return {name: format_quantity(value, binary=_is_bytes(name)) for name, value in sorted(values.items())}


def exceeded(name: str, hard: Mapping[str, Decimal], used: Mapping[str, Decimal],
             requested: Mapping[str, Decimal]) -> str:
    """kube's ``exceeded quota: ...`` for quota ``name`` if this request takes it past a hard limit ("" if not)."""
    over = sorted(r for r, amount in requested.items()
                  if amount > 0 and r in hard and used.get(r, Decimal(0)) + amount > hard[r])
    if not over:
        return ""

    def listed(values: Mapping[str, Decimal]) -> str:
        return ",".join(f"{r}={format_quantity(values.get(r, Decimal(0)), binary=_is_bytes(r))}" for r in over)

    return f"exceeded quota: {name}, requested: {listed(requested)}, used: {listed(used)}, limited: {listed(hard)}"


def validate(quota: Obj) -> list[Cause]:
    spec = quota.get("spec") or {}
    causes = []
    for name, value in (spec.get("hard") or {}).items():
        try:
            negative = parse_quantity(value) < 0
        except (QuantityError, TypeError):
            negative = False  # the schema's pattern has refused it already
        if negative:
            causes.append(Cause(f"spec.hard[{name}]", f'Invalid value: "{value}": must be greater than or equal to 0'))
    for key in ("scopes", "scopeSelector"):
        if spec.get(key):
            causes.append(Cause(f"spec.{key}", "Forbidden: quota scopes select Pods by their fields; turbok has no "
                                "Pods to select, so it does not support them", "FieldValueForbidden"))
    return causes
