"""Structural-schema pruning, defaulting and validation, as kube-apiserver applies CRD schemas."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from turbok.api import schema
from turbok.api.kinds import default_registry

POOL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["ref"],
            "properties": {
                "replicas": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 10, "default": 1},
                "mode": {"type": "string", "enum": ["Running", "Suspended"], "default": "Running"},
                "name": {"type": "string", "maxLength": 5, "minLength": 2, "pattern": "^[a-z]+$"},
                "ref": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
                "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "ratio": {"type": "number"},
                "count": {"type": "integer", "format": "int32"},
                "on": {"type": "boolean"},
                "when": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3,
                         "x-kubernetes-list-type": "set"},
                "ports": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["port", "protocol"],
                    "items": {"type": "object", "required": ["port"], "properties": {
                        "port": {"type": "integer"},
                        "protocol": {"type": "string", "default": "TCP"},
                    }},
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
            },
        },
    },
}


def good() -> dict[str, Any]:
    return {"apiVersion": "x/v1", "kind": "Pool", "metadata": {"name": "p"}, "spec": {"ref": {"name": "t"}}}


def causes(obj: Any, sch: dict[str, Any] = POOL, old: Any = None) -> list[tuple[str, str, str]]:
    found = schema.validate(obj, sch) if old is None else schema.validate(obj, sch, old)
    return [(c.field, c.reason, c.message) for c in found]


def with_spec(**spec: Any) -> dict[str, Any]:
    obj = good()
    obj["spec"].update(spec)
    return obj


def test_a_valid_object_has_no_causes() -> None:
    obj = with_spec(replicas=3, mode="Suspended", name="abc", port="http", ratio=1, on=True,
                    when="2025-12-31T23:59:59Z", tags=["a", "b"], ports=[{"port": 1, "protocol": "UDP"}],
                    labels={"a": "b"}, free={"anything": [1, {"x": None}]}, maybe=None)
    assert causes(obj) == []


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("replicas", "three", 'spec.replicas in body must be of type integer: "string"'),
    ("replicas", True, 'spec.replicas in body must be of type integer: "boolean"'),
    ("replicas", 1.5, 'spec.replicas in body must be of type integer: "number"'),
    ("ratio", "x", 'spec.ratio in body must be of type number: "string"'),
    ("on", "yes", 'spec.on in body must be of type boolean: "string"'),
    ("ref", [], 'spec.ref in body must be of type object: "array"'),
    ("tags", "a", 'spec.tags in body must be of type array: "string"'),
])
def test_wrong_types_are_reported_at_the_field(field: str, value: Any, expected: str) -> None:
    [(path, reason, message)] = causes(with_spec(**{field: value}))
    assert path == f"spec.{field}"
    assert reason == "FieldValueInvalid"
    assert message.endswith(expected)
    assert message == f'Invalid value: "{expected.rsplit(chr(34), 2)[-2]}": {expected}'


def test_a_number_accepts_integers_but_an_integer_refuses_floats() -> None:
    assert causes(with_spec(ratio=2)) == []
    assert causes(with_spec(replicas=2.0))  # JSON 2.0 is a float here: kube refuses it too


def test_missing_required_fields_are_named() -> None:
    obj = good()
    del obj["spec"]["ref"]
    assert causes(obj) == [("spec.ref", "FieldValueRequired", "Required value")]
    obj = with_spec(ref={}, ports=[{"protocol": "TCP"}])
    assert sorted(causes(obj)) == [("spec.ports[0].port", "FieldValueRequired", "Required value"),
                                   ("spec.ref.name", "FieldValueRequired", "Required value")]


def test_enum_lists_the_supported_values() -> None:
    [(path, reason, message)] = causes(with_spec(mode="Paused"))
    assert (path, reason) == ("spec.mode", "FieldValueNotSupported")
    assert message == 'Unsupported value: "Paused": supported values: "Running", "Suspended"'


@pytest.mark.parametrize(("spec", "path", "fragment"), [
    ({"replicas": -1}, "spec.replicas", "should be greater than or equal to 0"),
    ({"replicas": 11}, "spec.replicas", "should be less than or equal to 10"),
    ({"count": 2**31}, "spec.count", "must be of type int32"),
    ({"name": "abcdef"}, "spec.name", "may not be more than 5 bytes"),
    ({"name": "a"}, "spec.name", "should be at least 2 chars long"),
    ({"name": "AB"}, "spec.name", "should match '^[a-z]+$'"),
    ({"tags": ["a", "b", "c", "d"]}, "spec.tags", "must have at most 3 items"),
    ({"when": "2025-12-31"}, "spec.when", "must be of type date-time"),
    ({"when": "yesterday"}, "spec.when", "must be of type date-time"),
])
def test_bounds_lengths_patterns_and_formats(spec: dict[str, Any], path: str, fragment: str) -> None:
    found = causes(with_spec(**spec))
    assert [c[0] for c in found] == [path]
    assert fragment in found[0][2]


@pytest.mark.parametrize("value", [8080, "http", "50%"])
def test_int_or_string_takes_both(value: Any) -> None:
    assert causes(with_spec(port=value)) == []


@pytest.mark.parametrize("value", [1.5, True, [], {}])
def test_int_or_string_refuses_the_rest(value: Any) -> None:
    [(path, _, message)] = causes(with_spec(port=value))
    assert path == "spec.port"
    assert "must be of type integer,string" in message


def test_null_is_refused_unless_nullable() -> None:
    [(path, _, message)] = causes(with_spec(name=None))
    assert path == "spec.name" and '"null"' in message
    assert causes(with_spec(maybe=None)) == []


def test_list_set_duplicates() -> None:
    [(path, reason, message)] = causes(with_spec(tags=["a", "b", "a"]))
    assert (path, reason, message) == ("spec.tags[2]", "FieldValueDuplicate", 'Duplicate value: "a"')


def test_list_map_duplicates_compare_every_key() -> None:
    ports = [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}, {"port": 80, "protocol": "TCP"}]
    [(path, reason, message)] = causes(with_spec(ports=ports))
    assert (path, reason) == ("spec.ports[2]", "FieldValueDuplicate")
    assert '"port":80' in message and '"protocol":"TCP"' in message


def test_additional_properties_validate_each_value() -> None:
    [(path, _, _)] = causes(with_spec(labels={"ok": "x", "bad": 3}))
    assert path == "spec.labels.bad"


def test_defaults_fill_missing_fields_only_and_recurse_into_lists() -> None:
    obj = with_spec(mode="Suspended", ports=[{"port": 1}, {"port": 2, "protocol": "UDP"}])
    schema.default(obj, POOL)
    assert obj["spec"]["replicas"] == 1
    assert obj["spec"]["mode"] == "Suspended"
    assert obj["spec"]["ports"] == [{"port": 1, "protocol": "TCP"}, {"port": 2, "protocol": "UDP"}]


def test_defaults_are_copies() -> None:
    sch: dict[str, Any] = {"type": "object", "properties": {"l": {"type": "array", "default": []}}}
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    schema.default(a, sch)
    schema.default(b, sch)
    a["l"].append(1)
    assert b["l"] == [] and sch["properties"]["l"]["default"] == []


def test_prune_drops_undeclared_fields_and_reports_their_paths() -> None:
    obj = with_spec(bogus=1, ref={"name": "t", "extra": True}, ports=[{"port": 1, "x": 2}],
                    free={"kept": {"deep": 1}})
    obj["top"] = "level"
    obj["metadata"]["weird"] = 1  # metadata belongs to turbok.api.meta, not to the schema
    dropped = schema.prune(obj, POOL)
    assert sorted(dropped) == ["spec.bogus", "spec.ports[0].x", "spec.ref.extra", "top"]
    assert obj["spec"] == {"ref": {"name": "t"}, "ports": [{"port": 1}], "free": {"kept": {"deep": 1}}}
    assert obj["metadata"] == {"name": "p", "weird": 1}


def test_prune_drops_nulls_of_non_nullable_fields_silently() -> None:
    obj = with_spec(name=None, maybe=None)
    assert schema.prune(obj, POOL) == []
    assert "name" not in obj["spec"] and obj["spec"]["maybe"] is None


# ---------------------------------------------------------------- the upstream CRDs


def sandbox_kind() -> Any:
    return default_registry().by_kind("agents.x-k8s.io/v1beta1", "Sandbox")


def sandbox(vcts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "python:3.11"}]}}}
    if vcts is not None:
        spec["volumeClaimTemplates"] = vcts
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "s"}, "spec": spec}


VCT: dict[str, Any] = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                              "resources": {"requests": {"storage": "1Gi"}}}}


def test_the_upstream_sandbox_schema_accepts_a_plain_sandbox_and_refuses_a_bad_quantity() -> None:
    kind = sandbox_kind()
    assert schema.validate(sandbox([VCT]), kind.schema) == []
    bad = copy.deepcopy(VCT)
    bad["spec"]["resources"]["requests"]["storage"] = "lots"
    [cause] = schema.validate(sandbox([bad]), kind.schema)
    assert cause.field == "spec.volumeClaimTemplates[0].spec.resources.requests.storage"
    assert "should match" in cause.message


def test_volume_claim_templates_are_immutable_on_update() -> None:
    kind = sandbox_kind()
    old = sandbox([VCT])
    changed = copy.deepcopy(VCT)
    changed["spec"]["resources"]["requests"]["storage"] = "2Gi"
    for new in (sandbox([changed]), sandbox(None), sandbox([VCT, {**VCT, "metadata": {"name": "more"}}])):
        [cause] = schema.validate(new, kind.schema, old)
        assert cause.field == "spec"
        assert cause.message == 'Invalid value: "object": volumeClaimTemplates is immutable'
    assert schema.validate(sandbox(None), kind.schema, sandbox(None)) == []
    added = schema.validate(sandbox([VCT]), kind.schema, sandbox(None))
    assert [c.field for c in added] == ["spec"]
    # Unchanged claim templates, other fields changed: allowed.
    other = sandbox([VCT])
    other["spec"]["podTemplate"]["spec"]["containers"][0]["image"] = "python:3.12"
    assert schema.validate(other, kind.schema, old) == []


def test_transition_rules_do_not_apply_on_create() -> None:
    assert schema.validate(sandbox([VCT]), sandbox_kind().schema) == []


def test_any_cel_rule_is_evaluated_not_only_known_texts() -> None:
    # Before turbok.api.cel a rule not in a table of known texts was skipped; now every rule is evaluated.
    sch = {"type": "object", "x-kubernetes-validations": [{"rule": "self.a < 3 && size(self.b) > 1",
                                                            "message": "a below 3, b longer than 1"}],
           "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    assert schema.validate({"a": 2, "b": "xy"}, sch) == []
    causes = schema.validate({"a": 5, "b": "xy"}, sch)
    assert [(c.field, c.message) for c in causes] == [("", 'Invalid value: "object": a below 3, b longer than 1')]
    missing = schema.validate({"a": 2}, sch)  # self.b absent: a runtime error, reported as cel-go words it
    assert [c.message for c in missing] == ['Invalid value: "object": no such key: b']


def test_a_cel_rule_that_does_not_compile_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    sch = {"type": "object", "x-kubernetes-validations": [{"rule": "self.a <"}],
           "properties": {"a": {"type": "integer"}}}
    assert schema.validate({"a": 5}, sch) == []
    assert "does not compile" in caplog.text