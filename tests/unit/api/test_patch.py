"""Patches: RFC 7386 merge patch, RFC 6902 JSON patch, strategic merge for core kinds, media types."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from turbok.api import patch as p
from turbok.api.status import BadRequest, Invalid, UnsupportedMediaType

# RFC 7386 appendix A: every example, target + patch -> result.
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(target)
    assert p.merge_patch(target, patch) == result
    assert target == before  # pure


DOC = {"foo": "bar", "list": [1, 2, 3], "obj": {"a/b": 1, "m~n": 2}}


@pytest.mark.parametrize(("ops", "result"), [
    ([{"op": "add", "path": "/baz", "value": "qux"}], {**DOC, "baz": "qux"}),
    ([{"op": "add", "path": "/list/1", "value": 9}], {**DOC, "list": [1, 9, 2, 3]}),
    ([{"op": "add", "path": "/list/-", "value": 4}], {**DOC, "list": [1, 2, 3, 4]}),
    ([{"op": "add", "path": "/foo", "value": {"x": 1}}], {**DOC, "foo": {"x": 1}}),
    ([{"op": "remove", "path": "/list/0"}], {**DOC, "list": [2, 3]}),
    ([{"op": "remove", "path": "/obj/a~1b"}], {**DOC, "obj": {"m~n": 2}}),
    ([{"op": "replace", "path": "/obj/m~0n", "value": 5}], {**DOC, "obj": {"a/b": 1, "m~n": 5}}),
    ([{"op": "replace", "path": "/list/2", "value": 0}], {**DOC, "list": [1, 2, 0]}),
    ([{"op": "move", "from": "/foo", "path": "/moved"}], {"moved": "bar", "list": [1, 2, 3],
                                                          "obj": {"a/b": 1, "m~n": 2}}),
    ([{"op": "move", "from": "/list/0", "path": "/list/-"}], {**DOC, "list": [2, 3, 1]}),
    ([{"op": "copy", "from": "/obj", "path": "/copy"}], {**DOC, "copy": {"a/b": 1, "m~n": 2}}),
    ([{"op": "test", "path": "/list", "value": [1, 2, 3]}, {"op": "add", "path": "/t", "value": True}],
     {**DOC, "t": True}),
    ([{"op": "replace", "path": "", "value": {"whole": 1}}], {"whole": 1}),
])
def test_json_patch_operations(ops: list[dict[str, Any]], result: Any) -> None:
    before = copy.deepcopy(DOC)
    assert p.json_patch(DOC, ops) == result
    assert before == DOC


@pytest.mark.parametrize("ops", [
    [{"op": "replace", "path": "/missing", "value": 1}],
    [{"op": "remove", "path": "/missing"}],
    [{"op": "add", "path": "/missing/deeper", "value": 1}],
    [{"op": "add", "path": "/list/7", "value": 1}],
    [{"op": "remove", "path": "/list/3"}],
    [{"op": "remove", "path": "/list/01"}],
    [{"op": "remove", "path": "/list/-1"}],
    [{"op": "test", "path": "/foo", "value": "baz"}],
    [{"op": "test", "path": "/list/0", "value": True}],  # JSON true is not 1
    [{"op": "move", "from": "/obj", "path": "/obj/inner"}],
    [{"op": "remove", "path": ""}],
])
def test_json_patch_that_does_not_apply_is_invalid_422(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(Invalid) as err:
        p.json_patch(DOC, ops)
    assert err.value.code == 422


@pytest.mark.parametrize("ops", [
    {"op": "add", "path": "/a", "value": 1},  # not a list
    [{"path": "/a", "value": 1}],
    [{"op": "add", "value": 1}],
    [{"op": "add", "path": "/a"}],
    [{"op": "frobnicate", "path": "/a"}],
    [{"op": "move", "path": "/a"}],
    [{"op": "add", "path": "no-slash", "value": 1}],
    ["add"],
])
def test_malformed_json_patch_is_a_bad_request_400(ops: Any) -> None:
    with pytest.raises(BadRequest) as err:
        p.json_patch(DOC, ops)
    assert err.value.code == 400


def test_a_failing_operation_applies_nothing() -> None:
    ops = [{"op": "add", "path": "/new", "value": 1}, {"op": "remove", "path": "/missing"}]
    target = copy.deepcopy(DOC)
    with pytest.raises(Invalid):
        p.json_patch(target, ops)
    assert target == DOC


def test_apply_patch_dispatches_on_the_media_type() -> None:
    target = {"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"n": 1}}
    merged = p.apply_patch(target, "application/merge-patch+json; charset=utf-8",
                           {"metadata": {"labels": {"a": None, "c": "d"}}}, builtin=False)
    assert merged["metadata"]["labels"] == {"c": "d"}
    jp = p.apply_patch(target, p.JSON_PATCH, [{"op": "replace", "path": "/spec/n", "value": 2}], builtin=False)
    assert jp["spec"] == {"n": 2}


def test_strategic_merge_patch_is_for_core_kinds_only() -> None:
    target = {"metadata": {"name": "ns", "labels": {"a": "b", "c": "d"}}, "spec": {"finalizers": ["kubernetes"]}}
    out = p.apply_patch(target, p.STRATEGIC, {"metadata": {"labels": {"a": None, "e": "f"}}}, builtin=True)
    assert out["metadata"]["labels"] == {"c": "d", "e": "f"}
    out = p.apply_patch(target, p.STRATEGIC, {"metadata": {"labels": {"$patch": "replace", "x": "y"}}},
                        builtin=True)
    assert out["metadata"]["labels"] == {"x": "y"}
    out = p.apply_patch(target, p.STRATEGIC, {"spec": {"$patch": "delete"}}, builtin=True)
    assert "spec" not in out
    with pytest.raises(UnsupportedMediaType) as err:
        p.apply_patch(target, p.STRATEGIC, {}, builtin=False)
    assert err.value.code == 415 and "merge-patch" in err.value.message


def test_server_side_apply_and_unknown_types_are_415_with_a_hint() -> None:
    with pytest.raises(UnsupportedMediaType, match="client-side `kubectl apply`"):
        p.apply_patch({}, p.APPLY, {}, builtin=False)
    with pytest.raises(UnsupportedMediaType):
        p.apply_patch({}, "text/plain", {}, builtin=False)


def test_a_patch_that_makes_the_object_not_an_object_is_refused() -> None:
    with pytest.raises(BadRequest):
        p.apply_patch({"a": 1}, p.MERGE, ["x"], builtin=False)
    with pytest.raises(BadRequest):
        p.apply_patch({"a": 1}, p.JSON_PATCH, [{"op": "replace", "path": "", "value": 3}], builtin=False)
