"""LimitRange semantics: defaults and bounds for the containers of a namespace, as LimitRanger applies them.

What kube-apiserver does, for the pod templates of Sandboxes (a Sandbox is
the Pod here):

- ``set_defaults(limit_range)``: the API defaulting of a LimitRange item of
  type Container (``default`` from ``max``, ``defaultRequest`` from
  ``default``, then from ``min``).
- ``validate(limit_range)``: 422 causes (min above max, defaults outside the
  bounds, defaults on type Pod, ratios under 1...).
- ``apply_defaults(pod_spec, limit_ranges)``: LimitRanger's mutation: every
  container without a limit (request) for a resource gets the item's
  ``default`` (``defaultRequest``). A request left out where a limit was given
  is the limit (API defaulting), so it is not filled in.
- ``violations(pod_spec, limit_ranges)``: LimitRanger's validation: min, max
  and maxLimitRequestRatio per Container and per Pod, in kube's words
  (``maximum memory usage per Container is 1Gi, but limit is 2Gi``); the
  caller refuses the write with 403 Forbidden.

turbok adds one thing a cluster has no need for: ``apply_builtin_defaults``,
the limits every sandbox gets when neither the template nor any LimitRange
sets one (``BUILTIN_DEFAULT_LIMITS``, documented in docs/sandboxes.md), so
that no sandbox on a shared machine is unbounded by accident, and with them
requests of what an idle gVisor sandbox takes (``BUILTIN_DEFAULT_REQUESTS``):
a request defaults to the limit otherwise, and the scheduler would fit two
such Pods on a 2-core machine. An explicit ``0`` keeps its meaning (no
limit), as for the kubelet.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from turbok.api.podtemplate import as_dict, container_resources, containers, pod_resources
from turbok.api.quantity import QuantityError, format_quantity, parse_quantity
from turbok.api.status import Cause

__all__ = ["BUILTIN_DEFAULT_LIMITS", "BUILTIN_DEFAULT_REQUESTS", "apply_builtin_defaults", "apply_defaults", "set_defaults", "validate",
           "violations"]

Obj = dict[str, Any]

#: Limits of a container that sets none and that no LimitRange gives a default for.
BUILTIN_DEFAULT_LIMITS: dict[str, str] = {"cpu": "1", "memory": "2Gi"}
#: Requests that go with them: what a Sandbox's Pod takes idle. Measured (runsc 20221219, ptrace, the base
#: image, the pod network): with the sandboxd agent a Sandbox's Pod gets, 21.4-21.9 MiB of memory (its
#: cgroup's usage) and 0.12-0.14 millicores; without it 12.2 MiB. 1m is the smallest cpu a request can name.
#: The node derives its ``pods`` capacity from the same figures (``turbok.node.nodeinfo.pods_capacity``).
BUILTIN_DEFAULT_REQUESTS: dict[str, str] = {"cpu": "1m", "memory": "22Mi"}

_TYPES = ("Pod", "Container", "PersistentVolumeClaim")


def _is_bytes(resource: str) -> bool:
    return resource != "cpu"


def _fmt(resource: str, value: Decimal) -> str:
    return format_quantity(value, binary=_is_bytes(resource))


def _items(limit_range: Obj) -> list[Obj]:
    limits = (limit_range.get("spec") or {}).get("limits")
    return [i for i in limits if isinstance(i, dict)] if isinstance(limits, list) else []


def _parsed(values: Any) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for name, value in as_dict(values).items():
        try:
            out[name] = parse_quantity(value)
        except (QuantityError, TypeError):
            continue
    return out


def set_defaults(limit_range: Obj) -> None:
    """kube's defaulting of LimitRange items of type Container, in place."""
    for item in _items(limit_range):
        if item.get("type") != "Container":
            continue
        default = item.setdefault("default", {})
        request = item.setdefault("defaultRequest", {})
        for source, target in ((item.get("max"), default), (default, request), (item.get("min"), request)):
            for name, value in (source or {}).items():
                target.setdefault(name, value)
        for key in ("default", "defaultRequest"):
            if not item[key]:
                del item[key]


def validate(limit_range: Obj) -> list[Cause]:
    causes: list[Cause] = []
    seen: set[str] = set()
    for i, item in enumerate(_items(limit_range)):
        path = f"spec.limits[{i}]"
        type_ = item.get("type")
        if type_ not in _TYPES and "/" not in str(type_):
            causes.append(Cause(f"{path}.type", f'Invalid value: "{type_}": must be a standard limit type or fully '
                                "qualified"))
        elif type_ in seen:
            causes.append(Cause(f"{path}.type", f'Duplicate value: "{type_}"', "FieldValueDuplicate"))
        seen.add(str(type_))
        bounds = {key: _parsed(item.get(key)) for key in ("min", "max", "default", "defaultRequest",
                                                           "maxLimitRequestRatio")}
        if type_ == "Pod":
            for key in ("default", "defaultRequest"):
                if item.get(key):
                    causes.append(Cause(f"{path}.{key}", "Forbidden: may not be specified when `type` is 'Pod'",
                                        "FieldValueForbidden"))
        mins, maxes = bounds["min"], bounds["max"]
        defaults, requests = bounds["default"], bounds["defaultRequest"]
        for name, low in mins.items():
            if name in maxes and low > maxes[name]:
                causes.append(Cause(f"{path}.min[{name}]", f'Invalid value: "{_fmt(name, low)}": min value '
                                    f"{_fmt(name, low)} is greater than max value {_fmt(name, maxes[name])}"))
        for name, value in requests.items():
            if name in maxes and value > maxes[name]:
                causes.append(Cause(f"{path}.defaultRequest[{name}]", f'Invalid value: "{_fmt(name, value)}": '
                                    f"default request value {_fmt(name, value)} is greater than max value "
                                    f"{_fmt(name, maxes[name])}"))
            if name in mins and value < mins[name]:
                causes.append(Cause(f"{path}.defaultRequest[{name}]", f'Invalid value: "{_fmt(name, value)}": '
                                    f"min value {_fmt(name, mins[name])} is greater than default request value "
                                    f"{_fmt(name, value)}"))
            if name in defaults and value > defaults[name]:
                causes.append(Cause(f"{path}.defaultRequest[{name}]", f'Invalid value: "{_fmt(name, value)}": '
                                    f"default request value {_fmt(name, value)} is greater than default limit "
                                    f"value {_fmt(name, defaults[name])}"))
        for name, value in defaults.items():
            if name in maxes and value > maxes[name]:
                # kube names the max as the invalid value here; kept, so messages compare equal.
                causes.append(Cause(f"{path}.default[{name}]", f'Invalid value: "{_fmt(name, maxes[name])}": '
                                    f"default value {_fmt(name, value)} is greater than max value "
                                    f"{_fmt(name, maxes[name])}"))
            if name in mins and value < mins[name]:
                causes.append(Cause(f"{path}.default[{name}]", f'Invalid value: "{_fmt(name, value)}": min value '
                                    f"{_fmt(name, mins[name])} is greater than default value {_fmt(name, value)}"))
        for name, ratio in bounds["maxLimitRequestRatio"].items():
            if ratio < 1:
                causes.append(Cause(f"{path}.maxLimitRequestRatio[{name}]", f'Invalid value: "{_fmt("cpu", ratio)}"'
                                    f": ratio {_fmt('cpu', ratio)} is less than 1"))
    return causes


def _container_items(limit_ranges: Iterable[Obj]) -> list[Obj]:
    return [item for lr in limit_ranges for item in _items(lr) if item.get("type") == "Container"]


def apply_defaults(pod_spec: Obj, limit_ranges: Iterable[Obj]) -> None:
    """Fill in each container's missing limits and requests from the LimitRanges (first one wins), in place."""
    items = _container_items(limit_ranges)
    if not items:
        return
    for _, container in containers(pod_spec):
        res = container.get("resources")
        if not isinstance(res, dict):
            res = container["resources"] = {}
        limits = as_dict(res.get("limits"))
        requests = as_dict(res.get("requests"))
        given_limits = set(limits)
        for item in items:
            for name, value in (item.get("default") or {}).items():
                limits.setdefault(name, value)
            for name, value in (item.get("defaultRequest") or {}).items():
                # A limit the user gave is also the request (API defaulting ran before LimitRanger).
                if name not in given_limits:
                    requests.setdefault(name, value)
        for key, values in (("limits", limits), ("requests", requests)):
            if values:
                res[key] = values


def apply_builtin_defaults(pod_spec: Obj, defaults: dict[str, str] | None = None,
                           requests: dict[str, str] | None = None) -> None:
    """Give each container turbok's limits where it still has none, never below its own request, and with a
    limit given this way the built-in request where it has none (never above that limit). A limit the user or
    a LimitRange gave keeps kube's defaulting: its request is the limit."""
    for _, container in containers(pod_spec):
        res = container.get("resources")
        if not isinstance(res, dict):
            res = container["resources"] = {}
        limits = as_dict(res.get("limits"))
        wanted = as_dict(res.get("requests"))
        have = container_resources(container)
        for name, value in (defaults or BUILTIN_DEFAULT_LIMITS).items():
            if name in limits:
                continue
            request = have.requests.get(name)
            limits[name] = _fmt(name, request) if request is not None and request > parse_quantity(value) else value
            if request is None:
                default_request = (BUILTIN_DEFAULT_REQUESTS if requests is None else requests).get(name)
                if default_request is not None:
                    wanted[name] = _fmt(name, min(parse_quantity(default_request), parse_quantity(limits[name])))
        if limits:
            res["limits"] = limits
        if wanted:
            res["requests"] = wanted


def _min_max(kind: str, item: Obj, requests: dict[str, Decimal], limits: dict[str, Decimal]) -> list[str]:
    out = []

    for name, low in sorted(_parsed(item.get("min")).items()):
        req, lim = requests.get(name), limits.get(name)
        if req is None:
            out.append(f"minimum {name} usage per {kind} is {_fmt(name, low)}.  No request is specified")
        elif req < low:
            out.append(f"minimum {name} usage per {kind} is {_fmt(name, low)}, but request is {_fmt(name, req)}")
        elif lim is not None and lim < low:
            out.append(f"minimum {name} usage per {kind} is {_fmt(name, low)}, but limit is {_fmt(name, lim)}")
    for name, high in sorted(_parsed(item.get("max")).items()):
        req, lim = requests.get(name), limits.get(name)
        if lim is None:
            out.append(f"maximum {name} usage per {kind} is {_fmt(name, high)}.  No limit is specified")
        elif lim > high:
            out.append(f"maximum {name} usage per {kind} is {_fmt(name, high)}, but limit is {_fmt(name, lim)}")
        elif req is not None and req > high:
            out.append(f"maximum {name} usage per {kind} is {_fmt(name, high)}, but request is {_fmt(name, req)}")
    for name, ratio in sorted(_parsed(item.get("maxLimitRequestRatio")).items()):
        req, lim = requests.get(name), limits.get(name)
        if not req:
            out.append(f"{name} max limit to request ratio per {kind} is {_fmt('cpu', ratio)}, but no request is "
                       "specified or request is 0")
        elif not lim:
            out.append(f"{name} max limit to request ratio per {kind} is {_fmt('cpu', ratio)}, but no limit is "
                       "specified or limit is 0")
        elif lim / req > ratio:
            out.append(f"{name} max limit to request ratio per {kind} is {_fmt('cpu', ratio)}, but provided ratio "
                       f"is {float(lim / req):f}")
    return out


def violations(pod_spec: Obj, limit_ranges: Iterable[Obj]) -> list[str]:
    """What LimitRanger refuses in this pod spec (empty: allowed)."""
    ranges = list(limit_ranges)
    out: list[str] = []
    for _, container in containers(pod_spec):
        res = container_resources(container)
        for item in _container_items(ranges):
            out.extend(_min_max("Container", item, res.requests, res.limits))
    pod = pod_resources(pod_spec)
    for lr in ranges:
        for item in _items(lr):
            if item.get("type") == "Pod":
                out.extend(_min_max("Pod", item, pod.requests, pod.limits))
    return out
