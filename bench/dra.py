"""Benchmark: allocating 1,000 ResourceClaims over 100 devices with CEL selectors, turbok against kube-scheduler.

The same objects, the same run: one ResourceSlice of 100 devices (ten models, four memory sizes, a driver
version; each device ``allowMultipleAllocations`` with a ``slots`` capacity of 10, one slot per claim, so the
1,000 claims fit exactly), one DeviceClass with a CEL selector, and 1,000 ResourceClaims each selecting a
model, a minimum memory and a driver version (semver) by CEL (every claim can be met).

- turbok: ``turbok.node.dra.allocator.Allocator`` allocates the claims one after the other, each allocation
  counted as in use before the next (what the embedded scheduler does per Pod); timed in-process.
- turbok end to end: the embedded scheduler (``turbok.node.scheduler`` with ``dra.scheduling``) over the
  embedded store, in-process (no HTTP, no node running the Pods): the same 1,000 Pods created up front, timed
  from the first create to the moment every claim is allocated; fed the DRA objects' changes as the node
  feeds it, so it keeps its allocator between Pods (``--no-cache``: it lists the slices, classes and
  allocated claims for every Pod instead, growing with the claims already allocated).
- kube-scheduler 1.37.2 (../shared/kube, with kube-apiserver, kube-controller-manager and kwok owning the
  node): 1,000 Pods, one claim each, created up front; timed from the first create to the moment every claim
  is allocated (read back from the API). This is end to end (queueing, the API writes of each allocation and
  binding at the scheduler's client QPS), so the ratio bounds the allocator's share from above.

All must allocate all 1,000 claims. Usage (about a minute; needs the kube binaries for the last part)::

    .venv/bin/python bench/dra.py [--claims 1000] [--devices 100] [--skip-kube] [--no-cache]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turbok.node.dra.allocator import Allocator  # noqa: E402

DRIVER = "bench.example.com"
NODE = "kwok-bench-0"
NAMESPACE = "bench"
MODELS = [f"m{i}" for i in range(10)]
MEMORY = [16, 24, 40, 80]


def objects(claims: int, devices: int) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    slots = max(1, -(-claims // devices))
    slice_ = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": "bench-devices"},
              "spec": {"driver": DRIVER, "nodeName": NODE, "pool": {"name": NODE, "generation": 1,
                                                                     "resourceSliceCount": 1},
                       "devices": [{"name": f"dev-{i}", "allowMultipleAllocations": True,
                                    "attributes": {"model": {"string": MODELS[i % len(MODELS)]},
                                                   "index": {"int": i},
                                                   "memoryGiB": {"int": MEMORY[(i // len(MODELS)) % len(MEMORY)]},
                                                   "driverVersion": {"version": "550.54.15"}},
                                    "capacity": {"slots": {"value": str(slots), "requestPolicy": {
                                                     "default": "1", "validRange": {"min": "1"}}}}}
                                   for i in range(devices)]}}
    klass = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "bench"},
             "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]}}
    out = []
    for i in range(claims):
        model = MODELS[i % len(MODELS)]
        expr = (f'device.attributes["{DRIVER}"].model == "{model}" && device.attributes["{DRIVER}"].memoryGiB >= 16 '
                f'&& device.attributes["{DRIVER}"].driverVersion.isGreaterThan(semver("535.0.0"))')
        out.append({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                    "metadata": {"name": f"claim-{i}", "namespace": NAMESPACE},
                    "spec": {"devices": {"requests": [{"name": "dev", "exactly": {
                        "deviceClassName": "bench", "allocationMode": "ExactCount", "count": 1,
                        "selectors": [{"cel": {"expression": expr}}]}}]}}})
    return klass, slice_, out


def turbok(klass: dict[str, Any], slice_: dict[str, Any], claims: list[dict[str, Any]]) -> tuple[float, int]:
    start = time.perf_counter()
    allocator = Allocator([slice_], {klass["metadata"]["name"]: klass})
    done = 0
    for claim in claims:
        allocator.reserve(allocator.allocate(claim, NODE))
        done += 1
    return time.perf_counter() - start, done


def _pod(i: int, claim: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"pod-{i}", "namespace": NAMESPACE},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": NODE},
                     "resourceClaims": [{"name": "dev", "resourceClaimName": claim["metadata"]["name"]}],
                     "containers": [{"name": "c", "image": "busybox", "resources": {"claims": [{"name": "dev"}]}}]}}


async def _embedded(klass: dict[str, Any], slice_: dict[str, Any], claims: list[dict[str, Any]],
                    cache: bool) -> tuple[float, int]:
    from turbok.api.kinds import default_registry
    from turbok.embedded.client import EmbeddedClient
    from turbok.node.dra.scheduling import DraScheduling
    from turbok.node.events import SCHEDULER, EventRecorder
    from turbok.node.scheduler import Scheduler
    from turbok.store.registry import ObjectRegistry
    from turbok.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory() as tmp:
        registry = ObjectRegistry(SqliteStore(Path(tmp) / "store.db"), default_registry())
        registry.ensure_namespace(NAMESPACE)
        kinds = registry.kinds
        claim_kind, pod_kind = kinds.by_kind("resource.k8s.io/v1", "ResourceClaim"), kinds.by_kind("v1", "Pod")
        registry.create(kinds.by_kind("resource.k8s.io/v1", "DeviceClass"), dict(klass))
        registry.create(kinds.by_kind("resource.k8s.io/v1", "ResourceSlice"), dict(slice_))
        for claim in claims:
            registry.create(claim_kind, dict(claim), namespace=NAMESPACE)
        client = EmbeddedClient(registry)
        events = EventRecorder(client, component=SCHEDULER, host=NODE)
        scheduler = Scheduler(client, NODE, events)
        scheduler.dra = dra = DraScheduling(client, NODE, cache=cache)
        dra_kinds = {kinds.by_kind("resource.k8s.io/v1", k).key for k in ("ResourceClaim", "ResourceSlice",
                                                                           "DeviceClass")}
        client.subscribe(lambda e: dra.observe(e) if e.resource in dra_kinds else None)  # as the node routes them
        scheduler.observe_node({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
                                "status": {"allocatable": {"cpu": "1000", "memory": "4000Gi",
                                                           "pods": str(len(claims) + 100)}}})
        client.subscribe(lambda e: scheduler.observe(e.object(), deleted=e.type == "DELETED")
                         if e.resource == pod_kind.key else None)
        start = time.perf_counter()
        for i, claim in enumerate(claims):
            registry.create(pod_kind, _pod(i, claim), namespace=NAMESPACE)
        done = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            done = sum(1 for c in registry.list(claim_kind, NAMESPACE).items if (c.get("status") or {}).get("allocation"))
            if done >= len(claims):
                break
        elapsed = time.perf_counter() - start
        await scheduler.stop()
        await events.stop()
        registry.db.close()
        return elapsed, done


def embedded(klass: dict[str, Any], slice_: dict[str, Any], claims: list[dict[str, Any]],
             cache: bool = True) -> tuple[float, int]:
    return asyncio.run(_embedded(klass, slice_, claims, cache))


def kube(klass: dict[str, Any], slice_: dict[str, Any], claims: list[dict[str, Any]]) -> tuple[float, int]:
    from tests.kube_cluster import kube_cluster

    with kube_cluster() as c:
        c.add_kwok_node(NODE, pods=str(len(claims) + 100))
        c.client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}).raise_for_status()
        c.wait("default ServiceAccount", lambda: c.client.get(
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default").status_code == 200)
        c.apply(klass, slice_)
        for claim in claims:
            c.client.post(f"/apis/resource.k8s.io/v1/namespaces/{NAMESPACE}/resourceclaims",
                          json=claim).raise_for_status()
        time.sleep(1.0)  # the scheduler's informers have the slice and the class
        start = time.perf_counter()
        for i, claim in enumerate(claims):
            c.client.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=_pod(i, claim)).raise_for_status()

        def allocated() -> int:
            items = c.client.get(f"/apis/resource.k8s.io/v1/namespaces/{NAMESPACE}/resourceclaims").json()["items"]
            return sum(1 for x in items if (x.get("status") or {}).get("allocation"))

        done = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = allocated()
            if done >= len(claims):
                break
            time.sleep(0.2)
        return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--skip-kube", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="the embedded scheduler lists for every Pod")
    args = parser.parse_args()
    klass, slice_, claims = objects(args.claims, args.devices)
    ours, ours_done = turbok(klass, slice_, claims)
    print(f"turbok allocator: {ours_done}/{len(claims)} claims in {ours:.3f} s, "
          f"{ours / len(claims) * 1e3:.3f} ms per claim")
    e2e, e2e_done = embedded(klass, slice_, claims, cache=not args.no_cache)
    print(f"turbok embedded scheduler (end to end, in-process): {e2e_done}/{len(claims)} claims in {e2e:.3f} s, "
          f"{e2e / len(claims) * 1e3:.3f} ms per claim")
    if args.skip_kube:
        return
    theirs, theirs_done = kube(klass, slice_, claims)
    print(f"kube-scheduler 1.37.2 (end to end): {theirs_done}/{len(claims)} claims in {theirs:.3f} s, "
          f"{theirs / len(claims) * 1e3:.3f} ms per claim")
    print(f"ratio turbok allocator / kube-scheduler: {ours / theirs:.3f}")
    print(f"ratio turbok end to end / kube-scheduler: {e2e / theirs:.3f}")


if __name__ == "__main__":
    main()
