"""What a claim may add to its template: env, volume claim templates, pod metadata.

The template's policies decide (``envVarsInjectionPolicy``,
``volumeClaimTemplatesPolicy``: Disallowed, Allowed, Overrides), with the
reasons and messages of upstream, so the official client fails fast on the
same terminal reasons. Pure functions; ``ClaimError`` carries the Ready
condition's reason.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from turbok.controllers import labels as lb
from turbok.errors import TurbokError

__all__ = ["DEFAULT_LABEL_DOMAINS", "ClaimError", "apply_env", "merge_pod_metadata", "merge_volume_claim_templates",
           "validate_pod_metadata"]

Obj = dict[str, Any]
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


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


#: Label domains ``additionalPodMetadata`` may use, as upstream's controller defaults them
#: (its ``/etc/sandbox-config/allowed-label-domains``, absent).
DEFAULT_LABEL_DOMAINS = ("sandbox.users.io",)
#: Annotation domains ``additionalPodMetadata`` may not use, and the one key exempted.
_RESTRICTED_DOMAINS = ("kubernetes.io", "k8s.io", "agents.x-k8s.io")
_EXEMPT_KEYS = (lb.SAFE_TO_EVICT,)

_NAME_MSG = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
             "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
             "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
_PREFIX_MSG = ("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
               "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
               "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
              "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
              "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _qualified_name_errors(key: str) -> list[str]:
    """apimachinery's IsQualifiedName, in its words."""
    parts = key.split("/")
    if len(parts) > 2:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix "
                "and '/' (e.g. 'example.com/MyName')"]
    errors = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        elif len(prefix) > 253:
            errors.append("prefix part must be no more than 253 characters")
        elif not _PREFIX.match(prefix):
            errors.append(_PREFIX_MSG)
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if name and not _NAME.match(name):
        errors.append(_NAME_MSG)
    return errors


def _matches_domain(domain: str, domains: tuple[str, ...]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def _key_error(key: str, value: str, *, label: bool, allowed: tuple[str, ...]) -> str | None:
    """What upstream's validateAdditionalPodMetadata says of one key, or None when it is fine."""
    kind = "label" if label else "annotation"
    if errors := _qualified_name_errors(key):
        return f'invalid {kind} key: {_q(key)}: {"; ".join(errors)}'
    if label and key.lower() == "app" and value.lower() == "sandbox-router":
        return f"restricted system label value: {_q(key)}={_q(value)} is not allowed in AdditionalPodMetadata"
    domain = key.split("/", 1)[0].lower() if "/" in key else ""
    if label:
        if not domain:
            return (f"label {_q(key)} must have a domain prefix (e.g. 'sandbox.users.io/my-label') to prevent "
                    "opting into unintended policy domains")
        if not _matches_domain(domain, allowed):
            return f"label domain {_q(domain)} is not in the allowlist"
        if len(value) > 63:
            return f"invalid label value: {_q(value)} does not match allowed pattern: must be no more than 63 characters"
        if not _LABEL_VALUE.match(value):
            return f"invalid label value: {_q(value)} does not match allowed pattern: {_VALUE_MSG}"
    elif _matches_domain(domain, _RESTRICTED_DOMAINS) and key not in _EXEMPT_KEYS:
        return f"restricted system domain: {_q(key)} is not allowed in AdditionalPodMetadata"
    return None


def _q(text: str) -> str:
    """Go's %q of a plain string."""
    return json.dumps(text, ensure_ascii=False)


def validate_pod_metadata(extra: Obj | None, allowed_label_domains: tuple[str, ...] = DEFAULT_LABEL_DOMAINS) -> None:
    """Refuse ``additionalPodMetadata`` as upstream does: labels only under allowed domains (default
    ``sandbox.users.io``), annotations not under kubernetes.io, k8s.io or agents.x-k8s.io (except
    cluster-autoscaler's safe-to-evict), valid keys and label values, no ``app=sandbox-router``."""
    extra = extra or {}
    for field, label in (("labels", True), ("annotations", False)):
        for key, value in (extra.get(field) or {}).items():
            error = _key_error(str(key), value if isinstance(value, str) else str(value), label=label,
                               allowed=allowed_label_domains or DEFAULT_LABEL_DOMAINS)
            if error is not None:
                raise ClaimError("InvalidMetadata", f"invalid additionalPodMetadata: failed to validate "
                                 f"{'label' if label else 'annotation'} {_q(str(key))}: {error}")


def merge_pod_metadata(base: Obj, extra: Obj | None,
                       allowed_label_domains: tuple[str, ...] = DEFAULT_LABEL_DOMAINS) -> Obj:
    """Validate ``additionalPodMetadata`` and merge it into pod template metadata.

    A key the template already sets to another value is a conflict (ReconcilerError, as upstream).
    """
    validate_pod_metadata(extra, allowed_label_domains)
    extra = extra or {}
    merged = copy.deepcopy(base)
    for field, what in (("labels", "label"), ("annotations", "annotation")):
        for key, value in (extra.get(field) or {}).items():
            current = (merged.get(field) or {}).get(key)
            if current is not None and current != value:
                raise ClaimError("ReconcilerError", f'Error seen: metadata override conflict: {what} "{key}" is '
                                 f'defined in template with value "{current}", but claim requests "{value}"')
            merged.setdefault(field, {})[key] = value
    return merged
