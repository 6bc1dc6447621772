"""The embedded scheduler keeps its allocator between Pods (no listing per Pod); every change it does not hold
already drops it: an allocation made by someone else is never handed out twice, and a device given back or
newly published is seen."""

from __future__ import annotations

import copy
from pathlib import Path

from tests.unit.node.conftest import NodeHarness, condition
from tests.unit.node.dra.conftest import dra_settings
from tests.unit.node.dra.test_node_dra import RES, claim, claim_of, gpu_pod, visible


async def test_the_kept_allocator_follows_changes_it_did_not_make(harness: NodeHarness, sockets: Path) -> None:
    h = harness
    node = await h.start(dra=dra_settings(sockets, gpus=2))
    assert node.dra is not None and node.dra.scheduling is not None
    scheduling = node.dra.scheduling
    claim_kind = h.kinds.by_kind(RES, "ResourceClaim")

    h.create(claim("a"))
    h.create(gpu_pod("a", claim_name="a"))
    await h.wait_phase("a", "Running")
    assert visible(h, "a") == "gpu-0"
    kept = scheduling._allocator
    assert kept is not None  # kept after its own allocation (and its own write coming back)

    # Another scheduler (or a person) allocates gpu-1 to a claim: it is not handed out again.
    h.create(claim("elsewhere"))
    taken = copy.deepcopy(claim_of(h, "elsewhere"))
    taken["status"] = {"allocation": {"devices": {"results": [
        {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "node1", "device": "gpu-1"}]}}}
    h.registry.update(claim_kind, taken, namespace="default", subresource="status")
    assert scheduling._allocator is None
    h.create(claim("b"))
    h.create(gpu_pod("b", claim_name="b"))
    await h.wait_pod("b", lambda p: condition(p, "PodScheduled") == "False", "b unschedulable")
    assert not claim_of(h, "b")["status"].get("allocation")

    # Given back: b gets it.
    freed = copy.deepcopy(claim_of(h, "elsewhere"))
    freed["status"] = {}
    h.registry.update(claim_kind, freed, namespace="default", subresource="status")
    await h.wait_phase("b", "Running")
    assert visible(h, "b") == "gpu-1"

    # A device published later (another driver's slice) is seen by a Pod that waited for it.
    h.create({"apiVersion": RES, "kind": "DeviceClass", "metadata": {"name": "late"},
              "spec": {"selectors": [{"cel": {"expression": 'device.driver == "late.example.com"'}}]}})
    h.create(claim("c", device_class="late"))
    h.create(gpu_pod("c", claim_name="c"))
    await h.wait_pod("c", lambda p: condition(p, "PodScheduled") == "False", "c unschedulable")
    h.create({"apiVersion": RES, "kind": "ResourceSlice", "metadata": {"name": "late"},
              "spec": {"driver": "late.example.com", "nodeName": "node1",
                       "pool": {"name": "node1", "generation": 1, "resourceSliceCount": 1},
                       "devices": [{"name": "dev-0"}]}})
    await h.wait(lambda: claim_of(h, "c").get("status", {}).get("allocation"), what="c allocated on the new device")
    assert claim_of(h, "c")["status"]["allocation"]["devices"]["results"][0]["device"] == "dev-0"
