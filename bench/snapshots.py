"""Benchmark: start from a snapshot against a cold start, for an image whose entrypoint imports numpy.

Both sides end at the same point: the sandbox's interpreter has numpy imported and answers on its port
(``tests/integration/heavyimage.py``: the holder). Measured through ``GvisorPodRuntime``, on the pod
network, each side in its own pod of a fresh id every round:

- cold: ``run_pod_sandbox`` + ``start_container`` (``runsc run``, Python starts, ``import numpy``, listens),
  until its state is read over TCP from the host;
- snapshot: ``restore_pod_sandbox`` from one snapshot taken of a ready holder (a copy of its disk, its
  memory restored into a new container id), until its state is read the same way; the state must carry
  the snapshot's token (the process came from the snapshot) with numpy loaded.

The sides alternate and swap order every round; medians. Target: snapshot <= 0.5 x cold.

Usage (root, base image built)::

    .venv/bin/python bench/snapshots.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration import heavyimage  # noqa: E402
from turbok.runtime.cri import ContainerConfig, PodSandboxConfig  # noqa: E402
from turbok.runtime.ids import sandbox_id  # noqa: E402
from turbok.runtime.images import ImageStore  # noqa: E402
from turbok.runtime.network import NETNS_DIR, PodNetwork  # noqa: E402
from turbok.runtime.pods import release_root  # noqa: E402
from turbok.runtime.pods_gvisor import GvisorPodRuntime  # noqa: E402

NAME, CIDR = "tkbs", "10.212.16.0/24"
MAIN = ContainerConfig("main", heavyimage.IMAGE)


def pod(name: str) -> PodSandboxConfig:
    return PodSandboxConfig(id=sandbox_id(f"bench-snap-{name}-{os.getpid()}"), name=name, namespace="bench",
                            uid=f"uid-{name}", hostname=name, single_container=True, network=True,
                            memory_bytes=1 << 30)


async def main(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-snapshots-"))
    images = ImageStore(heavyimage.build(work / "images"))
    net = PodNetwork(work / "net", CIDR, name=NAME)
    net.ensure_host()
    rt = GvisorPodRuntime(work / "pods", images, network=net)
    cold: list[float] = []
    warm: list[float] = []
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    try:
        source = pod("source")
        st = await rt.run_pod_sandbox(source)
        await rt.start_container(source.id, MAIN)
        state = await asyncio.to_thread(heavyimage.ask, st.ip)
        t = time.perf_counter()
        info = await rt.snapshot_pod_sandbox(source.id, sandbox_id(f"bench-snapshot-{os.getpid()}"))
        print(f"snapshot taken in {time.perf_counter() - t:.3f} s: {info.memory_bytes / 2**20:.1f} MiB of memory, "
              f"{info.disk_bytes / 2**20:.1f} MiB of disk; the source's token {state['token']}")
        await rt.remove_pod_sandbox(source.id)

        async def cold_side(i: int) -> None:
            cfg = pod(f"cold-{i}")
            t = time.perf_counter()
            st = await rt.run_pod_sandbox(cfg)
            await rt.start_container(cfg.id, MAIN)
            got = await asyncio.to_thread(heavyimage.ask, st.ip)
            cold.append(time.perf_counter() - t)
            if not got["numpy"] or got["token"] == state["token"]:
                raise SystemExit(f"the cold start did not start afresh: {got}")
            await rt.remove_pod_sandbox(cfg.id)

        async def snapshot_side(i: int) -> None:
            cfg = pod(f"fork-{i}")
            t = time.perf_counter()
            st = await rt.restore_pod_sandbox(cfg, info.id)
            got = await asyncio.to_thread(heavyimage.ask, st.ip)
            warm.append(time.perf_counter() - t)
            if not got["numpy"] or got["token"] != state["token"]:
                raise SystemExit(f"the fork does not hold the snapshot's interpreter: {got}")
            await rt.remove_pod_sandbox(cfg.id)

        for i in range(rounds):
            sides = [cold_side, snapshot_side] if i % 2 == 0 else [snapshot_side, cold_side]
            for side in sides:
                await side(i)
        await rt.remove_snapshot(info.id)
    finally:
        for id in await rt.list_pod_sandboxes():
            await rt.remove_pod_sandbox(id)
        release_root(rt.root)
        net.remove_host()
        for p in NETNS_DIR.glob(f"{NAME}-*"):
            from turbok.runtime import netns

            netns.remove(p)
        shutil.rmtree(work, ignore_errors=True)
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"cold start (run + import numpy + serve): median {c * 1e3:.0f} ms, min {min(cold) * 1e3:.0f}, "
          f"max {max(cold) * 1e3:.0f} ({rounds} rounds)")
    print(f"start from a snapshot (copy disk + restore): median {w * 1e3:.0f} ms, min {min(warm) * 1e3:.0f}, "
          f"max {max(warm) * 1e3:.0f}")
    print(f"ratio {w / c:.2f} (target <= 0.50: {'met' if w <= 0.5 * c else 'NOT met'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    asyncio.run(main(parser.parse_args().rounds))
