"""What a claim may add to its template: env, volume claim templates, pod metadata.

The template's policies decide (``envVarsInjectionPolicy``,
``volumeClaimTemplatesPolicy``: Disallowed, Allowed, Overrides), with the
reasons and messages of upstream, so the official client fails fast on the
same terminal reasons. Pure functions; ``ClaimError`` carries the Ready
condition's reason.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from turbok.controllers import labels as lb
from turbok.errors import TurbokError

__all__ = ["ClaimError", "apply_env", "merge_pod_metadata", "merge_volume_claim_templates"]

Obj = dict[str, Any]

_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


class ClaimError(TurbokError):
    """A claim cannot be satisfied as it stands; ``reason`` goes on its Ready condition."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def apply_env(pod_spec: Obj, env: list[Obj], policy: str) -> None:
    """Inject a claim's ``env`` into the pod spec, in place, as the template's policy allows."""
    if not env:
        return
    if policy not in ("Allowed", "Overrides"):
        raise ClaimError("EnvVarsInjectionRejected", "environment variable injection rejected: environment "
                         "variable injection is not allowed by the template policy")
    containers = pod_spec.get("containers") or []
    everything = containers + (pod_spec.get("initContainers") or [])
    for var in env:
        target_name = var.get("containerName")
        if target_name:
            target = next((c for c in everything if c.get("name") == target_name), None)
            if target is None:
                raise ClaimError("ReconcilerError", f'Error seen: target container "{target_name}" not found in '
                                 f'template for environment variable "{var["name"]}"')
        elif containers:
            target = containers[0]
        else:
            raise ClaimError("ReconcilerError", "Error seen: the template has no container to inject env into")
        existing = target.setdefault("env", [])
        if policy == "Allowed" and target.get("envFrom"):
            raise ClaimError("EnvVarsInjectionRejected", f'environment variable injection rejected: container '
                             f'"{target.get("name")}" uses EnvFrom sources; Allowed policy cannot safely prevent '
                             "overriding them")
        for current in existing:
            if current.get("name") == var["name"]:
                if policy == "Allowed":
                    raise ClaimError("ReconcilerError", "Error seen: environment variable override is not allowed "
                                     f'by the template policy for variable "{var["name"]}"')
                current.clear()
                current.update({"name": var["name"], "value": var["value"]})
                break
        else:
            existing.append({"name": var["name"], "value": var["value"]})


def _check_vcts(vcts: list[Obj], side: str) -> None:
    seen: set[str] = set()
    for i, vct in enumerate(vcts):
        name = (vct.get("metadata") or {}).get("name", "")
        if not name:
            raise ClaimError("VolumeClaimTemplatesError", f"failed to merge volume claim templates: {side}: invalid "
                             f"volume claim templates: volumeClaimTemplates[{i}].metadata.name is required")
        if name in seen:
            raise ClaimError("VolumeClaimTemplatesError", f"failed to merge volume claim templates: {side}: invalid "
                             f'volume claim templates: duplicate volume claim template name "{name}"')
        seen.add(name)


def merge_volume_claim_templates(template: list[Obj], claim: list[Obj], policy: str) -> list[Obj]:
    _check_vcts(template, "template")
    _check_vcts(claim, "claim")
    if not claim:
        return copy.deepcopy(template)
    if policy not in ("Allowed", "Overrides"):
        raise ClaimError("VolumeClaimTemplatesError", "failed to merge volume claim templates: volume claim "
                         "templates are disallowed by the template")
    merged = copy.deepcopy(template)
    names = {v["metadata"]["name"]: i for i, v in enumerate(merged)}
    for vct in claim:
        name = vct["metadata"]["name"]
        if name in names:
            if policy == "Allowed":
                raise ClaimError("VolumeClaimTemplatesError", "failed to merge volume claim templates: overriding "
                                 f'volume claim templates is forbidden by the template: cannot override template '
                                 f'volume "{name}"')
            merged[names[name]] = copy.deepcopy(vct)
        else:
            merged.append(copy.deepcopy(vct))
    return merged


def _check_key(key: str, what: str) -> None:
    if not _QUALIFIED.match(key) or len(key.rpartition("/")[0]) > 253:
        raise ClaimError("InvalidMetadata", f'invalid additionalPodMetadata: failed to validate {what} "{key}": '
                         "must be a qualified name (an optional DNS subdomain prefix and '/', then at most 63 "
                         "alphanumeric characters, '-', '_' or '.')")
    if key.startswith(lb.RESERVED_PREFIXES):
        raise ClaimError("InvalidMetadata", f'invalid additionalPodMetadata: failed to validate {what} "{key}": '
                         "the agents.x-k8s.io prefixes are reserved for the controllers")


def merge_pod_metadata(base: Obj, extra: Obj | None, *, validate_only: bool = False) -> Obj:
    """Validate ``additionalPodMetadata`` and merge it into pod template metadata.

    A key the template already sets to another value is a conflict (ReconcilerError, as upstream).
    """
    extra = extra or {}
    for key, value in (extra.get("labels") or {}).items():
        _check_key(key, "label")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ClaimError("InvalidMetadata", f'invalid additionalPodMetadata: failed to validate label "{key}": '
                             f"invalid value {value!r}")
        if key == "app" and value.lower() == "sandbox-router":
            raise ClaimError("InvalidMetadata", 'invalid additionalPodMetadata: failed to validate label "app": '
                             "app=sandbox-router is reserved for the sandbox router")
    for key in extra.get("annotations") or {}:
        _check_key(key, "annotation")
    if validate_only:
        return copy.deepcopy(extra)
    merged = copy.deepcopy(base)
    for field, what in (("labels", "label"), ("annotations", "annotation")):
        for key, value in (extra.get(field) or {}).items():
            current = (merged.get(field) or {}).get(key)
            if current is not None and current != value:
                raise ClaimError("ReconcilerError", f'Error seen: metadata override conflict: {what} "{key}" is '
                                 f'defined in template with value "{current}", but claim requests "{value}"')
            merged.setdefault(field, {})[key] = value
    return merged
