"""Nodes as kube-apiserver 1.37 validates them (``ValidateNode``, ``ValidateNodeUpdate``).

Taints (a key, a supported effect; kube names them under ``metadata.taints``,
as its validator does), pod CIDRs that parse and, once set, do not change.
turbok has no node lifecycle controller, so a new Node does not get the
``node.kubernetes.io/not-ready`` taint kube's admission adds (nothing would
take it off); the node reports readiness in its Ready condition.
Pure functions; ``turbok.store.strategy`` wires them to the kind.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from turbok.api import validation as v
from turbok.api.meta import qualified_name_problems
from turbok.api.status import Cause

__all__ = ["validate", "validate_update"]

Obj = dict[str, Any]

_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_CIDR_MESSAGE = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def validate(node: Obj) -> list[Cause]:
    spec = node.get("spec") if isinstance(node.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    causes: list[Cause] = []
    seen: set[tuple[Any, Any]] = set()
    for i, taint in enumerate(spec.get("taints") or []):
        if not isinstance(taint, dict):
            continue
        where = f"metadata.taints[{i}]"
        key = taint.get("key")
        if not key:
            causes.append(v.required(f"{where}.key"))
        else:
            causes += [v.invalid(f"{where}.key", key, p) for p in qualified_name_problems(str(key))]
        effect = taint.get("effect")
        if not effect:
            causes.append(v.required(f"{where}.effect"))
        elif effect not in _EFFECTS:
            causes.append(v.not_supported(f"{where}.effect", effect, _EFFECTS))
        if (key, effect) in seen:
            causes.append(v.duplicate(f"metadata.taints[{i}]", f"{key}:{effect}"))
        seen.add((key, effect))
    for i, cidr in enumerate(spec.get("podCIDRs") or []):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (ValueError, TypeError):
            causes.append(v.invalid(f"spec.podCIDRs[{i}]", cidr, _CIDR_MESSAGE))
    return causes


def validate_update(new: Obj, old: Obj) -> list[Cause]:
    causes = validate(new)
    old_cidrs = (old.get("spec") or {}).get("podCIDRs") or []
    new_cidrs = (new.get("spec") or {}).get("podCIDRs") or []
    if old_cidrs and new_cidrs != old_cidrs:
        causes.append(v.forbidden("spec.podCIDRs", 'node updates may not change podCIDR except from "" to valid'))
    old_provider = (old.get("spec") or {}).get("providerID")
    if old_provider and (new.get("spec") or {}).get("providerID") != old_provider:
        causes.append(v.forbidden("spec.providerID", 'node updates may not change providerID except from "" to '
                                                     "valid"))
    return causes
