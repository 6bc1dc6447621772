"""ResourceQuota semantics: what a namespace's objects use, and what a new write would exceed.

What kube-apiserver's quota admission and kube-controller-manager's quota
controller compute, over the kinds turbok serves:

- Object counts: ``count/<plural>.<group>`` (``count/sandboxes.agents.x-k8s.io``,
  ``count/sandboxclaims.extensions.agents.x-k8s.io``), ``count/<plural>`` for
  core kinds, and the legacy names ``services``, ``secrets``, ``configmaps``,
  ``persistentvolumeclaims``, ``resourcequotas``.
- Usage, as kube's evaluators compute it (``usage``): from each Pod that is not
  finished (phase Succeeded or Failed), ``pods`` and its compute:
  ``requests.cpu``/``cpu``, ``requests.memory``/``memory``, ``limits.cpu``,
  ``limits.memory`` and the ``ephemeral-storage`` triple (containers summed,
  the largest init container where that is more, ``spec.overhead`` added);
  from PersistentVolumeClaims, ``requests.storage`` and the per-StorageClass
  ``<class>.storageclass.storage.k8s.io/requests.storage`` and
  ``.../persistentvolumeclaims``; from Services, ``services.nodeports`` and
  ``services.loadbalancers``. A Sandbox counts as an object only: its compute
  is its Pod's (counting both would count it twice), so a Suspended Sandbox,
  whose Pod is gone, uses none, and a Sandbox over a compute quota is stored
  while its Pod is refused (the Sandbox's status says why), as a Deployment's
  are on a cluster.
- Standard names of things turbok serves none of (``replicationcontrollers``)
  are reported as used ``0``; other fully qualified names are accepted and not
  tracked, as upstream does.

``exceeded`` and ``unspecified`` give kube's messages (``exceeded quota: q,
requested: ..., used: ..., limited: ...``; ``must specify limits.memory for:
main``); the admission refuses with 403 Forbidden and writes nothing. Scopes
and scopeSelector are refused by ``validate`` (not implemented here).
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

__all__ = ["COMPUTE", "Tracked", "count_name", "exceeded", "format_usage", "hard_of", "is_sandbox", "pod_usage",
           "tracked", "unspecified", "usage", "validate"]

Obj = dict[str, Any]

SANDBOX_GROUP = "agents.x-k8s.io"
#: Resources of a Pod's containers that a quota can cap.
COMPUTE = ("cpu", "memory", "ephemeral-storage")
_COMPUTE_NAMES = frozenset({n for r in COMPUTE for n in (r, f"requests.{r}", f"limits.{r}")})
#: Names kube's evaluators compute from the objects of one core kind (plural), beyond counting them.
_USAGE_NAMES = {"pods": frozenset({"pods", *_COMPUTE_NAMES}),
                "persistentvolumeclaims": frozenset({"requests.storage"}),
                "services": frozenset({"services.nodeports", "services.loadbalancers"})}
_STORAGE_CLASS_SUFFIX = ".storageclass.storage.k8s.io/"
#: Standard quota names of objects turbok does not serve: accepted, always used 0.
_UNSERVED = frozenset({"replicationcontrollers"})
_LEGACY_COUNTS = {name: f"count/{name}" for name in ("resourcequotas", "services", "secrets", "configmaps",
                                                      "persistentvolumeclaims", "replicationcontrollers")}


def count_name(kind: Kind) -> str:
    """The object-count quota name of a kind: ``count/<plural>.<group>``, ``count/<plural>`` for core."""
    return f"count/{kind.plural}.{kind.group}" if kind.group else f"count/{kind.plural}"


def is_sandbox(kind: Kind) -> bool:
    return kind.group == SANDBOX_GROUP and kind.kind == "Sandbox"


def _usage_plural(name: str) -> str | None:
    """The core kind (plural) whose objects' usage makes up quota name ``name``, if any."""
    for plural, names in _USAGE_NAMES.items():
        if name in names:
            return plural
    _, suffix, rest = name.partition(_STORAGE_CLASS_SUFFIX)
    if suffix and rest in ("requests.storage", "persistentvolumeclaims"):
        return "persistentvolumeclaims"
    return None


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
    #: quota name -> kind whose objects' ``usage`` it sums (``pods``, ``requests.cpu``, ``requests.storage``...)
    usage: dict[str, Kind] = field(default_factory=dict)
    #: standard names with nothing to count here
    zero: frozenset[str] = frozenset()

    @property
    def compute(self) -> frozenset[str]:
        """The compute names among them (``requests.cpu``...): what every container of a Pod must specify."""
        return frozenset(self.usage) & _COMPUTE_NAMES


def tracked(names: Iterable[str], kinds: KindRegistry) -> Tracked:
    by_count = {count_name(k): k for k in kinds if k.namespaced}
    core = {k.plural: k for k in kinds if k.namespaced and not k.group}
    counts: dict[str, Kind] = {}
    used: dict[str, Kind] = {}
    zero = set()
    for name in names:
        key = _LEGACY_COUNTS.get(name, name)
        plural = _usage_plural(name)
        if plural is not None and plural in core:
            used[name] = core[plural]
        elif key in by_count:
            counts[name] = by_count[key]
        elif name in _UNSERVED or name in _LEGACY_COUNTS or name.startswith("count/") or plural is not None:
            zero.add(name)
    return Tracked(counts, used, frozenset(zero))


def _finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_usage(pod: Obj) -> dict[str, Decimal]:
    """What a Pod counts against a quota: ``pods`` and its compute; nothing once it has finished."""
    if _finished(pod):
        return {}
    spec = pod.get("spec") or {}
    res = pod_resources(spec)
    requests, limits = dict(res.requests), dict(res.limits)
    for name, value in (spec.get("overhead") or {}).items():  # kube's evaluator adds the RuntimeClass overhead
        try:
            amount = parse_quantity(value)
        except (QuantityError, TypeError):
            continue
        for side in (requests, limits):
            if name in side:
                side[name] += amount
    out: dict[str, Decimal] = {"pods": Decimal(1)}
    for resource in COMPUTE:
        if resource in requests:
            out[resource] = out[f"requests.{resource}"] = requests[resource]
        if resource in limits:
            out[f"limits.{resource}"] = limits[resource]
    return out


def _claim_usage(claim: Obj) -> dict[str, Decimal]:
    spec = claim.get("spec") or {}
    try:
        storage = parse_quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage", 0))
    except (QuantityError, TypeError):
        storage = Decimal(0)
    out = {"requests.storage": storage}
    storage_class = spec.get("storageClassName")
    if isinstance(storage_class, str) and storage_class:
        out[f"{storage_class}{_STORAGE_CLASS_SUFFIX}requests.storage"] = storage
        out[f"{storage_class}{_STORAGE_CLASS_SUFFIX}persistentvolumeclaims"] = Decimal(1)
    return out


def _service_usage(service: Obj) -> dict[str, Decimal]:
    spec = service.get("spec") or {}
    type_ = spec.get("type", "ClusterIP")
    out = {"services.nodeports": Decimal(0), "services.loadbalancers": Decimal(type_ == "LoadBalancer")}
    if type_ in ("NodePort", "LoadBalancer"):
        out["services.nodeports"] = Decimal(len([p for p in spec.get("ports") or [] if isinstance(p, dict)]))
    return out


def usage(kind: Kind, obj: Obj) -> dict[str, Decimal]:
    """What ``obj`` of ``kind`` counts against quota names beyond its object count (kube's evaluators)."""
    if kind.group:
        return {}
    if kind.plural == "pods":
        return pod_usage(obj)
    if kind.plural == "persistentvolumeclaims":
        return _claim_usage(obj)
    if kind.plural == "services":
        return _service_usage(obj)
    return {}


def unspecified(pod: Obj, names: Iterable[str]) -> str:
    """kube's ``must specify ...`` for compute names some container of ``pod`` leaves unset ("" when none)."""
    pod_spec = pod.get("spec") or {}
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
            causes.append(Cause(f"spec.{key}", "Forbidden: quota scopes (Pods selected by their fields) are not "
                                "supported by turbok", "FieldValueForbidden"))
    return causes
