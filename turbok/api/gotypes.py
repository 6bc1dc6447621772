"""The Go types behind the built-in kinds: what kube-apiserver's decoding does to a body.

kube-apiserver decodes a built-in object into Go structs, so a plain Go field
with ``omitempty`` holding its zero value (``value: ""``, ``hostPort: 0``,
``readOnly: false``) is as if absent and never stored, while a pointer's zero
(``runAsUser: 0``, ``storageClassName: ""``) is a value. ``drop_zeros`` does
the same to a JSON body, from the table of every message's fields
(``schemas/proto_fields.json``: numbers and types from upstream's
generated.proto, JSON names, inlining and pointers from its types.go; made by
scripts/proto_fields.py). ``turbok.apiserver.protobuf`` decodes protobuf
bodies from the same table.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

__all__ = ["MESSAGES", "drop_zeros", "json_fields", "message_of", "messages"]

#: A row: [number, jsonName, type, "r" or "", flags] or [number, jsonName, "map", keyType, valueType, flags].
Row = list[Any]

#: apiVersion -> the proto package of its kinds.
MESSAGES = {"v1": "k8s.io.api.core.v1", "discovery.k8s.io/v1": "k8s.io.api.discovery.v1",
            "coordination.k8s.io/v1": "k8s.io.api.coordination.v1", "storage.k8s.io/v1": "k8s.io.api.storage.v1",
            "policy/v1": "k8s.io.api.policy.v1", "networking.k8s.io/v1": "k8s.io.api.networking.v1",
            "meta.k8s.io/v1": "k8s.io.apimachinery.pkg.apis.meta.v1"}
_SCALARS = frozenset({"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "double", "float", "sint32",
                      "sint64", "fixed32", "fixed64"})


@functools.cache
def messages() -> dict[str, dict[int, Row]]:
    """Every message of the served groups: name -> field number -> row."""
    text = (resources.files("turbok.api") / "schemas" / "proto_fields.json").read_text()
    table: dict[str, list[Row]] = json.loads(text)["messages"]
    return {name: {row[0]: row for row in rows} for name, rows in table.items()}


def message_of(api_version: str, kind: str) -> str | None:
    """The proto message of a kind (``k8s.io.api.core.v1.Pod``), if the table has it."""
    package = MESSAGES.get(api_version)
    name = f"{package}.{kind}" if package else ""
    return name if name in messages() else None


@functools.cache
def json_fields(message: str) -> dict[str, Row]:
    """A message's fields by JSON name, inlined structs' fields included (as JSON sees them)."""
    out: dict[str, Row] = {}
    for row in messages().get(message, {}).values():
        if row[2] != "map" and "i" in row[4] and row[2] in messages():
            out.update(json_fields(row[2]))
        else:
            out[row[1]] = row
    return out


def _is_zero(value: Any) -> bool:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    return bool(value == "")


def drop_zeros(obj: Any, message: str) -> None:
    """Remove, in place, what Go would not keep: zero values of plain ``omitempty`` scalar fields."""
    if not isinstance(obj, dict):
        return
    fields = json_fields(message)
    for key in list(obj):
        row = fields.get(key)
        if row is None:
            continue
        value = obj[key]
        if row[2] == "map":
            if row[4] not in _SCALARS and isinstance(value, dict):
                for item in value.values():
                    drop_zeros(item, row[4])
            continue
        type_, repeated, flags = row[2], row[3] == "r", row[4]
        if type_ in _SCALARS:
            if not repeated and "z" not in flags and _is_zero(value):
                del obj[key]
        elif type_ in messages():
            for item in value if repeated and isinstance(value, list) else [value]:
                drop_zeros(item, type_)
