"""DRA allocation, differential: turbok's allocator against kube-scheduler 1.37.2 on the same objects.

Each scenario of tests/data/dra/scenarios.yaml is given to a real control plane (kube-apiserver,
kube-controller-manager, kube-scheduler, and kwok owning the node the slices name): its pods are created
one at a time, each waited for until it is bound or Unschedulable, and the claims' allocations read back.
turbok's allocator (tests/dra_scenarios.py) must reach the same answer: which pods run, and which devices
each claim got. With TURBOK_RECORD_DRA=1 the real answers are written to tests/data/dra/recorded.json,
which tests/unit/node/dra/test_allocator_recorded.py replays without the binaries. Skipped, naming what
is missing, without them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.dra_scenarios import NAMESPACE, RECORDED, SCENARIOS, devices_of, objects, turbok_answer
from tests.kube_cluster import KubeCluster, kube_cluster, missing

pytestmark = [pytest.mark.compat,
              pytest.mark.skipif(missing("kube-scheduler", "kwok") is not None,
                                 reason=str(missing("kube-scheduler", "kwok")))]

NODE = "kwok-dra-0"
UNSCHEDULABLE_SECONDS = 3.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    with kube_cluster() as c:
        c.add_kwok_node(NODE)
        c.client.post("/api/v1/namespaces", json={"metadata": {  # admin-access claims need the label
            "name": NAMESPACE, "labels": {"resource.kubernetes.io/admin-access": "true"}}}).raise_for_status()
        c.wait("the namespace's default ServiceAccount", lambda: c.client.get(
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default").status_code == 200)
        yield c


@pytest.fixture(scope="module")
def record() -> Iterator[dict[str, Any]]:
    answers: dict[str, Any] = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    yield answers
    if os.environ.get("TURBOK_RECORD_DRA") == "1":
        RECORDED.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


def _pod(scenario: str, i: int, claims: list[str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{scenario}-{i}", "namespace": NAMESPACE},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": NODE},
                     "resourceClaims": [{"name": f"c{j}", "resourceClaimName": f"{scenario}-{c}"}
                                        for j, c in enumerate(claims)],
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"claims": [{"name": f"c{j}"} for j in range(len(claims))]}}]}}


def settled(c: KubeCluster, path: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
    """The Pod once bound, or Unschedulable for UNSCHEDULABLE_SECONDS on end: a first failure can be the
    scheduler's cache lagging behind a claim's status, and it tries again."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < deadline:
        got: dict[str, Any] = c.client.get(path).json()
        if got["spec"].get("nodeName"):
            return got
        if any(cond["type"] == "PodScheduled" and cond["status"] == "False"
               for cond in (got.get("status") or {}).get("conditions") or []):
            since = since or time.monotonic()
            if time.monotonic() - since > UNSCHEDULABLE_SECONDS:
                return got
        else:
            since = None
        time.sleep(0.1)
    raise AssertionError(f"pod {name} was neither bound nor unschedulable in {timeout:.0f} s")


def kube_answer(c: KubeCluster, scenario: dict[str, Any]) -> list[dict[str, Any]]:
    classes, slices, claims = objects(scenario, NODE)
    c.apply(*classes, *slices, *claims)
    time.sleep(1.0)  # the scheduler's informers see the slices and classes before the first pod
    answer = []
    for i, names in enumerate(scenario["pods"]):
        pod = _pod(scenario["name"], i, names)
        c.client.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod).raise_for_status()
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}"

        got = settled(c, path, pod["metadata"]["name"])
        scheduled = bool(got["spec"].get("nodeName"))
        found = {}
        for n in names:
            claim = c.client.get(f"/apis/resource.k8s.io/v1/namespaces/{NAMESPACE}/resourceclaims/"
                                 f"{scenario['name']}-{n}").json()
            found[f"{scenario['name']}-{n}"] = devices_of((claim.get("status") or {}).get("allocation")) \
                if scheduled else None
        answer.append({"scheduled": scheduled, "claims": found})
    return answer


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_same_allocation_as_kube_scheduler(scenario: dict[str, Any], cluster: KubeCluster,
                                           record: dict[str, Any]) -> None:
    theirs = kube_answer(cluster, scenario)
    record[scenario["name"]] = theirs
    assert turbok_answer(scenario) == theirs
