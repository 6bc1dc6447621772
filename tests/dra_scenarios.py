"""DRA allocation scenarios (tests/data/dra/scenarios.yaml) as objects, and turbok's answer to them.

Shared by tests/compat/test_dra_allocation.py (the same objects given to kube-scheduler) and
tests/unit/node/dra/test_allocator_recorded.py (turbok's answer against kube-scheduler's recorded one).
An answer is, per pod in order: whether it was scheduled, and per claim the devices allocated
(``request=device``, sorted) or None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from turbok.node.dra.allocator import Allocator, Unallocatable

DATA = Path(__file__).resolve().parent / "data" / "dra"
SCENARIOS: list[dict[str, Any]] = yaml.safe_load((DATA / "scenarios.yaml").read_text())
RECORDED = DATA / "recorded.json"
DRIVER = "gpu.example.com"
NAMESPACE = "dra"


def objects(scenario: dict[str, Any], node: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                           list[dict[str, Any]]]:
    """(DeviceClasses, ResourceSlices, ResourceClaims) of a scenario for ``node``; each scenario has a driver of
    its own (``<scenario>.example.com`` for ``gpu.example.com``), so no scenario sees another's devices."""
    prefix = scenario["name"]
    scenario = yaml.safe_load(yaml.safe_dump(scenario).replace(DRIVER, driver_of(scenario)))
    classes = [{"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                "metadata": {"name": f"{prefix}-{name}"},
                "spec": {"selectors": [{"cel": {"expression": expr}}]}} for name, expr in scenario["classes"].items()]
    count = 2 if scenario.get("counters") else 1
    pool = {"name": f"{prefix}-{node}", "generation": 1, "resourceSliceCount": count}
    slices = [{"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{prefix}-devices"},
               "spec": {"driver": driver_of(scenario), "nodeName": node, "pool": pool,
                        "devices": scenario["devices"]}}]
    if scenario.get("counters"):
        slices.append({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                       "metadata": {"name": f"{prefix}-counters"},
                       "spec": {"driver": driver_of(scenario), "nodeName": node, "pool": pool,
                                "sharedCounters": scenario["counters"]}})
    claims = []
    for name, devices in scenario["claims"].items():
        spec = yaml.safe_load(yaml.safe_dump(devices))
        for req in spec["requests"]:
            for r in ([req["exactly"]] if "exactly" in req else req["firstAvailable"]):
                if r["deviceClassName"] in scenario["classes"]:
                    r["deviceClassName"] = f"{prefix}-{r['deviceClassName']}"
                r.setdefault("allocationMode", "ExactCount")
                if r["allocationMode"] == "ExactCount":
                    r.setdefault("count", 1)
        claims.append({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                       "metadata": {"name": f"{prefix}-{name}", "namespace": NAMESPACE}, "spec": {"devices": spec}})
    return classes, slices, claims


def driver_of(scenario: dict[str, Any]) -> str:
    return f"{scenario['name']}.example.com"


def devices_of(allocation: dict[str, Any] | None) -> list[str] | None:
    if not allocation:
        return None
    return sorted(f"{r['request']}={r['device']}" for r in allocation["devices"]["results"])


def turbok_answer(scenario: dict[str, Any], node: str = "node-0") -> list[dict[str, Any]]:
    """What turbok's allocator does with the scenario's pods, one after the other."""
    classes, slices, claims = objects(scenario, node)
    by_name = {c["metadata"]["name"]: c for c in claims}
    allocator = Allocator(slices, {c["metadata"]["name"]: c for c in classes})
    allocated: dict[str, dict[str, Any]] = {}
    answer = []
    for names in scenario["pods"]:
        wanted = [f"{scenario['name']}-{n}" for n in names]
        fresh: dict[str, dict[str, Any]] = {}
        ok = True
        for claim in wanted:
            if claim in allocated or claim in fresh:
                continue
            try:
                fresh[claim] = allocator.allocate(by_name[claim], node)
                allocator.reserve(fresh[claim])
            except Unallocatable:
                ok = False
                break
        if ok:
            allocated.update(fresh)
        else:  # what was picked for the pod's other claims goes back
            allocator = Allocator(slices, {c["metadata"]["name"]: c for c in classes},
                                  claims=[{"status": {"allocation": a}} for a in allocated.values()])
        answer.append({"scheduled": ok, "claims": {n: devices_of(allocated.get(n)) if ok else None for n in wanted}})
    return answer
