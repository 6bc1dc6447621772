"""Sandboxes with accelerators on the Kubernetes engine: kube-scheduler's DRA plugin allocates, kube-controller-
manager's resourceclaim controller makes and releases the claims, kwok runs the Pods; turbok's operator keeps the
Sandboxes, warm pools and their conditions (docs/dra.md).

The ResourceSlices stand for a driver on the kwok node (no driver runs: kwok prepares nothing). The warm pool
body is the embedded engine's (tests/unit/controllers/test_sandbox_devices.py); the suspend/resume one needs a
real scheduler (the embedded engine's own is tests/integration/controlplane/test_dra_sandboxes.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.engine import KubeEngineCluster
from tests.kube_cluster import KubeCluster
from tests.unit.controllers.test_sandbox_devices import (  # noqa: F401 (collected here, run on this module's cluster)
    DEVICE_CLASS,
    claim_template,
    gpu_template,
    test_a_pool_of_a_template_with_claims_keeps_no_devices_unless_told,
)

Obj = dict[str, Any]
NODE = "kwok-node-0"
SOLO = "solo.turbok.test"


def devices(driver: str, count: int) -> list[Obj]:
    return [{"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": driver},
             "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]}},
            {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{NODE}-{driver}"},
             "spec": {"driver": driver, "nodeName": NODE, "pool": {"name": NODE, "generation": 1,
                                                                   "resourceSliceCount": 1},
                      "devices": [{"name": f"gpu-{i}"} for i in range(count)]}}]


@pytest.fixture(scope="module", autouse=True)
def published(kube: KubeCluster) -> Iterator[None]:
    """Four devices for the warm pool body's class, one for the suspend/resume body's."""
    kube.apply(*devices(DEVICE_CLASS, 4), *devices(SOLO, 1))
    yield


def sandbox(name: str) -> Obj:
    pod_template = gpu_template(claims="solo")["spec"]["podTemplate"]
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": name, "namespace": "default"},
            "spec": {"podTemplate": pod_template}}


def reason(cluster: KubeEngineCluster, name: str, type_: str = "Ready") -> str | None:
    for cond in ((cluster.get(cluster.sandbox, name) or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return f"{cond['status']}/{cond['reason']}"
    return None


async def test_suspending_releases_the_device_and_resuming_waits_for_it(cluster: KubeEngineCluster) -> None:
    cluster.create(claim_template("solo", SOLO))
    cluster.create(sandbox("first"))
    await cluster.wait_condition(cluster.sandbox, "first", "Ready", timeout=20)
    cluster.create(sandbox("second"))
    await cluster.wait(lambda: reason(cluster, "second") == "False/DevicesUnavailable", timeout=20,
                       what="second waits for the device")

    cluster.patch(cluster.sandbox, "first", {"spec": {"operatingMode": "Suspended"}})
    await cluster.wait_condition(cluster.sandbox, "first", "Suspended", reason="PodTerminated", timeout=20)
    await cluster.wait_condition(cluster.sandbox, "second", "Ready", timeout=30)

    cluster.patch(cluster.sandbox, "first", {"spec": {"operatingMode": "Running"}})
    got = await cluster.wait_condition(cluster.sandbox, "first", "Suspended", reason="DevicesUnavailable", timeout=20)
    message = next(c for c in got["status"]["conditions"] if c["type"] == "Suspended")["message"]
    assert "cannot allocate all claims" in message

    cluster.registry.delete(cluster.sandbox, "default", "second")
    await cluster.wait_condition(cluster.sandbox, "first", "Ready", timeout=30)
    assert reason(cluster, "first", "Suspended") == "False/NotSuspended"
