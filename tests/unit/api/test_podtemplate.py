"""Pod template validation says what kube-apiserver's PodSpec validation says, field by field.

The expected fields, reasons and messages were read off a real kube-apiserver
v1.37.2 (/work/shared/kube) given the same pod specs as a Pod.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from turbok.api.limitrange import (
    BUILTIN_DEFAULT_REQUESTS,
    apply_builtin_defaults,
    apply_defaults,
    set_defaults,
    validate,
    violations,
)
from turbok.api.podtemplate import validate_pod_template
from turbok.api.quantity import format_quantity, parse_quantity

LABEL = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and "
         "end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
         "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")


def causes(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    template = {"metadata": {"annotations": annotations or {}}, "spec": spec}
    return [(c.field, c.reason, c.message) for c in validate_pod_template(template, "spec")]


def test_a_valid_template_has_no_causes() -> None:
    spec = {"volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}],
            "containers": [{"name": "main", "image": "python", "workingDir": "/app",
                            "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 8888}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                                          "limits": {"cpu": 1, "memory": "1Gi", "nvidia.com/gpu": "1"}}}],
            "restartPolicy": "OnFailure"}
    assert causes(spec, {"turbok.dev/pids-limit": "512", "turbok.dev/network": "loopback"}) == []


def test_volumes_and_containers_as_kube_apiserver_words_them() -> None:
    spec = {"volumes": [{"name": "Bad_Name", "emptyDir": {}}, {"name": "data", "emptyDir": {}},
                        {"name": "data", "emptyDir": {}}, {"name": ""}, {"name": "x" * 70},
                        {"name": "e", "emptyDir": {"sizeLimit": "-1Gi"}}],
            "containers": [{"name": "Main_C", "image": "x", "ports": [{"containerPort": 0}],
                            "env": [{"name": "1BAD=", "value": "x"}, {"name": ""}],
                            "volumeMounts": [{"name": "missing", "mountPath": "/m"}, {"name": "data", "mountPath": ""},
                                             {"name": "data", "mountPath": "/n"}, {"name": "data", "mountPath": "/n"}]},
                           {"name": "Main_C", "image": ""}]}
    assert causes(spec) == [
        ("spec.spec.volumes[0].name", "FieldValueInvalid", f'Invalid value: "Bad_Name": {LABEL}'),
        ("spec.spec.volumes[2].name", "FieldValueDuplicate", 'Duplicate value: "data"'),
        ("spec.spec.volumes[3].name", "FieldValueRequired", "Required value"),
        ("spec.spec.volumes[4].name", "FieldValueInvalid", f'Invalid value: "{"x" * 70}": must be no more than 63 '
                                                           "characters"),
        ("spec.spec.volumes[5].emptyDir.sizeLimit", "FieldValueForbidden",
         "Forbidden: SizeLimit field must be a valid resource quantity"),
        ("spec.spec.containers[0].name", "FieldValueInvalid", f'Invalid value: "Main_C": {LABEL}'),
        ("spec.spec.containers[0].ports[0].containerPort", "FieldValueRequired", "Required value"),
        ("spec.spec.containers[0].env[0].name", "FieldValueInvalid", 'Invalid value: "1BAD=": a valid environment '
         "variable name must consist only of printable ASCII characters other than '='"),
        ("spec.spec.containers[0].env[1].name", "FieldValueRequired", "Required value"),
        ("spec.spec.containers[0].volumeMounts[0].name", "FieldValueNotFound", 'Not found: "missing"'),
        ("spec.spec.containers[0].volumeMounts[1].mountPath", "FieldValueRequired", "Required value"),
        ("spec.spec.containers[0].volumeMounts[3].mountPath", "FieldValueInvalid", 'Invalid value: "/n": must be '
                                                                                   "unique"),
        ("spec.spec.containers[1].name", "FieldValueInvalid", f'Invalid value: "Main_C": {LABEL}'),
        ("spec.spec.containers[1].image", "FieldValueRequired", "Required value"),
        ("spec.spec.containers[1].name", "FieldValueDuplicate", 'Duplicate value: "Main_C"'),
    ]


def test_resources_negative_malformed_unknown_and_requests_above_limits() -> None:
    spec = {"containers": [{"name": "c", "image": "x", "resources": {
        "limits": {"cpu": "-1", "memory": "1Gi", "foo": "1"},
        "requests": {"memory": "2Gi", "cpu": "500m"}}}]}
    assert causes(spec) == [
        ("spec.spec.containers[0].resources.limits[cpu]", "FieldValueInvalid",
         'Invalid value: "-1": must be greater than or equal to 0'),
        ("spec.spec.containers[0].resources.limits[foo]", "FieldValueInvalid",
         'Invalid value: "foo": must be a standard resource type or fully qualified'),
        ("spec.spec.containers[0].resources.limits[foo]", "FieldValueInvalid",
         'Invalid value: "foo": must be a standard resource for containers'),
        ("spec.spec.containers[0].resources.requests", "FieldValueInvalid",
         'Invalid value: "2Gi": must be less than or equal to memory limit of 1Gi'),
        ("spec.spec.containers[0].resources.requests", "FieldValueInvalid",
         'Invalid value: "500m": must be less than or equal to cpu limit of -1'),
    ]


def test_what_this_machine_cannot_run_and_turbok_annotations() -> None:
    spec = {"containers": [{"name": "c", "image": "x", "workingDir": "rel",
                            "resources": {"limits": {"memory": "16Mi"}}}], "restartPolicy": "Sometimes"}
    found = causes(spec, {"turbok.dev/pids-limit": "10", "turbok.dev/network": "host"})
    assert [f for f, _, _ in found] == [
        "spec.metadata.annotations[turbok.dev/pids-limit]", "spec.metadata.annotations[turbok.dev/network]",
        "spec.spec.containers[0].resources.limits[memory]", "spec.spec.containers[0].workingDir",
        "spec.spec.restartPolicy"]
    assert found[-1][2] == 'Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"'
    for bad in ("abc", "0", "-5", "99999999"):
        assert causes({"containers": [{"name": "c", "image": "x"}]}, {"turbok.dev/pids-limit": bad})
    assert causes({"containers": []}) == [("spec.spec.containers", "FieldValueRequired", "Required value")]


@pytest.mark.parametrize(("text", "binary", "canonical"), [
    ("1.5Gi", True, "1536Mi"), ("2048Mi", True, "2Gi"), ("1G", True, "1G"), ("800m", False, "800m"),
    ("2000m", False, "2"), ("0.5", False, "500m"), ("1000", False, "1k"), ("0", True, "0")])
def test_quantities_print_in_their_canonical_form(text: str, binary: bool, canonical: str) -> None:
    assert format_quantity(parse_quantity(text), binary=binary) == canonical


def test_limit_range_defaults_and_validation_as_kube() -> None:
    lr = {"spec": {"limits": [{"type": "Container", "default": {"memory": "512Mi"}, "max": {"memory": "1Gi",
                                                                                          "cpu": "2"}},
                              {"type": "Pod", "max": {"cpu": "3"}}]}}
    set_defaults(lr)
    assert lr["spec"]["limits"][0] == {"type": "Container", "default": {"memory": "512Mi", "cpu": "2"},
                                       "defaultRequest": {"memory": "512Mi", "cpu": "2"},
                                       "max": {"memory": "1Gi", "cpu": "2"}}
    bad = {"spec": {"limits": [{"type": "Container", "default": {"memory": "2Gi"}, "max": {"memory": "1Gi"},
                                "min": {"memory": "1.5Gi"}}, {"type": "Foo"},
                               {"type": "Pod", "default": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "0.5"}}]}}
    set_defaults(bad)
    assert [(c.field, c.message) for c in validate(bad)] == [
        ("spec.limits[0].min[memory]", 'Invalid value: "1536Mi": min value 1536Mi is greater than max value 1Gi'),
        ("spec.limits[0].defaultRequest[memory]",
         'Invalid value: "2Gi": default request value 2Gi is greater than max value 1Gi'),
        ("spec.limits[0].default[memory]", 'Invalid value: "1Gi": default value 2Gi is greater than max value 1Gi'),
        ("spec.limits[1].type", 'Invalid value: "Foo": must be a standard limit type or fully qualified'),
        ("spec.limits[2].default", "Forbidden: may not be specified when `type` is 'Pod'"),
        ("spec.limits[2].maxLimitRequestRatio[cpu]", 'Invalid value: "500m": ratio 500m is less than 1'),
    ]


def test_limit_ranger_fills_what_is_missing_and_names_what_is_out_of_bounds() -> None:
    lr = {"spec": {"limits": [{"type": "Container", "default": {"memory": "512Mi", "cpu": "2"},
                               "defaultRequest": {"memory": "512Mi", "cpu": "2"},
                               "max": {"memory": "1Gi", "cpu": "2"}}, {"type": "Pod", "max": {"cpu": "3"}}]}}
    # A request given stays; a limit given is also the request (kube's API defaulting), so it is not filled.
    pod = {"containers": [{"name": "a", "image": "x", "resources": {"requests": {"memory": "100Mi"}}},
                          {"name": "b", "image": "x", "resources": {"limits": {"cpu": "800m"}}}]}
    apply_defaults(pod, [lr])
    assert pod["containers"][0]["resources"] == {"limits": {"memory": "512Mi", "cpu": "2"},
                                                 "requests": {"memory": "100Mi", "cpu": "2"}}
    assert pod["containers"][1]["resources"] == {"limits": {"cpu": "800m", "memory": "512Mi"},
                                                 "requests": {"memory": "512Mi"}}
    assert violations(pod, [lr]) == []
    big = {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"memory": "2Gi", "cpu": "3"}}}]}
    assert violations(big, [lr]) == ["maximum cpu usage per Container is 2, but limit is 3",
                                     "maximum memory usage per Container is 1Gi, but limit is 2Gi"]
    two = {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "2"}}},
                          {"name": "b", "image": "x", "resources": {"limits": {"cpu": "2"}}}]}
    assert violations(two, [{"spec": {"limits": [{"type": "Pod", "max": {"cpu": "3"}}]}}]) == [
        "maximum cpu usage per Pod is 3, but limit is 4"]


def test_builtin_defaults_fill_only_what_is_unset_and_never_go_below_a_request() -> None:
    pod = {"containers": [{"name": "a", "image": "x"},
                          {"name": "b", "image": "x", "resources": {"requests": {"cpu": "3"},
                                                                    "limits": {"memory": "0"}}}]}
    apply_builtin_defaults(pod, {"cpu": "1", "memory": "2Gi"}, {"cpu": "1m", "memory": "12Mi"})
    # A built-in limit brings the built-in request (an idle sandbox's), not a request equal to the limit.
    assert pod["containers"][0]["resources"] == {"limits": {"cpu": "1", "memory": "2Gi"},
                                                 "requests": {"cpu": "1m", "memory": "12Mi"}}
    assert pod["containers"][1]["resources"]["limits"] == {"memory": "0", "cpu": "3"}
    assert parse_quantity(pod["containers"][1]["resources"]["limits"]["cpu"]) == Decimal(3)
    assert pod["containers"][1]["resources"]["requests"] == {"cpu": "3"}  # its own; memory "0" is no limit


def test_builtin_requests_are_small_enough_to_fill_the_node_with_idle_sandboxes() -> None:
    pod = {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x", "resources": {"limits": {
        "memory": "64Mi"}}}, {"name": "c", "image": "x", "resources": {"limits": {"cpu": "500m"}}}]}
    apply_builtin_defaults(pod)
    plain, limited, cpu_only = (c["resources"] for c in pod["containers"])
    assert plain["requests"] == BUILTIN_DEFAULT_REQUESTS
    requests = {r: parse_quantity(v) for r, v in plain["requests"].items()}
    limits = {r: parse_quantity(v) for r, v in plain["limits"].items()}
    assert requests["cpu"] * 50 <= limits["cpu"] and requests["memory"] * 50 <= limits["memory"]  # a 50th at most
    # A limit the user gave is also its request (kube's defaulting): only the built-in one brings a request.
    assert limited["requests"] == {"cpu": BUILTIN_DEFAULT_REQUESTS["cpu"]}
    assert cpu_only["requests"] == {"memory": BUILTIN_DEFAULT_REQUESTS["memory"]}
