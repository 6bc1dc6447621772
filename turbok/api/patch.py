"""Patch formats kube-apiserver accepts for custom resources and namespaces.

- ``application/merge-patch+json``: RFC 7386 JSON merge patch.
- ``application/json-patch+json``: RFC 6902 JSON patch (add, remove, replace,
  move, copy, test), with RFC 6901 pointers.
- ``application/strategic-merge-patch+json``: for the core kinds turbok serves
  (Namespace), whose fields have no merge keys, it is a merge patch that also
  honours ``$patch: delete|replace`` and drops ``$retainKeys``-style directives.
  Custom resources refuse it with 415, as kube-apiserver does.

Pure functions: they return new documents and raise ``BadRequest``/``Invalid``
on malformed patches, so nothing is half-applied.
"""

from __future__ import annotations

import copy
from typing import Any

from turbok.api.status import BadRequest, Cause, Invalid, UnsupportedMediaType

__all__ = ["APPLY", "JSON_PATCH", "MERGE", "STRATEGIC", "apply_patch", "check_patch_type", "json_patch",
           "merge_patch"]

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strategic(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    body = {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive == "replace":
        return copy.deepcopy(body)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in body.items():
        if value is None:
            result.pop(key, None)
            continue
        merged = _strategic(result.get(key), value)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise BadRequest(f"json patch: invalid path {path!r}: must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _invalid(path: str, problem: str) -> Invalid:
    """A patch that does not apply: 422, the JSON pointer as the field (kubectl prints causes, not messages)."""
    return Invalid(f"json patch: {path!r}: {problem}", causes=[Cause(field=path or "/", message=f"json patch: {problem}")])


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict):
            if part not in doc:
                raise _invalid(path, "does not exist")
            doc = doc[part]
        elif isinstance(doc, list):
            doc = doc[_index(part, len(doc), path)]
        else:
            raise _invalid(path, "does not exist")
    return doc


def _index(part: str, length: int, path: str, *, allow_end: bool = False) -> int:
    if part == "-" and allow_end:
        return length
    if not part.isdigit() or (len(part) > 1 and part.startswith("0")):
        raise _invalid(path, f"invalid array index {part!r}")
    i = int(part)
    if i > length or (i == length and not allow_end):
        raise _invalid(path, f"array index {i} out of range")
    return i


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), path, allow_end=True), copy.deepcopy(value))
    else:
        raise _invalid(path, "cannot add here: the parent is neither an object nor an array")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _pointer(path)
    if not parts:
        raise _invalid(path, "cannot remove the whole document")
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _invalid(path, "does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(last, len(parent), path))
    raise _invalid(path, "does not exist")


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality (RFC 6902 ``test``): unlike Python's ``==``, ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise BadRequest("json patch: the body must be a JSON array of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise BadRequest(f"json patch: malformed operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise BadRequest(f"json patch: operation {kind} at {path!r} needs a value")
        if kind == "add":
            doc = _add(doc, path, op["value"])
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            if path:  # "" replaces the whole document
                doc, _ = _remove(doc, path)
            doc = _add(doc, path, op["value"])
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise BadRequest(f"json patch: operation {kind} needs 'from'")
            if kind == "move":
                if path.startswith(op["from"] + "/"):
                    raise _invalid(path, f"cannot move {op['from']!r} into its own child")
                doc, value = _remove(doc, op["from"])
            else:
                value = copy.deepcopy(_walk(doc, _pointer(op["from"]), op["from"]))
            doc = _add(doc, path, value)
        elif kind == "test":
            if not _json_equal(_walk(doc, _pointer(path), path), op["value"]):
                raise _invalid(path, "test failed: the value differs")
        else:
            raise BadRequest(f"json patch: unknown operation {kind!r}")
    return doc


def check_patch_type(content_type: str, *, builtin: bool) -> str:
    """The media type of a patch, or ``UnsupportedMediaType`` (415) before anything is read or written."""
    media = content_type.split(";")[0].strip()
    if media in (MERGE, JSON_PATCH) or (media == STRATEGIC and builtin):
        return media
    if media == STRATEGIC:
        raise UnsupportedMediaType(
            "the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE} (strategic merge patch is not supported for custom resources)"
        )
    if media == APPLY:
        raise UnsupportedMediaType("server-side apply is not supported by turbok's embedded control plane; "
                                   "use client-side `kubectl apply`")
    raise UnsupportedMediaType(f"the body of the request was in an unknown format: {media!r}")


def apply_patch(target: dict[str, Any], content_type: str, patch: Any, *, builtin: bool) -> dict[str, Any]:
    """Apply a patch of the given content type; ``builtin`` allows strategic merge patches."""
    media = check_patch_type(content_type, builtin=builtin)
    if media == MERGE:
        result = merge_patch(target, patch)
    elif media == JSON_PATCH:
        result = json_patch(target, patch)
    else:
        result = _strategic(target, patch)
    if not isinstance(result, dict):
        raise BadRequest("the patch result must be a JSON object")
    return result
