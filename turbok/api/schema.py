"""Structural OpenAPI v3 schemas, applied the way kube-apiserver applies CRD schemas.

Three passes over an object, in the order the apiserver runs them:

1. ``prune``: drop fields the schema does not declare (unless
   ``x-kubernetes-preserve-unknown-fields``) and nulls where not ``nullable``;
   return the dropped paths so ``fieldValidation=Strict`` can refuse them.
2. ``default``: fill ``default`` values where a field is missing.
3. ``validate``: types, required, enum, bounds, lengths, patterns, formats,
   int-or-string, list-map uniqueness and the CEL rules (``x-kubernetes-validations``,
   evaluated by ``turbok.api.cel``), returning ``Cause`` objects
   whose messages match kube-apiserver's.

``metadata`` below the root is left alone here: ``turbok.api.meta`` owns it.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
from typing import Any

from turbok.api import cel
from turbok.api.status import Cause

__all__ = ["default", "prune", "validate"]

log = logging.getLogger(__name__)

Schema = dict[str, Any]

_MISSING = object()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json(value: Any) -> str:
    """Render a value the way Go's %#v-ish messages in kube-apiserver do (roughly)."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{v}" for k, v in value.items()) + "]"
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# ---------------------------------------------------------------- pruning


def prune(obj: dict[str, Any], schema: Schema) -> list[str]:
    """Remove undeclared fields in place (root ``metadata`` excepted); return their paths."""
    dropped: list[str] = []
    _prune(obj, schema, "", dropped, root=True)
    return dropped


def _prune(value: Any, schema: Schema, path: str, dropped: list[str], root: bool = False) -> None:
    keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if isinstance(value, dict):
        props: dict[str, Schema] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in list(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            sub = props.get(key)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if sub is None:
                if not (keep_unknown or extra is True):
                    del value[key]
                    dropped.append(_join(path, key))
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]
                continue
            _prune(value[key], sub, _join(path, key), dropped)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _prune(item, items, f"{path}[{i}]", dropped)


# ---------------------------------------------------------------- defaulting


def default(obj: Any, schema: Schema) -> None:
    """Fill missing fields that declare a ``default``, in place, depth first."""
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                default(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, val in obj.items():
                if key not in (schema.get("properties") or {}):
                    default(val, extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            default(item, schema["items"])


# ---------------------------------------------------------------- validation


def validate(obj: Any, schema: Schema, old: Any = _MISSING, *, types_only: bool = False) -> list[Cause]:
    """Every violation of ``schema`` in ``obj``; ``old`` enables transition rules on update.

    ``types_only``: only what decoding JSON into Go types refuses (wrong types, integers out of range),
    as kube-apiserver checks its built-in kinds; their other rules are Go code (``turbok.store.strategy``).
    """
    causes: list[Cause] = []
    _validate(obj, schema, "", causes, old, types_only)
    return causes


def _is_type(value: Any, type_: str) -> bool:
    if type_ == "object":
        return isinstance(value, dict)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_ == "boolean":
        return isinstance(value, bool)
    return True


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _invalid(causes: list[Cause], path: str, value: Any, detail: str) -> None:
    causes.append(Cause(field=path, message=f"Invalid value: {_json(value)}: {detail}"))


def _validate(value: Any, schema: Schema, path: str, causes: list[Cause], old: Any, types_only: bool = False) -> None:
    # Type errors show the type found as the value, as kube-apiserver writes them:
    # 'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"'.
    found = _type_name(value)
    if value is None:
        if not schema.get("nullable"):
            _invalid(causes, path, found, f"{path} in body must be of type {schema.get('type', 'object')}: \"null\"")
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _is_type(value, "integer")):
            _invalid(causes, path, found, f"{path} in body must be of type integer,string: {_json(found)}")
            return
    elif "type" in schema and not _is_type(value, schema["type"]):
        _invalid(causes, path, found, f"{path} in body must be of type {schema['type']}: {_json(found)}")
        return

    if types_only:
        if isinstance(value, int | float) and not isinstance(value, bool):
            bounds = _INT_RANGES.get(schema.get("format", ""))
            if bounds and not bounds[0] <= value <= bounds[1]:
                _invalid(causes, path, value, f"{path} in body must be of type {schema['format']}")
        elif isinstance(value, dict):
            _validate_object(value, schema, path, causes, old, types_only)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                _validate(item, schema["items"], f"{path}[{i}]", causes, _MISSING, types_only)
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_json(v) for v in schema["enum"])
        causes.append(
            Cause(field=path, message=f"Unsupported value: {_json(value)}: supported values: {supported}",
                  reason="FieldValueNotSupported")
        )
    if isinstance(value, str):
        _validate_string(value, schema, path, causes)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, path, causes)
    elif isinstance(value, dict):
        _validate_object(value, schema, path, causes, old)
    elif isinstance(value, list):
        _validate_array(value, schema, path, causes, old)

    for rule in schema.get("x-kubernetes-validations") or ():
        _check_rule(rule, value, old, path, causes)


def _validate_string(value: str, schema: Schema, path: str, causes: list[Cause]) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append(Cause(field=path, message=f"Too long: may not be more than {schema['maxLength']} bytes",
                            reason="FieldValueTooLong"))
    if "minLength" in schema and len(value) < schema["minLength"]:
        _invalid(causes, path, value, f"{path} in body should be at least {schema['minLength']} chars long")
    pattern = schema.get("pattern")
    if pattern and not _compiled(pattern).search(value):
        _invalid(causes, path, value, f"{path} in body should match '{pattern}'")
    fmt = schema.get("format")
    if fmt == "date-time" and not _is_datetime(value):
        _invalid(causes, path, value, f"{path} in body must be of type date-time: {_json(value)}")


def _validate_number(value: float, schema: Schema, path: str, causes: list[Cause]) -> None:
    bounds = _INT_RANGES.get(schema.get("format", ""))
    if bounds and not bounds[0] <= value <= bounds[1]:
        _invalid(causes, path, value, f"{path} in body must be of type {schema['format']}")
    if "minimum" in schema and value < schema["minimum"]:
        _invalid(causes, path, value, f"{path} in body should be greater than or equal to {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        _invalid(causes, path, value, f"{path} in body should be less than or equal to {schema['maximum']}")


def _validate_object(value: dict[str, Any], schema: Schema, path: str, causes: list[Cause], old: Any,
                     types_only: bool = False) -> None:
    props: dict[str, Schema] = schema.get("properties") or {}
    for key in () if types_only else schema.get("required") or ():
        if key not in value:
            causes.append(Cause(field=_join(path, key), message="Required value", reason="FieldValueRequired"))
    extra = schema.get("additionalProperties")
    old_map = old if isinstance(old, dict) else {}
    for key, sub_value in value.items():
        if path == "" and key == "metadata":
            continue
        sub = props.get(key)
        if sub is None and isinstance(extra, dict):
            sub = extra
        if sub is not None:
            _validate(sub_value, sub, _join(path, key), causes, old_map.get(key, _MISSING), types_only)


def _validate_array(value: list[Any], schema: Schema, path: str, causes: list[Cause], old: Any) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        causes.append(Cause(field=path, message=f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                            reason="FieldValueTooMany"))
    if "minItems" in schema and len(value) < schema["minItems"]:
        _invalid(causes, path, value, f"{path} in body should have at least {schema['minItems']} items")
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _validate(item, items, f"{path}[{i}]", causes, _MISSING)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        seen: list[Any] = []
        for i, item in enumerate(value):
            if item in seen:
                causes.append(Cause(field=f"{path}[{i}]", message=f"Duplicate value: {_json(item)}",
                                    reason="FieldValueDuplicate"))
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            k = tuple(_hashable(item.get(key)) for key in keys)
            if k in seen_keys:
                shown = ", ".join(f'"{key}":{_json(item.get(key))}' for key in keys)
                causes.append(Cause(field=f"{path}[{i}]", message=f"Duplicate value: map[{shown}]",
                                    reason="FieldValueDuplicate"))
            seen_keys.add(k)


def _hashable(v: Any) -> Any:
    return repr(v) if isinstance(v, dict | list) else v


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    if pattern not in _PATTERNS:
        _PATTERNS[pattern] = re.compile(pattern)
    return _PATTERNS[pattern]


# RFC 3339 date-time, with the forms kube-apiserver's strfmt also takes (space for T, no seconds,
# no zone, zone without colon); a bare date is not a date-time.
_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?$"
)


def _is_datetime(value: str) -> bool:
    if not _DATETIME.match(value):
        return False
    text = value.replace("t", "T").replace("z", "Z").replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- CEL rules

# Rules are compiled and evaluated by turbok.api.cel (cel-expr-python), ``self`` the value at the rule's
# place and ``oldSelf`` its previous value; a rule naming ``oldSelf`` is a transition rule, checked on
# updates only. A rule that does not compile is reported once in the log and skipped (the CRDs are turbok's).
_warned: set[str] = set()


def _check_rule(rule: dict[str, Any], value: Any, old: Any, path: str, causes: list[Cause]) -> None:
    text = str(rule.get("rule", ""))
    if _OLD_SELF.search(text) and old is _MISSING:
        return  # transition rules apply to updates only
    try:
        program = cel.compile_rule(text)
    except cel.CelCompileError as e:
        if text not in _warned:
            _warned.add(text)
            log.warning("CEL rule of a served CRD does not compile, not evaluated: %s: %s", text, e)
        return
    try:
        ok = program.evaluate({"self": value, "oldSelf": None if old is _MISSING else old}) is True
        detail = rule.get("message") or f"failed rule: {' '.join(text.split())}"
    except cel.CelEvalError as e:
        ok, detail = False, str(e)
    if not ok:
        field = path + str(rule.get("fieldPath") or "")
        causes.append(Cause(field=field, message=f"Invalid value: {_json('object')}: {detail}",
                            reason=str(rule.get("reason") or "FieldValueInvalid")))


_OLD_SELF = re.compile(r"\boldSelf\b")
