"""resource.k8s.io/v1 through the registry, beyond the recorded differential cases: what kubectl apply sends
(a strategic merge patch), the claim status rules the scheduler and the claim controller rely on, CEL."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.api import cel
from turbok.api.kinds import RESOURCE_CLAIM, RESOURCE_CLAIM_TEMPLATE, default_registry
from turbok.api.status import Invalid
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

STRATEGIC = "application/strategic-merge-patch+json"


@pytest.fixture
def registry(tmp_path: Path) -> ObjectRegistry:
    r = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    r.ensure_namespace("default")
    return r


def test_kubectl_apply_patches_a_claim_template(registry: ObjectRegistry) -> None:
    spec = {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "a"}}]}}
    registry.create(RESOURCE_CLAIM_TEMPLATE, {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
                                              "metadata": {"name": "t"}, "spec": {"spec": spec}}, namespace="default")
    patched = registry.patch(RESOURCE_CLAIM_TEMPLATE, "default", "t", STRATEGIC,
                             {"metadata": {"labels": {"x": "y"}}})
    assert patched["metadata"]["labels"] == {"x": "y"}
    with pytest.raises(Invalid, match="field is immutable"):
        registry.patch(RESOURCE_CLAIM_TEMPLATE, "default", "t", STRATEGIC, {"spec": {"spec": {"devices": {
            "requests": [{"name": "gpu", "exactly": {"deviceClassName": "b"}}]}}}})


def test_claim_status_rules(registry: ObjectRegistry) -> None:
    claim = registry.create(RESOURCE_CLAIM, {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                                             "metadata": {"name": "c"}, "spec": {"devices": {"requests": [
                                                 {"name": "gpu", "exactly": {"deviceClassName": "a"}}]}}},
                            namespace="default")
    assert claim["status"] == {}
    result = {"request": "gpu", "driver": "d.example.com", "pool": "p", "device": "dev-0"}
    reserved = {"resource": "pods", "name": "p", "uid": "u1"}
    claim["status"] = {"reservedFor": [reserved]}
    with pytest.raises(Invalid, match="may not be specified when `allocated` is not set"):
        registry.update(RESOURCE_CLAIM, claim, subresource="status")
    claim["status"] = {"allocation": {"devices": {"results": [{**result, "request": "nope"}]}}}
    with pytest.raises(Invalid, match="must be the name of a request in the claim"):
        registry.update(RESOURCE_CLAIM, claim, subresource="status")
    claim["status"] = {"allocation": {"devices": {"results": [result]}}, "reservedFor": [reserved, reserved]}
    with pytest.raises(Invalid, match="Duplicate value"):
        registry.update(RESOURCE_CLAIM, claim, subresource="status")
    claim["status"] = {"allocation": {"devices": {"results": [result]}}, "reservedFor": [reserved]}
    claim = registry.update(RESOURCE_CLAIM, claim, subresource="status")
    claim["status"]["allocation"]["devices"]["results"][0]["device"] = "dev-1"
    with pytest.raises(Invalid, match="status.allocation: Invalid value"):
        registry.update(RESOURCE_CLAIM, claim, subresource="status")
    claim["status"] = {}  # unreserved and deallocated at once: what the claim controller writes
    assert registry.update(RESOURCE_CLAIM, claim, subresource="status")["status"] == {}


def test_cel_selectors_compile_and_evaluate_as_kubernetes_does() -> None:
    device = {"name": "d", "attributes": {"model": {"string": "A100"}, "v": {"version": "1.2.3-rc.1"},
                                          "other.io/numa": {"int": 1}},
              "capacity": {"memory": {"value": "40Gi"}}}
    domains = cel.literal_domains(('device.attributes["x.io"]',))
    data = cel.device_activation("gpu.example.com", device, domains=domains)
    true = ['device.attributes["gpu.example.com"].model.startsWith("A")',
            'device.capacity["gpu.example.com"].memory == quantity("40960Mi")',
            'device.attributes["gpu.example.com"].v.isLessThan(semver("1.2.3"))',
            'device.attributes["other.io"].numa == 1', '!("model" in device.attributes["x.io"])',
            'quantity("1.5").isGreaterThan(quantity("1")) && isSemver("1.0.0") && !isQuantity("x")']
    for expression in true:
        assert cel.compile_selector(expression).evaluate(data) is True, expression
    with pytest.raises(cel.CelEvalError, match="no such key: model"):
        cel.compile_selector('device.attributes["x.io"].model == "a"').evaluate(data)
    with pytest.raises(cel.CelCompileError, match="found no matching overload for '_==_' applied to '\\(string, int\\)'"):
        cel.compile_selector("device.driver == 1")
    with pytest.raises(cel.CelCompileError, match="undefined field 'nope'"):
        cel.compile_selector("device.nope")
