"""Server-side tables (``meta.k8s.io/v1`` Table), what ``kubectl get`` prints.

Built-in kinds get kube-apiserver's own columns and cells
(``turbok.apiserver.printers``). Custom resources get Name plus the CRD's
``additionalPrinterColumns`` (Age alone when a CRD declares none), as
kube-apiserver builds them for custom resources.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from turbok.api.kinds import Kind
from turbok.api.meta import parse_time
from turbok.apiserver import printers
from turbok.apiserver.jsonpath import find

__all__ = ["to_table", "wants_table"]

_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept.replace(" ", "")


def _columns(kind: Kind) -> list[dict[str, Any]]:
    return list(kind.printer_columns) or [_AGE]


def _age(value: str) -> str:
    try:
        seconds = int((dt.datetime.now(dt.UTC) - parse_time(value)).total_seconds())
    except ValueError:
        return "<invalid>"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    try:
        values = find(obj, column["jsonPath"])
    except ValueError:
        return "<error>"
    if not values:
        return None
    value = values[0] if len(values) == 1 else ",".join(str(v) for v in values)
    if column.get("type") == "date" and isinstance(value, str):
        return _age(value)
    return value


def _row_object(obj: dict[str, Any], include_object: str) -> dict[str, Any] | None:
    if include_object == "Object":
        return obj
    if include_object == "None":
        return None
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def _builtin_table(kind: Kind, definitions: list[dict[str, Any]], objects: list[dict[str, Any]],
                   resource_version: str, include_object: str) -> dict[str, Any]:
    printer = printers.PRINTERS[kind.kind]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer(obj)}
        if kind.kind == "Pod" and (conditions := printers.pod_conditions(obj)):
            row["conditions"] = conditions
        shown = _row_object(obj, include_object)
        if shown is not None:
            row["object"] = shown
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}


def to_table(kind: Kind, objects: list[dict[str, Any]], resource_version: str = "",
             include_object: str = "Metadata") -> dict[str, Any]:
    builtin = printers.columns(kind.kind) if kind.crd is None else None
    if builtin is not None:
        return _builtin_table(kind, builtin, objects, resource_version, include_object)
    columns = _columns(kind)
    definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
    definitions += [
        {"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
         "priority": c.get("priority", 0), "description": c.get("description", "")}
        for c in columns
    ]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"], *(_cell(obj, c) for c in columns)]}
        shown = _row_object(obj, include_object)
        if shown is not None:
            row["object"] = shown
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}
