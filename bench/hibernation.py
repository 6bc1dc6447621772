"""Benchmark of hibernation (suspend with memory) against raw runsc, measured in the same run.

Each round, two sandboxes of the base image hold the same state (a file on their tmpfs and
a sleeping Python process). One is hibernated and resumed through ``RunscRuntime``
(``hibernate``: ``runsc checkpoint`` + ``delete`` + unmount + marker; ``start``:
spec check, overlay mount, ``runsc restore``, image deleted); the other by hand with the
same runsc commands and flags (``checkpoint`` + ``delete``; ``restore --detach``). The two
sides alternate and swap order every round. The resumed sandbox must still hold its state.
For scale, the run also times a cold ``RunscRuntime.start``.

Usage (root, base image built: ``turbok image build-base``)::

    .venv/bin/python bench/hibernation.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime as rt_bench  # noqa: E402  (bench/runtime.py: specs, flags, percentiles)

from turbok.runtime import overlay  # noqa: E402
from turbok.runtime.gvisor import RunscRuntime  # noqa: E402
from turbok.runtime.images import ImageStore  # noqa: E402
from turbok.runtime.layout import SandboxDir  # noqa: E402
from turbok.runtime.local import release_root  # noqa: E402

REMEMBER = ("echo in-memory > /dev/shm/note; (python3 -c 'import time; time.sleep(100000)' >/dev/null 2>&1 &); "
            "sleep 0.3")
RECALL = "cat /dev/shm/note; ps -eo args | grep -q '[t]ime.sleep(100000)' && echo alive"


async def check(rt: RunscRuntime, id: str) -> None:
    r = await rt.exec(id, ["sh", "-c", RECALL])
    if r.stdout.decode().split() != ["in-memory", "alive"]:
        raise SystemExit(f"sandbox {id} lost its state across hibernation: {r.stdout!r}")


async def main(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-hibernation-"))
    rt = RunscRuntime(work / "sandboxes", ImageStore())
    image = rt.images.resolve(rt_bench.IMAGE)
    ours, raw = rt_bench.spec("bench-hib-ours"), rt_bench.spec("bench-hib-raw")
    res: dict[str, list[float]] = {k: [] for k in ("hibernate", "resume", "raw_ckpt", "raw_restore", "cold")}
    try:
        for s in (ours, raw):
            await rt.start(s)

        async def turbok_side() -> None:
            await rt.exec(ours.id, ["sh", "-c", REMEMBER])
            t = time.perf_counter()
            await rt.hibernate(ours.id)
            res["hibernate"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await rt.start(ours)
            res["resume"].append(time.perf_counter() - t)
            await check(rt, ours.id)

        async def raw_side() -> None:
            sdir = SandboxDir(rt.root, raw.id)
            await rt.exec(raw.id, ["sh", "-c", REMEMBER])
            img = work / "raw-image"
            shutil.rmtree(img, ignore_errors=True)
            img.mkdir()
            ckpt = await rt_bench.raw_run(rt._cmd("checkpoint", f"--image-path={img}", raw.id), sdir)
            ckpt += await rt_bench.raw_run(rt._cmd("delete", "--force", raw.id), sdir)
            res["raw_ckpt"].append(ckpt)
            overlay.unmount(sdir.rootfs)
            overlay.mount_overlay(lower=image.rootfs, upper=sdir.upper, work=sdir.ovwork, target=sdir.rootfs)
            restore = rt_bench.run_flags(rt, sdir, "restore", f"--image-path={img}")
            res["raw_restore"].append(await rt_bench.raw_run(restore, sdir))
            await check(rt, raw.id)

        for i in range(rounds):
            first, second = (turbok_side, raw_side) if i % 2 == 0 else (raw_side, turbok_side)
            await first()
            await second()
            # The state is kept (and re-made) each round: processes pile up by one per round.
        for i in range(min(rounds, 5)):
            s = rt_bench.spec(f"bench-hib-cold-{i}")
            t = time.perf_counter()
            await rt.start(s)
            res["cold"].append(time.perf_counter() - t)
            await rt.remove(s.id)
    finally:
        for s in (ours, raw):
            await rt.remove(s.id)
        release_root(rt.root)
        shutil.rmtree(work, ignore_errors=True)

    def row(what: str, key: str, ref: str | None = None) -> None:
        p50, p99 = statistics.median(res[key]) * 1e3, rt_bench.pct(res[key], 0.99) * 1e3
        if ref is None:
            print(f"| {what} | {p50:.1f} / {p99:.1f} ms | | |")
            return
        r50 = statistics.median(res[ref]) * 1e3
        print(f"| {what} | {p50:.1f} / {p99:.1f} ms | {r50:.1f} / {rt_bench.pct(res[ref], 0.99) * 1e3:.1f} ms "
              f"| {p50 / r50:.2f} |")

    print(f"rounds: {rounds}, runsc: {rt.runsc}")
    print("| figure | p50 / p99 | raw runsc p50 / p99 | ratio p50 |")
    print("|---|---|---|---|")
    row("hibernate (`RunscRuntime.hibernate`) vs `runsc checkpoint` + `delete`", "hibernate", "raw_ckpt")
    row("resume (`RunscRuntime.start` restoring) vs `runsc restore --detach`", "resume", "raw_restore")
    row("for scale: cold `RunscRuntime.start` of a new sandbox", "cold")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    asyncio.run(main(parser.parse_args().rounds))
