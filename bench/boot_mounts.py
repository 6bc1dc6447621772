"""A boot's cost against the number of pods' mounts on the host, against raw runsc in the same run (issue 16).

Each running pod has about three mounts on the host (its disk, its container's overlay, its network
namespace's file), and every ``runsc run`` copies the mount table it starts in twice (its gofer's and its
sandbox's namespaces). turbok boots from a pristine mount namespace (``turbok.runtime.bootns``) holding only
the booting pod's tree. This puts M stand-in pod mounts on the host (bind mounts below the pods' directory,
made after the pristine namespace, as a running pod's are) and at each M times, alternating, ``--boots``
cold starts of a single-container pod (``run_pod_sandbox`` + ``start_container``):

- turbok: as it runs (from the pristine namespace);
- turbok from the host's namespace (the pristine namespace turned off: how it booted before);
- raw: ``runsc run --detach`` of a bundle the runtime prepared (untimed), from the host's namespace.

Teardown is untimed. Prints the medians and the ratios to raw. Usage (root, base image built)::

    .venv/bin/python bench/boot_mounts.py [--mounts 0 3000 5400] [--boots 10]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runtime import MAIN, binaries, pod, raw_run  # noqa: E402
from turbok.runtime import mounts  # noqa: E402
from turbok.runtime.images import ImageStore  # noqa: E402
from turbok.runtime.podlayout import PodDir  # noqa: E402
from turbok.runtime.pods import release_root  # noqa: E402
from turbok.runtime.pods_gvisor import GvisorPodRuntime  # noqa: E402


def host_mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


async def bench(prt: GvisorPodRuntime, counts: list[int], boots: int) -> list[tuple[int, int, dict[str, float]]]:
    stand_ins = prt.root / ".bench-mounts"
    source = prt.root / ".bench-source"
    made: list[Path] = []
    ref = pod("bench-raw")
    await prt.run_pod_sandbox(ref)  # the pristine namespace is made at this first boot
    await prt.start_container(ref.id, MAIN)
    await prt.stop_container(ref.id, "main", 0)
    cdir = PodDir(prt.root, ref.id).container("main")
    cid = json.loads(cdir.record.read_text())["cid"]
    raw_argv = prt._cmd("--network=none", "--cpu-num-from-quota", "run", "--detach", f"--bundle={cdir.bundle}", cid)
    rows = []
    serial = 0

    async def ours(kind: str, times: dict[str, list[float]]) -> None:
        nonlocal serial
        serial += 1
        cfg = pod(f"bench-{serial}")
        prt.boot_namespace.unavailable = None if kind == "pristine" else "turned off by the benchmark"
        t = time.perf_counter()
        await prt.run_pod_sandbox(cfg)
        await prt.start_container(cfg.id, MAIN)
        times[kind].append(time.perf_counter() - t)
        prt.boot_namespace.unavailable = None
        await prt.remove_pod_sandbox(cfg.id)

    async def raw(times: dict[str, list[float]]) -> None:
        await prt._runsc("delete", "--force", cid)
        times["raw"].append(await raw_run(raw_argv, prt.root / "raw.log"))
        await prt._runsc("delete", "--force", cid)

    try:
        source.mkdir(exist_ok=True)
        for count in counts:
            while len(made) < count:
                target = stand_ins / str(len(made))
                target.mkdir(parents=True, exist_ok=True)
                mounts.mount(str(source), target, None, mounts.MS_BIND)
                made.append(target)
            times: dict[str, list[float]] = {"pristine": [], "host": [], "raw": []}
            steps = [functools.partial(ours, "pristine", times), functools.partial(ours, "host", times),
                     functools.partial(raw, times)]
            for i in range(boots):
                for step in steps[i % 3:] + steps[:i % 3]:
                    await step()
            medians = {k: statistics.median(v) for k, v in times.items()}
            rows.append((count, host_mounts(), medians))
            print(f"{count} stand-in mounts ({rows[-1][1]} on the host): " + ", ".join(
                f"{k} {v * 1e3:.1f} ms" for k, v in medians.items()), flush=True)
    finally:
        for target in reversed(made):
            mounts.unmount(target)
        await prt.remove_pod_sandbox(ref.id)
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mounts", type=int, nargs="+", default=[0, 3000, 5400])
    ap.add_argument("--boots", type=int, default=10)
    ap.add_argument("--runsc", action="append", default=[], metavar="PATH|default|shared|both")
    args = ap.parse_args()
    for runsc in binaries(args.runsc):
        with tempfile.TemporaryDirectory(prefix="turbok-bench-mounts-") as tmp:
            prt = GvisorPodRuntime(Path(tmp) / "pods", ImageStore(), runsc=runsc)
            try:
                rows = await bench(prt, sorted(args.mounts), args.boots)
            finally:
                release_root(Path(tmp) / "pods")
        print(f"\nrunsc {runsc.version} ({runsc.platform}), medians of {args.boots} cold starts each\n")
        print("| pods' mounts on the host | turbok (pristine namespace) | turbok from the host's namespace | "
              "raw `runsc run` | turbok / raw | from the host's / raw |")
        print("|---|---|---|---|---|---|")
        for count, total, m in rows:
            print(f"| {count} ({total} in all) | {m['pristine'] * 1e3:.1f} ms | {m['host'] * 1e3:.1f} ms | "
                  f"{m['raw'] * 1e3:.1f} ms | {m['pristine'] / m['raw']:.2f} | {m['host'] / m['raw']:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
