"""Server-side tables and the JSONPath subset printer columns use."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from turbok.api.kinds import default_registry
from turbok.apiserver.jsonpath import find
from turbok.apiserver.table import to_table, wants_table

OBJ: dict[str, Any] = {
    "metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "web"}},
    "spec": {"replicas": 2, "items": [{"n": 1}, {"n": 2}, {"n": 3}]},
    "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]},
}


@pytest.mark.parametrize(("path", "values"), [
    (".spec.replicas", [2]),
    ("{.spec.replicas}", [2]),
    ("$.spec.replicas", [2]),
    (".spec.items[0].n", [1]),
    (".spec.items[-1].n", [3]),
    (".spec.items[*].n", [1, 2, 3]),
    (".spec.items[9].n", []),
    (".metadata.labels['app.kubernetes.io/name']", ["web"]),
    (".status.conditions[?(@.type=='Ready')].status", ["True"]),
    ('.status.conditions[?(@.type=="Other")].status', ["False"]),
    (".status.conditions[?(@.type=='Missing')].status", []),
    (".spec.nothing.deeper", []),
])
def test_find(path: str, values: list[Any]) -> None:
    assert find(OBJ, path) == values


def test_unsupported_jsonpath_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError):
        find(OBJ, ".spec.items[1:2]")


def test_wants_table() -> None:
    assert wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert wants_table("application/json; as=Table; v=v1; g=meta.k8s.io")
    assert not wants_table("application/json")


def test_table_cells_ages_and_priorities() -> None:
    kind = default_registry().resolve("sandboxclaim")
    created = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=3, minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj = {"metadata": {"name": "c", "creationTimestamp": created, "resourceVersion": "7"},
           "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Pending"}],
                      "sandbox": {"name": "s"}}}
    table = to_table(kind, [obj], "7")
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[0] == "Name" and names[-1] == "Age"
    row = dict(zip(names, table["rows"][0]["cells"], strict=True))
    assert row["Name"] == "c" and row["Age"] == "3h"
    assert table["metadata"]["resourceVersion"] == "7"
    assert "object" not in to_table(kind, [obj], "7", "None")["rows"][0]
    assert to_table(kind, [], "1")["rows"] == []


@pytest.mark.parametrize(("delta", "shown"), [(dt.timedelta(seconds=5), "5s"), (dt.timedelta(minutes=3), "3m"),
                                              (dt.timedelta(hours=30), "30h"), (dt.timedelta(days=3), "3d")])
def test_ages_read_like_kubectl(delta: dt.timedelta, shown: str) -> None:
    kind = default_registry().resolve("swp")
    created = (dt.datetime.now(dt.UTC) - delta).strftime("%Y-%m-%dT%H:%M:%SZ")
    table = to_table(kind, [{"metadata": {"name": "p", "creationTimestamp": created}}])
    assert table["rows"][0]["cells"][-1] == shown
