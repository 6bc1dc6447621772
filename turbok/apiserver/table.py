"""Server-side tables (``meta.k8s.io/v1`` Table), what ``kubectl get`` prints.

Columns are Name plus the CRD's ``additionalPrinterColumns`` (Age alone when a
CRD declares none), as kube-apiserver builds them for custom resources.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from turbok.api.kinds import Kind
from turbok.api.meta import parse_time
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


def to_table(kind: Kind, objects: list[dict[str, Any]], resource_version: str = "",
             include_object: str = "Metadata") -> dict[str, Any]:
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
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}
