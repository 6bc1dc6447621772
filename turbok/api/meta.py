"""Object metadata rules, selectors, conditions and timestamps.

What kube-apiserver checks in ``metadata`` (names, labels, annotations), how
label and field selectors parse and match, and the helpers every controller
uses to read and write ``status.conditions``. Pure functions over dicts.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from turbok.api.status import BadRequest, Cause
from turbok.api.validation import DNS1123_LABEL_MESSAGE, DNS1123_SUBDOMAIN_MESSAGE

__all__ = [
    "OBJECT_META_FIELDS",
    "FieldSelector",
    "LabelSelector",
    "condition",
    "field_text",
    "field_values",
    "generate_name",
    "label_value_problems",
    "is_true",
    "now",
    "parse_time",
    "prune_metadata",
    "qualified_name_problems",
    "set_condition",
    "validate_metadata",
]

Obj = dict[str, Any]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ANNOTATIONS_MAX = 256 * 1024


def now() -> str:
    """The current time as Kubernetes writes it: RFC 3339, UTC, whole seconds."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def generate_name(prefix: str) -> str:
    """``generateName`` + 5 characters from the alphabet kube-apiserver uses."""
    return prefix[:58] + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))


def _check_name(name: str, *, label: bool) -> str | None:
    limit, pattern = (63, _DNS1123_LABEL) if label else (253, _DNS1123_SUBDOMAIN)
    if len(name) > limit:
        return f"must be no more than {limit} characters"
    if not pattern.match(name):
        return DNS1123_LABEL_MESSAGE if label else DNS1123_SUBDOMAIN_MESSAGE
    return None


_QUALIFIED = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
              "character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
              "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
_LABEL_VALUE_MESSAGE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                        "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                        "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")


def qualified_name_problems(key: str, *, what: str = "a valid label key") -> list[str]:
    """``IsQualifiedName``: label and annotation keys, an optional DNS subdomain prefix and a name."""
    parts = key.split("/")
    if len(parts) > 2:
        return [f"{what} {_QUALIFIED} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    problems = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        elif len(prefix) > 253:
            problems.append("prefix part must be no more than 253 characters")
        elif not _DNS1123_SUBDOMAIN.match(prefix):
            problems.append(f"prefix part {DNS1123_SUBDOMAIN_MESSAGE}")
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    if not _LABEL_NAME.match(name):
        problems.append(f"name part {_QUALIFIED}")
    return problems


def label_value_problems(value: str) -> list[str]:
    """``IsValidLabelValue``."""
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        problems.append(_LABEL_VALUE_MESSAGE)
    return problems


def _check_qualified_key(key: str) -> str | None:
    problems = qualified_name_problems(key)
    return problems[0] if problems else None


#: The ObjectMeta fields kube-apiserver keeps; any other key under ``metadata`` is unknown and pruned.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})
_OWNER_REFERENCE_FIELDS = frozenset({"apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion"})


def prune_metadata(meta: Obj) -> list[str]:
    """Drop fields ObjectMeta (and OwnerReference) does not have, in place; return their paths."""
    dropped = []
    for key in list(meta):
        if key not in OBJECT_META_FIELDS:
            del meta[key]
            dropped.append(f"metadata.{key}")
    refs = meta.get("ownerReferences")
    if isinstance(refs, list):
        for i, ref in enumerate(refs):
            if isinstance(ref, dict):
                for key in [k for k in ref if k not in _OWNER_REFERENCE_FIELDS]:
                    del ref[key]
                    dropped.append(f"metadata.ownerReferences[{i}].{key}")
    return dropped


def validate_metadata(meta: Any, *, label_name: bool = False, require_name: bool = True) -> list[Cause]:
    """Causes for a bad ``metadata``: name, labels, annotations, owner references, finalizers."""
    if not isinstance(meta, dict):
        return [Cause("metadata", "Invalid value: metadata must be an object")]
    causes: list[Cause] = []
    name = meta.get("name")
    if name:
        if not isinstance(name, str):
            causes.append(Cause("metadata.name", f"Invalid value: {name!r}: must be a string"))
        elif problem := _check_name(name, label=label_name):
            causes.append(Cause("metadata.name", f'Invalid value: "{name}": {problem}'))
    elif require_name and not meta.get("generateName"):
        causes.append(Cause("metadata.name", "Required value: name or generateName is required", "FieldValueRequired"))
    for key in ("generateName", "namespace", "uid", "resourceVersion"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            causes.append(Cause(f"metadata.{key}", f"Invalid value: {meta[key]!r}: must be a string"))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(Cause("metadata.labels", "Invalid value: labels must be a map of strings"))
    else:
        for key, value in labels.items():
            for problem in qualified_name_problems(str(key)):
                causes.append(Cause("metadata.labels", f'Invalid value: "{key}": {problem}'))
            for problem in label_value_problems(value) if isinstance(value, str) else ["must be a string"]:
                causes.append(Cause("metadata.labels", f'Invalid value: "{value}": {problem}'))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        causes.append(Cause("metadata.annotations", "Invalid value: annotations must be a map of strings"))
    else:
        for key in annotations:
            for problem in qualified_name_problems(str(key).lower(), what="a qualified name"):
                causes.append(Cause("metadata.annotations", f'Invalid value: "{key}": {problem}'))
        if sum(len(k) + len(v) for k, v in annotations.items()) > _ANNOTATIONS_MAX:
            causes.append(Cause("metadata.annotations", "Too long: must have at most 262144 bytes",
                                "FieldValueTooLong"))
    refs = meta.get("ownerReferences") or []
    if not isinstance(refs, list):
        causes.append(Cause("metadata.ownerReferences", "Invalid value: ownerReferences must be a list"))
        refs = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            causes.append(Cause(f"metadata.ownerReferences[{i}]", "Invalid value: must be an object"))
            continue
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                causes.append(Cause(f"metadata.ownerReferences[{i}].{key}", "Required value", "FieldValueRequired"))
    if sum(1 for ref in refs if isinstance(ref, dict) and ref.get("controller")) > 1:
        causes.append(Cause("metadata.ownerReferences", "Invalid value: only one reference can have Controller set to true"))
    finalizers = meta.get("finalizers") or []
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        causes.append(Cause("metadata.finalizers", "Invalid value: finalizers must be a list of strings"))
    return causes


# ---------------------------------------------------------------- selectors


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        if self.op in ("gt", "lt"):
            # Numeric comparisons: a label that is absent or not an integer never matches.
            try:
                have, want = int(labels[self.key]), int(next(iter(self.values)))
            except (KeyError, ValueError, StopIteration):
                return False
            return have > want if self.op == "gt" else have < want
        return not present or labels[self.key] not in self.values  # "!=", "notin"


class LabelSelector:
    """A parsed label selector (``a=b,c!=d,e in (f,g),!h,i``), as in ``?labelSelector=``."""

    def __init__(self, requirements: list[_Requirement]) -> None:
        self.requirements = requirements

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        reqs: list[_Requirement] = []
        for part in _split_selector(text or ""):
            m = re.fullmatch(r"\s*([^\s()=!<>,]+)\s+(in|notin)\s*\(([^)]*)\)\s*", part)
            if m:
                values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
                reqs.append(_Requirement(m.group(1), m.group(2), values))
                continue
            m = re.fullmatch(r"\s*([^=!<>\s]+)\s*(==|=|!=)\s*([^=!<>\s]*)\s*", part)
            if m:
                op = "!=" if m.group(2) == "!=" else "="
                reqs.append(_Requirement(m.group(1), op, frozenset([m.group(3)])))
                continue
            m = re.fullmatch(r"\s*([^=!<>\s]+)\s*([<>])\s*(-?\d+)\s*", part)
            if m:
                reqs.append(_Requirement(m.group(1), "gt" if m.group(2) == ">" else "lt", frozenset([m.group(3)])))
                continue
            m = re.fullmatch(r"\s*(!?)\s*([^=!<>\s()]+)\s*", part)
            if m:
                reqs.append(_Requirement(m.group(2), "!" if m.group(1) else "exists"))
                continue
            raise BadRequest(f"unable to parse requirement: invalid label selector {text!r}")
        for req in reqs:
            if problem := _check_qualified_key(req.key):
                raise BadRequest(f"invalid label selector {text!r}: key {req.key!r}: {problem}")
            bad = [v for v in req.values if req.op not in ("gt", "lt") and not _LABEL_VALUE.match(v)]
            if bad or any(len(v) > 63 for v in req.values):
                raise BadRequest(f"invalid label selector {text!r}: invalid value {(bad or list(req.values))[0]!r}")
        return cls(reqs)

    @classmethod
    def from_match(cls, selector: Mapping[str, Any]) -> LabelSelector:
        """From a ``metav1.LabelSelector`` object (matchLabels, matchExpressions)."""
        reqs = [_Requirement(k, "=", frozenset([v])) for k, v in (selector.get("matchLabels") or {}).items()]
        ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        for expr in selector.get("matchExpressions") or []:
            op = ops.get(expr.get("operator", "")) if isinstance(expr, dict) else None
            if op is None or not expr.get("key"):
                raise BadRequest(f"invalid label selector expression {expr!r}: operator must be one of "
                                 f"{', '.join(ops)} and key is required")
            values = frozenset(expr.get("values") or [])
            if op in ("in", "notin") and not values:
                raise BadRequest(f"invalid label selector expression {expr!r}: {expr['operator']} needs values")
            reqs.append(_Requirement(expr["key"], op, values))
        return cls(reqs)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]


class FieldSelector:
    """``metadata.name=x,metadata.namespace!=y``: the field selectors custom resources support."""

    SUPPORTED = ("metadata.name", "metadata.namespace")

    def __init__(self, terms: list[tuple[str, bool, str]]) -> None:
        self.terms = terms

    @classmethod
    def parse(cls, text: str | None, *, extra: tuple[str, ...] = ()) -> FieldSelector:
        terms: list[tuple[str, bool, str]] = []
        for part in (text or "").split(","):
            if not part.strip():
                continue
            m = re.fullmatch(r"\s*([A-Za-z.]+)\s*(==|=|!=)\s*(\S*)\s*", part)
            if not m:
                raise BadRequest(f"invalid field selector: {part!r}")
            field_, op, value = m.groups()
            if field_ not in cls.SUPPORTED + extra:
                raise BadRequest(f"field label not supported: {field_}")  # kube-apiserver's words
            terms.append((field_, op != "!=", value))
        return cls(terms)

    def metadata_only(self) -> bool:
        """True when only metadata.name/namespace are named: a row's key answers it, no object is read."""
        return all(name in self.SUPPORTED for name, _, _ in self.terms)

    def value_of(self, field_: str) -> str | None:
        """The value an equality term pins ``field_`` to, if any (lets the store use its index)."""
        for name, equal, value in self.terms:
            if name == field_ and equal:
                return value
        return None

    def matches(self, obj: Obj, getter: Callable[[Obj, str], Any] | None = None) -> bool:
        for field_, equal, value in self.terms:
            got = getter(obj, field_) if getter else _dotted(obj, field_)
            if got is None and field_ in _BOOLEAN_FIELDS:
                got = False
            if (field_text(got) == value) != equal:
                return False
        return True

    def matches_values(self, values: Mapping[str, str]) -> bool:
        """Whether fields already read (``field_values``) match; a field not given is empty."""
        return all((values.get(field_, "") == value) == equal for field_, equal, value in self.terms)

    def __bool__(self) -> bool:
        return bool(self.terms)


def field_text(value: Any) -> str:
    """A field's value as a field selector compares it: ``true``/``false`` for booleans, "" for none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


#: Selectable fields that are Go booleans: absent reads as "false", as kube's field sets write them.
_BOOLEAN_FIELDS = frozenset({"spec.hostNetwork", "spec.unschedulable"})


def field_values(obj: Obj, fields: Iterable[str]) -> dict[str, str]:
    """The selectable ``fields`` of ``obj`` (dotted paths) as text, for matching later."""
    return {f: field_text(_dotted(obj, f) or (False if f in _BOOLEAN_FIELDS else None)) for f in fields}


def _dotted(obj: Obj, path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


# ---------------------------------------------------------------- conditions


def condition(obj: Obj, type_: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(obj: Obj, type_: str) -> bool:
    cond = condition(obj, type_)
    return bool(cond and cond.get("status") == "True")


def set_condition(
    status: Obj,
    type_: str,
    state: bool | str,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
) -> bool:
    """Set a condition in ``status`` (in place); keep lastTransitionTime unless the status flips.

    Returns True when anything changed, so reconcilers write status only when needed.
    """
    value = state if isinstance(state, str) else ("True" if state else "False")
    conditions: list[Obj] = status.setdefault("conditions", [])
    new: Obj = {"type": type_, "status": value, "reason": reason, "message": message}
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    for i, cond in enumerate(conditions):
        if cond.get("type") != type_:
            continue
        new["lastTransitionTime"] = cond.get("lastTransitionTime") if cond.get("status") == value else now()
        if not new["lastTransitionTime"]:
            new["lastTransitionTime"] = now()
        if cond == new:
            return False
        conditions[i] = new
        return True
    new["lastTransitionTime"] = now()
    conditions.append(new)
    return True
