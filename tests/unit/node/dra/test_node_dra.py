"""DRA on the embedded node, end to end over a fake pod runtime: templates, allocation before binding,
shared claims, Pending with kube-scheduler's reason, deallocation, devices in the container config."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.unit.node.conftest import NodeHarness, condition, pod
from tests.unit.node.dra.conftest import dra_settings

Obj = dict[str, Any]
RES = "resource.k8s.io/v1"


def template(name: str, device_class: str = "gpu.nvidia.com", count: int = 1) -> Obj:
    return {"apiVersion": RES, "kind": "ResourceClaimTemplate", "metadata": {"name": name, "namespace": "default"},
            "spec": {"spec": {"devices": {"requests": [
                {"name": "gpu", "exactly": {"deviceClassName": device_class, "count": count}}]}}}}


def claim(name: str, device_class: str = "gpu.nvidia.com") -> Obj:
    return {"apiVersion": RES, "kind": "ResourceClaim", "metadata": {"name": name, "namespace": "default"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": device_class}}]}}}


def gpu_pod(name: str, *, template_name: str | None = None, claim_name: str | None = None) -> Obj:
    source = {"resourceClaimTemplateName": template_name} if template_name else {"resourceClaimName": claim_name}
    return pod(name, node=None, resourceClaims=[{"name": "gpu", **source}],
               containers=[{"name": "main", "image": "python-runtime-sandbox",
                            "resources": {"claims": [{"name": "gpu"}]}}])


def visible(h: NodeHarness, name: str) -> str | None:
    p = h.pod(name)
    assert p is not None
    worker = h.node.workers.get(p["metadata"]["uid"]) if h.node is not None else None
    sb = h.runtime.sandboxes.get(worker.rid) if worker is not None else None
    config = sb.configs.get("main") if sb is not None else None
    return None if config is None else config.env.get("TURBOK_VISIBLE_DEVICES")


def claim_of(h: NodeHarness, name: str) -> Obj:
    kind = h.kinds.by_kind(RES, "ResourceClaim")
    found = h.registry.try_get(kind, "default", name)
    assert found is not None
    return found


async def test_pods_get_exactly_their_simulated_gpus(harness: NodeHarness, sockets: Path) -> None:
    h = harness
    await h.start(dra=dra_settings(sockets, gpus=2))
    slices = h.registry.list(h.kinds.by_kind(RES, "ResourceSlice"), None).items
    assert {s["spec"]["driver"] for s in slices} == {"gpu.nvidia.com"}
    h.create(template("one-gpu"))
    h.create(gpu_pod("a", template_name="one-gpu"))
    await h.wait_phase("a", "Running")
    a = h.pod("a")
    assert a is not None
    generated = a["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    assert generated.startswith("a-gpu-")
    allocated = claim_of(h, generated)["status"]
    assert [r["device"] for r in allocated["allocation"]["devices"]["results"]] == ["gpu-0"]
    assert [r["uid"] for r in allocated["reservedFor"]] == [a["metadata"]["uid"]]
    await h.wait(lambda: visible(h, "a") == "gpu-0", what="a's TURBOK_VISIBLE_DEVICES")

    # Two Pods sharing one claim see the same device; it is reserved for both.
    h.create(claim("shared"))
    h.create(gpu_pod("b", claim_name="shared"))
    h.create(gpu_pod("c", claim_name="shared"))
    await h.wait_phase("b", "Running")
    await h.wait_phase("c", "Running")
    assert visible(h, "b") == visible(h, "c") == "gpu-1"
    assert len(claim_of(h, "shared")["status"]["reservedFor"]) == 2

    # A third claim beyond the two GPUs stays Pending, with kube-scheduler's reason and an Event.
    h.create(gpu_pod("d", template_name="one-gpu"))
    pending = await h.wait_pod("d", lambda p: condition(p, "PodScheduled") == "False", "d unschedulable")
    scheduled = next(c for c in pending["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (scheduled["reason"], scheduled["message"]) == (
        "Unschedulable", "0/1 nodes are available: 1 cannot allocate all claims.")
    await h.settle()
    assert "FailedScheduling" in h.reasons("d")

    # Deleting a: its claim goes with it, its GPU back to the pool, and d runs on it.
    h.delete("a")
    await h.wait_gone("a")
    await h.wait(lambda: h.registry.try_get(h.kinds.by_kind(RES, "ResourceClaim"), "default", generated) is None,
                 what="a's generated claim deleted")
    await h.wait_phase("d", "Running")
    assert visible(h, "d") == "gpu-0"


async def test_a_claim_reserved_for_nobody_is_deallocated(harness: NodeHarness, sockets: Path) -> None:
    h = harness
    await h.start(dra=dra_settings(sockets, gpus=1))
    h.create(claim("solo"))
    h.create(gpu_pod("x", claim_name="solo"))
    await h.wait_phase("x", "Running")
    assert claim_of(h, "solo")["status"].get("allocation")
    h.delete("x")
    await h.wait_gone("x")
    await h.wait(lambda: not claim_of(h, "solo").get("status", {}).get("allocation"), what="solo deallocated")
    assert not claim_of(h, "solo")["status"].get("reservedFor")


async def test_a_selector_failing_at_run_time_or_an_unknown_class_keeps_the_pod_pending(
        harness: NodeHarness, sockets: Path) -> None:
    h = harness
    await h.start(dra=dra_settings(sockets, gpus=1))
    bad = claim("bad")
    bad["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [
        {"cel": {"expression": 'device.attributes["gpu.nvidia.com"].nonexistent == 1'}}]
    h.create(bad)
    h.create(claim("nowhere", device_class="no-such-class"))
    h.create(gpu_pod("runtime-error", claim_name="bad"))
    h.create(gpu_pod("unknown-class", claim_name="nowhere"))
    for name, why in (("runtime-error", "CEL runtime error: no such key: nonexistent"),
                      ("unknown-class", "request gpu: device class no-such-class does not exist")):
        got = await h.wait_pod(name, lambda p: condition(p, "PodScheduled") == "False", f"{name} pending")
        message = next(c["message"] for c in got["status"]["conditions"] if c["type"] == "PodScheduled")
        assert why in message
    assert not claim_of(h, "bad")["status"].get("allocation")


async def test_a_claim_of_a_driver_that_is_not_there_fails_the_start_clearly(harness: NodeHarness,
                                                                           sockets: Path) -> None:
    h = harness
    await h.start(dra=dra_settings(sockets, gpus=1))
    h.create({"apiVersion": RES, "kind": "DeviceClass", "metadata": {"name": "gone"},
              "spec": {"selectors": [{"cel": {"expression": 'device.driver == "gone.example.com"'}}]}})
    h.create({"apiVersion": RES, "kind": "ResourceSlice", "metadata": {"name": "gone"},
              "spec": {"driver": "gone.example.com", "nodeName": "node1",
                       "pool": {"name": "node1", "generation": 1, "resourceSliceCount": 1},
                       "devices": [{"name": "dev-0"}]}})
    h.create(claim("orphan", device_class="gone"))
    h.create(gpu_pod("stuck", claim_name="orphan"))
    h.create(gpu_pod("fine", template_name=None, claim_name="fine-claim"))
    h.create(claim("fine-claim"))
    await h.wait(lambda: h.events("stuck", "FailedPrepareDynamicResources"), what="FailedPrepareDynamicResources")
    (event,) = h.events("stuck", "FailedPrepareDynamicResources")[:1]
    assert "DRA driver gone.example.com is not registered on this node" in event["message"]
    await h.wait_phase("fine", "Running")  # nothing else disturbed
    stuck = h.pod("stuck")
    assert stuck is not None and stuck["status"].get("phase") == "Pending"



async def test_pods_going_together_have_every_claim_unprepared(harness: NodeHarness, sockets: Path) -> None:
    # Two Pods' unprepares interleaved: the second unprepared the first's claim again, failed on it (KeyError)
    # and never reached its own (its CDI spec and the driver's state stayed).
    h = harness
    node = await h.start(dra=dra_settings(sockets, gpus=2))
    assert node.dra is not None
    for name in ("a", "b"):
        h.create(claim(name))
        h.create(gpu_pod(name, claim_name=name))
    pods = [await h.wait_phase(name, "Running") for name in ("a", "b")]
    specs = sockets / "cdi"
    assert len(list(specs.glob("*.json"))) == 2
    # The Pod of the first claim the node prepared goes first: its unprepare yields on that claim.
    first = next(iter(node.dra.manager.users.values()))
    pods.sort(key=lambda p: p["metadata"]["uid"] not in first)
    await asyncio.gather(*(node.dra.manager.unprepare(p) for p in pods))
    assert node.dra.manager.prepared == {}
    assert list(specs.glob("*.json")) == []
