"""From pod template to runtime spec: the limits a sandbox runs with."""

from __future__ import annotations

import re
from typing import Any

import pytest

from turbok.controllers.podspec import InvalidPodTemplate, plan_pod


def plan(resources: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> Any:
    container: dict[str, Any] = {"name": "main", "image": "python-runtime-sandbox"}
    if resources is not None:
        container["resources"] = resources
    template = {"metadata": {"annotations": annotations or {}}, "spec": {"containers": [container]}}
    return plan_pod(sandbox_id="tk" + "0" * 22, name="box", pod_template=template).spec


def test_a_template_without_limits_runs_with_the_builtin_defaults() -> None:
    spec = plan()
    assert (spec.cpu_millis, spec.memory_bytes, spec.pids_limit) == (1000, 2 * 2**30, None)


def test_explicit_limits_zero_and_the_pids_annotation() -> None:
    spec = plan({"limits": {"cpu": "250m", "memory": "0"}}, {"turbok.dev/pids-limit": "300"})
    assert (spec.cpu_millis, spec.memory_bytes, spec.pids_limit) == (250, None, 300)  # 0: no limit (kubelet)
    # A request above the built-in default raises the default limit to it, never below.
    assert plan({"requests": {"memory": "3Gi"}}).memory_bytes == 3 * 2**30


@pytest.mark.parametrize(("resources", "annotations", "words"), [
    ({"limits": {"cpu": "-1"}}, None, "limits[cpu]"),
    (None, {"turbok.dev/pids-limit": "lots"}, "turbok.dev/pids-limit"),
])
def test_what_the_api_refuses_the_controller_refuses_in_the_same_words(
        resources: dict[str, Any] | None, annotations: dict[str, str] | None, words: str) -> None:
    with pytest.raises(InvalidPodTemplate, match=re.escape(words)):
        plan(resources, annotations)
