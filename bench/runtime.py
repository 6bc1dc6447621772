"""Benchmark of the gVisor runtime against raw runsc, measured in the same run.

1. Cold start: ``RunscRuntime.start`` of a fresh sandbox (new directory, image
   resolution, its own disk made and mounted, overlay mount, config.json,
   ``runsc run --detach``) against a raw ``runsc run --detach`` of an already
   prepared bundle (disk and overlay mounted, untimed) with the same flags,
   alternating. Teardown is untimed and sequential (it would steal CPU).
2. Exec: ``RunscRuntime.exec(id, ["true"])`` against a raw ``runsc exec ID true``
   spawned from the same event loop with the same pipes, alternating.
3. CPU cost per sandbox, over start and over stop: user+sys of the runsc
   clients (rusage of children) plus that of the sandbox and gofer processes,
   read from the cpuacct of a cgroup parent of the benchmark's own (hierarchical:
   it keeps what removed children used), so other work on the machine does not
   count. It bounds how fast a warm pool can refill on this machine's cores.

Usage (root, base image built: ``turbok image build-base``)::

    .venv/bin/python bench/runtime.py [--starts 20] [--execs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from turbok.runtime import overlay
from turbok.runtime.base import SandboxSpec, sandbox_id
from turbok.runtime.disk import bounds
from turbok.runtime.gvisor import RunscRuntime
from turbok.runtime.images import ImageStore
from turbok.runtime.layout import SandboxDir
from turbok.runtime.local import release_root

IMAGE = "python-runtime-sandbox"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


CGROUP_PARENT = f"/turbok-bench-{os.getpid()}"
_CPUACCT = Path("/sys/fs/cgroup/cpuacct") / CGROUP_PARENT.strip("/")


def sandboxes_cpu_s() -> float:
    """CPU of every sandbox and gofer the benchmark ran, removed ones included (cgroup v1)."""
    try:
        return int((_CPUACCT / "cpuacct.usage").read_text()) / 1e9
    except OSError:
        return float("nan")


def cpu_s() -> float:
    return children_cpu_s() + sandboxes_cpu_s()


def host_busy_s() -> float:
    """Busy CPU time of the whole machine (/proc/stat): a ceiling, counting all other work too."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def remove_parent_cgroup() -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        d = controller / CGROUP_PARENT.strip("/")
        if d.is_dir():
            d.rmdir()


def spec(name: str) -> SandboxSpec:
    return SandboxSpec(id=sandbox_id(name), hostname=name, image=IMAGE)


def run_flags(rt: RunscRuntime, sdir: SandboxDir, *verb: str) -> list[str]:
    """The exact command line RunscRuntime.start uses (see gvisor.py); ``verb`` defaults to ``run``."""
    return rt._cmd(
        "--network=none",
        "--cpu-num-from-quota",
        f"--debug-log={sdir.boot_log}",
        "--debug-command=boot",
        *(verb or ("run",)),
        "--detach",
        f"--bundle={sdir.path}",
        sdir.id,
    )


async def raw_run(argv: list[str], sdir: SandboxDir) -> float:
    """Seconds one raw runsc command took; output to the sandbox's stdout.log (a detached
    sandbox keeps what it is given, so never a pipe)."""
    out = os.open(sdir.stdout_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
    )
    os.close(out)
    code = await proc.wait()
    dt = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"raw {' '.join(argv[1:])} failed ({code}); see {sdir.stdout_log}")
    return dt


async def bench_start(rt: RunscRuntime, n: int) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {k: [] for k in ("runtime", "raw", "client_cpu", "cpu_start", "cpu_stop", "stop_wall", "host_start", "host_stop")}
    # The raw side's bundle: made once by the runtime, then run by hand.
    raw_spec = spec("bench-raw")
    await rt.start(raw_spec)
    await rt.stop(raw_spec.id)
    raw_dir = SandboxDir(rt.root, raw_spec.id)
    image = rt.images.resolve(IMAGE)

    async def ours(i: int) -> None:
        s = spec(f"bench-rt-{i}")
        c0, a0, h0 = children_cpu_s(), cpu_s(), host_busy_s()
        t = time.perf_counter()
        await rt.start(s)
        res["runtime"].append(time.perf_counter() - t)
        res["client_cpu"].append(children_cpu_s() - c0)
        res["cpu_start"].append(cpu_s() - a0)
        res["host_start"].append(host_busy_s() - h0)
        a0, h0, t = cpu_s(), host_busy_s(), time.perf_counter()
        await rt.stop(s.id)
        res["stop_wall"].append(time.perf_counter() - t)
        res["cpu_stop"].append(cpu_s() - a0)
        res["host_stop"].append(host_busy_s() - h0)
        await rt.remove(s.id)

    async def raw() -> None:
        rt._prepare_disk(raw_dir, raw_spec, bounds(None))
        overlay.mount_overlay(lower=image.rootfs, upper=raw_dir.upper, work=raw_dir.ovwork, target=raw_dir.rootfs)
        res["raw"].append(await raw_run(run_flags(rt, raw_dir), raw_dir))
        await rt.stop(raw_spec.id)

    for i in range(n):
        # Alternate the order, so neither side always runs right after the other's teardown.
        if i % 2:
            await raw()
            await ours(i)
        else:
            await ours(i)
            await raw()
    await rt.remove(raw_spec.id)
    return res


async def exec_raw(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await proc.communicate()
    dt = time.perf_counter() - t
    assert proc.returncode == 0, proc.returncode
    return dt


async def exec_ours(rt: RunscRuntime, id: str) -> float:
    t = time.perf_counter()
    result = await rt.exec(id, ["true"])
    dt = time.perf_counter() - t
    assert result.exit_code == 0, result
    return dt


async def bench_exec(rt: RunscRuntime, n: int) -> dict[str, list[float]]:
    s = spec("bench-exec")
    await rt.start(s)
    res: dict[str, list[float]] = {"runtime": [], "raw": []}
    raw_argv = rt._cmd("exec", s.id, "true")
    try:
        for i in range(n + 10):
            # Alternate which goes first, so neither pays for the other's teardown inside the sandbox.
            if i % 2:
                ours, raw = await exec_ours(rt, s.id), await exec_raw(raw_argv)
            else:
                raw, ours = await exec_raw(raw_argv), await exec_ours(rt, s.id)
            if i >= 10:  # warm-up
                res["raw"].append(raw)
                res["runtime"].append(ours)
    finally:
        await rt.remove(s.id)
    return res


def line(name: str, ours: list[float], ref: list[float]) -> str:
    p50, r50 = statistics.median(ours), statistics.median(ref)
    return (
        f"| {name} | {p50 * 1e3:.1f} ms | {pct(ours, 0.99) * 1e3:.1f} ms | "
        f"{r50 * 1e3:.1f} ms | {pct(ref, 0.99) * 1e3:.1f} ms | {p50 / r50:.3f} |"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--root", type=Path, default=None, help="sandbox root (default: a temp dir)")
    args = ap.parse_args()
    images = ImageStore()
    images.resolve(IMAGE)  # fails clearly when the base image is not built
    root = args.root or Path(tempfile.mkdtemp(prefix="turbok-bench-"))
    rt = RunscRuntime(root, images, cgroup_parent=CGROUP_PARENT)
    try:
        starts = await bench_start(rt, args.starts)
        execs = await bench_exec(rt, args.execs)
    finally:
        for id in await rt.list():
            await rt.remove(id)
        release_root(root)
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
        remove_parent_cgroup()
    med = statistics.median
    print(f"runsc: {shutil.which('runsc')}, cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    print("| what | p50 | p99 | raw p50 | raw p99 | ratio p50 |")
    print("|---|---|---|---|---|---|")
    print(line(f"cold start: RunscRuntime.start vs raw `runsc run --detach` (n={args.starts})", starts["runtime"], starts["raw"]))
    print(line(f"exec `true`: RunscRuntime.exec vs raw `runsc exec` (n={args.execs})", execs["runtime"], execs["raw"]))
    print()
    print(f"CPU per start (p50): {med(starts['cpu_start']) * 1e3:.0f} ms (runsc run client "
          f"{med(starts['client_cpu']) * 1e3:.0f} ms, the rest sandbox+gofer) over {med(starts['runtime']) * 1e3:.0f} ms wall")
    print(f"CPU per stop (p50): {med(starts['cpu_stop']) * 1e3:.0f} ms over {med(starts['stop_wall']) * 1e3:.0f} ms wall")
    print(f"Whole machine busy time meanwhile (p50; a ceiling, includes any other work): start "
          f"{med(starts['host_start']) * 1e3:.0f} ms, stop {med(starts['host_stop']) * 1e3:.0f} ms; "
          f"load average {os.getloadavg()[0]:.2f}")
    per_claim = med(starts["cpu_start"]) + med(starts["cpu_stop"])
    cores = os.cpu_count() or 1
    print(f"=> start+stop costs {per_claim * 1e3:.0f} ms of CPU: at most {cores / per_claim:.1f} "
          f"sandboxes/s refilled on {cores} cores if nothing else ran")


if __name__ == "__main__":
    asyncio.run(main())
