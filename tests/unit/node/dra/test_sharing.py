"""Granular sharing on turbok's GPU driver (simulated): time-slicing up to TIME_SLICES claims per GPU, and
partitions that exclude the whole GPU through shared counters (docs/dra.md)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.node.conftest import NodeHarness, condition
from tests.unit.node.dra.conftest import dra_settings
from tests.unit.node.dra.test_node_dra import claim, claim_of, gpu_pod, visible
from turbok.node.dra.nvidia import TIME_SLICES

NO_DEVICE = "0/1 nodes are available: 1 cannot allocate all claims."


async def pending_for_devices(h: NodeHarness, name: str) -> None:
    got = await h.wait_pod(name, lambda p: condition(p, "PodScheduled") == "False", f"{name} unschedulable")
    message = next(c["message"] for c in got["status"]["conditions"] if c["type"] == "PodScheduled")
    assert message == NO_DEVICE


async def test_time_slicing_shares_one_gpu_among_at_most_its_limit(harness: NodeHarness, sockets: Path) -> None:
    h = harness
    await h.start(dra=dra_settings(sockets, gpus=1))
    names = [f"share-{i}" for i in range(TIME_SLICES + 1)]
    for name in names:
        h.create(claim(name, device_class="gpu-shared.turbok.dev"))
    for name in names[:TIME_SLICES]:
        h.create(gpu_pod(name, claim_name=name))
        await h.wait_phase(name, "Running")
    assert {visible(h, n) for n in names[:TIME_SLICES]} == {"gpu-0-shared"}
    # Each claim its own allocation of the same device, one time slice each.
    results = [claim_of(h, n)["status"]["allocation"]["devices"]["results"] for n in names[:TIME_SLICES]]
    assert all(r[0]["device"] == "gpu-0-shared" and r[0]["consumedCapacity"] == {"timeSlices": "1"} for r in results)
    assert len({r[0]["shareID"] for r in results}) == TIME_SLICES
    # One more than the limit waits; so does the whole GPU while it is time-sliced.
    h.create(gpu_pod(names[-1], claim_name=names[-1]))
    await pending_for_devices(h, names[-1])
    h.create(claim("whole"))
    h.create(gpu_pod("whole", claim_name="whole"))
    await pending_for_devices(h, "whole")
    # A share given back goes to the one that waited.
    h.delete(names[0])
    await h.wait_phase(names[-1], "Running")
    assert visible(h, names[-1]) == "gpu-0-shared"


async def test_partitions_and_the_whole_gpu_exclude_each_other(harness: NodeHarness, sockets: Path) -> None:
    h = harness
    await h.start(dra=dra_settings(sockets, gpus=1))
    for name in ("half-a", "half-b", "third-half"):
        h.create(claim(name, device_class="gpu-partition.turbok.dev"))
    h.create(gpu_pod("half-a", claim_name="half-a"))
    h.create(gpu_pod("half-b", claim_name="half-b"))
    await h.wait_phase("half-a", "Running")
    await h.wait_phase("half-b", "Running")
    assert {visible(h, "half-a"), visible(h, "half-b")} == {"gpu-0-part-0", "gpu-0-part-1"}
    h.create(gpu_pod("third-half", claim_name="third-half"))
    await pending_for_devices(h, "third-half")
    h.create(claim("whole"))
    h.create(gpu_pod("whole", claim_name="whole"))
    await pending_for_devices(h, "whole")
    # Both halves given back (and the third half withdrawn, or it could take one): the whole GPU is free again.
    h.delete("third-half")
    await h.wait_gone("third-half")
    h.delete("half-a")
    h.delete("half-b")
    await h.wait_phase("whole", "Running")
    assert visible(h, "whole") == "gpu-0"
