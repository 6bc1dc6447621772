"""Object metadata rules, label and field selectors, conditions: what kube-apiserver checks and matches."""

from __future__ import annotations

import re
from typing import Any

import pytest

from turbok.api import meta as m
from turbok.api.status import BadRequest


def fields(meta: Any, **kw: Any) -> list[str]:
    return [c.field for c in m.validate_metadata(meta, **kw)]


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "sandbox-1", "a.b.c", "x" * 253, "0abc"])
def test_valid_object_names(name: str) -> None:
    assert fields({"name": name}) == []


@pytest.mark.parametrize("name", ["Upper", "-lead", "trail-", "under_score", "sp ace", "x" * 254, "a/b", "a..b"])
def test_invalid_object_names_are_refused_with_the_rule(name: str) -> None:
    [cause] = m.validate_metadata({"name": name})
    assert cause.field == "metadata.name"
    assert cause.message.startswith("Invalid value: ")


def test_namespace_names_are_dns_labels() -> None:
    assert fields({"name": "a.b"}) == []
    assert fields({"name": "a.b"}, label_name=True) == ["metadata.name"]
    assert fields({"name": "x" * 64}, label_name=True) == ["metadata.name"]
    assert "no more than 63 characters" in m.validate_metadata({"name": "x" * 64}, label_name=True)[0].message


def test_name_or_generate_name_is_required() -> None:
    [cause] = m.validate_metadata({})
    assert (cause.field, cause.reason) == ("metadata.name", "FieldValueRequired")
    assert fields({"generateName": "box-"}) == []


def test_generated_names_have_the_prefix_and_five_safe_characters() -> None:
    names = {m.generate_name("box-") for _ in range(50)}
    assert len(names) > 40
    for name in names:
        assert re.fullmatch(r"box-[bcdfghjklmnpqrstvwxz2456789]{5}", name)
    long = m.generate_name("p" * 80)
    assert len(long) == 63 and long.startswith("p" * 58)


# ---------------------------------------------------------------- labels, annotations, references


@pytest.mark.parametrize("labels", [
    {"app": "x"}, {"example.com/app": "x-1.2_3"}, {"a": ""}, {"k": "v" * 63},
])
def test_valid_labels(labels: dict[str, str]) -> None:
    assert fields({"name": "o", "labels": labels}) == []


@pytest.mark.parametrize("labels", [
    {"bad key": "x"}, {"-a": "x"}, {"Example.COM/a": "x"}, {"a": "v" * 64}, {"a": "sp ace"}, {"a": 1},
    {"a/b/c": "x"}, {"k" * 64: "v"},
])
def test_invalid_labels(labels: dict[str, Any]) -> None:
    assert fields({"name": "o", "labels": labels}) == ["metadata.labels"]


def test_labels_must_be_a_map() -> None:
    assert fields({"name": "o", "labels": ["a"]}) == ["metadata.labels"]


def test_annotations_values_must_be_strings_and_fit_256k() -> None:
    assert fields({"name": "o", "annotations": {"a": 1}}) == ["metadata.annotations"]
    assert fields({"name": "o", "annotations": {"a": "x" * 262_000}}) == []
    [cause] = m.validate_metadata({"name": "o", "annotations": {"a": "x" * 262_200}})
    assert cause.reason == "FieldValueTooLong"


def test_owner_references_need_their_identity_and_one_controller() -> None:
    ref = {"apiVersion": "v1", "kind": "K", "name": "n", "uid": "u", "controller": True}
    assert fields({"name": "o", "ownerReferences": [ref]}) == []
    assert fields({"name": "o", "ownerReferences": [{"kind": "K"}]}) == [
        "metadata.ownerReferences[0].apiVersion", "metadata.ownerReferences[0].name",
        "metadata.ownerReferences[0].uid"]
    assert fields({"name": "o", "ownerReferences": [ref, {**ref, "uid": "v"}]}) == ["metadata.ownerReferences"]
    assert fields({"name": "o", "ownerReferences": {"kind": "K"}}) == ["metadata.ownerReferences"]


def test_finalizers_and_string_fields_have_types() -> None:
    assert fields({"name": "o", "finalizers": "x"}) == ["metadata.finalizers"]
    assert fields({"name": "o", "finalizers": ["a", 1]}) == ["metadata.finalizers"]
    assert fields({"name": "o", "generateName": 5}) == ["metadata.generateName"]
    assert fields("not an object") == ["metadata"]


def test_prune_metadata_keeps_object_meta_and_reports_the_rest() -> None:
    md = {"name": "o", "labels": {}, "colour": "red", "ownerReferences": [{"kind": "K", "extra": 1}]}
    assert sorted(m.prune_metadata(md)) == ["metadata.colour", "metadata.ownerReferences[0].extra"]
    assert md == {"name": "o", "labels": {}, "ownerReferences": [{"kind": "K"}]}


# ---------------------------------------------------------------- label selectors

LABELS = {"app": "web", "tier": "front", "version": "3"}


@pytest.mark.parametrize(("text", "matches"), [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app = web", True),
    ("app=db", False),
    ("app!=db", True),
    ("missing!=x", True),
    ("app=web,tier=back", False),
    ("app in (web, db)", True),
    ("app in(db)", False),
    ("app notin (db,cache)", True),
    ("missing notin (x)", True),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("version>2", True),
    ("version<3", False),
    ("app>1", False),
    ("app in (web),tier notin (back),!canary", True),
])
def test_label_selector_matching(text: str, matches: bool) -> None:
    assert m.LabelSelector.parse(text).matches(LABELS) is matches


@pytest.mark.parametrize("text", ["app==", "a=b=c", "app in web", "=x", "app=sp ace", "bad key=x", "app in (a b)"])
def test_malformed_label_selectors_are_bad_requests(text: str) -> None:
    if text == "app==":
        # An empty value is allowed: it selects objects whose label is the empty string.
        assert m.LabelSelector.parse(text).matches({"app": ""})
        return
    with pytest.raises(BadRequest):
        m.LabelSelector.parse(text)


def test_match_labels_and_expressions() -> None:
    sel = m.LabelSelector.from_match({"matchLabels": {"app": "web"},
                                      "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]},
                                                           {"key": "canary", "operator": "DoesNotExist"}]})
    assert sel.matches(LABELS)
    assert not sel.matches({**LABELS, "canary": "1"})
    assert m.LabelSelector.from_match({}).matches({}) and not m.LabelSelector.from_match({})
    for expr in ({"key": "a", "operator": "Sometimes"}, {"key": "a", "operator": "In"}, {"operator": "Exists"}):
        with pytest.raises(BadRequest):
            m.LabelSelector.from_match({"matchExpressions": [expr]})


# ---------------------------------------------------------------- field selectors


def test_field_selectors_on_name_and_namespace() -> None:
    obj = {"metadata": {"name": "a", "namespace": "ns"}}
    assert m.FieldSelector.parse("metadata.name=a").matches(obj)
    assert m.FieldSelector.parse("metadata.name==a,metadata.namespace=ns").matches(obj)
    assert not m.FieldSelector.parse("metadata.name!=a").matches(obj)
    assert not m.FieldSelector.parse("metadata.namespace=other").matches(obj)
    assert m.FieldSelector.parse("metadata.name=a").value_of("metadata.name") == "a"
    assert m.FieldSelector.parse("metadata.name!=a").value_of("metadata.name") is None


def test_unsupported_fields_are_bad_requests() -> None:
    with pytest.raises(BadRequest, match="field label not supported: spec.replicas"):
        m.FieldSelector.parse("spec.replicas=1")
    with pytest.raises(BadRequest):
        m.FieldSelector.parse("metadata.name")
    assert m.FieldSelector.parse("status.phase=Active", extra=("status.phase",)).matches(
        {"status": {"phase": "Active"}})


# ---------------------------------------------------------------- conditions


def test_set_condition_keeps_the_transition_time_until_the_status_flips(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(["2025-01-01T00:00:00Z", "2025-01-01T00:00:05Z", "2025-01-01T00:00:09Z"])
    monkeypatch.setattr(m, "now", lambda: next(clock))
    status: dict[str, Any] = {}
    assert m.set_condition(status, "Ready", False, "Starting", "booting", observed_generation=1)
    assert status["conditions"][0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    assert not m.set_condition(status, "Ready", False, "Starting", "booting", observed_generation=1)
    assert m.set_condition(status, "Ready", False, "Pulling", "image", observed_generation=1)
    assert status["conditions"][0]["lastTransitionTime"] == "2025-01-01T00:00:00Z"  # same status: kept
    assert m.set_condition(status, "Ready", True, "Running")
    ready = m.condition({"status": status}, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == ("True", "Running",
                                                                                 "2025-01-01T00:00:05Z")
    assert m.is_true({"status": status}, "Ready")
    assert m.set_condition(status, "Other", "Unknown", "Waiting")
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Other"]
    assert status["conditions"][1]["lastTransitionTime"] == "2025-01-01T00:00:09Z"


def test_condition_returns_a_copy_and_none_when_absent() -> None:
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    got = m.condition(obj, "Ready")
    assert got is not None
    got["status"] = "False"
    assert obj["status"]["conditions"][0]["status"] == "True"
    assert m.condition(obj, "Missing") is None and not m.is_true({}, "Ready")


def test_now_is_rfc3339_utc_whole_seconds_and_parses_back() -> None:
    stamp = m.now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert m.parse_time(stamp).utcoffset() is not None
