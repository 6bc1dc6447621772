"""Benchmark of the gVisor pod runtime against raw runsc, measured in the same run.

1. Pod cold start: ``GvisorPodRuntime.run_pod_sandbox`` + ``start_container`` of a
   fresh single-container pod (its disk, the container's overlay and bundle,
   ``runsc run``) against a raw ``runsc run --detach`` of that container's own
   bundle (prepared by the runtime, untimed) with the same flags, alternating.
   Teardown is untimed and sequential (it would steal CPU).
2. The same start with the sandboxd agent injected and started with the container
   (``turbok.sandboxd.injection``, as for a template that says ``turbok.dev/sandboxd:
   eager``; by default it starts on a sandbox's first call): what the agent adds to a
   start (one ``runsc exec`` of it, its Python's start, until it listens).
3. Exec: ``PodRuntime.exec(["true"])`` (a stream: read to EOF, wait) against a raw
   ``runsc exec ID true`` spawned from the same event loop with the same pipes,
   alternating. (A command through the agent, which costs no ``runsc exec``, is
   measured by bench/router.py.)
4. CPU cost per pod, over start and over stop: user+sys of the runsc clients
   (rusage of children) plus that of the sandbox and gofer processes, read from
   the cpuacct of a cgroup parent of the benchmark's own (hierarchical: it keeps
   what removed children used), so other work on the machine does not count. It
   bounds how fast a warm pool can refill on this machine's cores.

Every measurement runs once per runsc binary (``--runsc``, repeatable: a path, ``default`` for
``TURBOK_RUNSC`` or Debian's runsc, ``shared`` for ../shared/gvisor's current one, ``both`` for these
two), on the platform ``TURBOK_RUNSC_PLATFORM`` picks (``auto``: systrap where the binary has it), and
its raw reference with the same binary and flags; the table has a column group per binary.

Usage (root, base image built: ``turbok image build-base``)::

    .venv/bin/python bench/runtime.py [--starts 20] [--execs 200] [--runsc both]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from turbok.runtime.cri import ContainerConfig, PodSandboxConfig
from turbok.runtime.ids import sandbox_id
from turbok.runtime.images import ImageStore
from turbok.runtime.podlayout import PodDir
from turbok.runtime.pods import release_root
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.runtime.runsc import Runsc, RunscSettings
from turbok.runtime.runsc import choose as choose_runsc
from turbok.sandboxd.injection import agent_injection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.gvisor_binaries

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


async def raw_run(argv: list[str], log: Path) -> float:
    """Seconds one raw runsc command took; output to ``log`` (a detached sandbox keeps what it is given, so
    never a pipe)."""
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
    )
    os.close(out)
    code = await proc.wait()
    dt = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"raw {' '.join(argv[1:])} failed ({code}); see {log}")
    return dt


async def exec_raw(argv: list[str]) -> float:
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await proc.communicate()
    dt = time.perf_counter() - t
    assert proc.returncode == 0, proc.returncode
    return dt


def pod(name: str, *, agent: bool = False) -> PodSandboxConfig:
    # The agent started with the container (a template's ``turbok.dev/sandboxd: eager``; the default starts it on
    # the first call, which a start alone never makes).
    extra: dict[str, object] = {"agent_container": "main", "agent_ports": (8080, 9090),
                                "agent_on_demand": False} if agent else {}
    return PodSandboxConfig(id=sandbox_id(name), name=name, namespace="bench", uid=name, hostname=name,
                            network=False, single_container=True, **extra)  # type: ignore[arg-type]


MAIN = ContainerConfig("main", IMAGE)
_KEYS = ("runtime", "raw", "agent", "client_cpu", "cpu_start", "cpu_stop", "stop_wall", "host_start", "host_stop")


async def bench_pod_start(prt: GvisorPodRuntime, n: int) -> dict[str, list[float]]:
    """Cold start of a single-container pod through the PodRuntime (without and with the sandboxd agent) against
    raw ``runsc run`` of its bundle; CPU per start and stop (see the module docstring)."""
    res: dict[str, list[float]] = {k: [] for k in _KEYS}
    raw_pod = pod("bench-pod-raw")
    await prt.run_pod_sandbox(raw_pod)
    await prt.start_container(raw_pod.id, MAIN)
    await prt.stop_container(raw_pod.id, "main", 0)
    pdir = PodDir(prt.root, raw_pod.id)
    cdir = pdir.container("main")
    cid = json.loads(cdir.record.read_text())["cid"]
    boot_log = pdir.boot_log_of("main", 0)
    raw_argv = prt._cmd("--network=none", "--cpu-num-from-quota", f"--debug-log={boot_log}",
                        "--debug-command=boot", "run", "--detach", f"--bundle={cdir.bundle}", cid)
    raw_log = prt.root / "raw-run.log"

    async def ours(i: int) -> None:
        cfg = pod(f"bench-pod-{i}")
        c0, a0, h0 = children_cpu_s(), cpu_s(), host_busy_s()
        t = time.perf_counter()
        await prt.run_pod_sandbox(cfg)
        await prt.start_container(cfg.id, MAIN)
        res["runtime"].append(time.perf_counter() - t)
        res["client_cpu"].append(children_cpu_s() - c0)
        res["cpu_start"].append(cpu_s() - a0)
        res["host_start"].append(host_busy_s() - h0)
        a0, h0, t = cpu_s(), host_busy_s(), time.perf_counter()
        await prt.remove_pod_sandbox(cfg.id)
        res["stop_wall"].append(time.perf_counter() - t)
        res["cpu_stop"].append(cpu_s() - a0)
        res["host_stop"].append(host_busy_s() - h0)

    async def with_agent(i: int) -> None:
        cfg = pod(f"bench-pod-agent-{i}", agent=True)
        t = time.perf_counter()
        await prt.run_pod_sandbox(cfg)
        status = await prt.start_container(cfg.id, MAIN)
        res["agent"].append(time.perf_counter() - t)
        assert not status.notes, f"the agent did not start: {status.notes}"
        await prt.remove_pod_sandbox(cfg.id)

    async def raw() -> None:
        await prt._runsc("delete", "--force", cid)
        res["raw"].append(await raw_run(raw_argv, raw_log))

    for i in range(n):
        # Rotate the order, so no side always runs right after another's teardown.
        steps: list[Callable[[], Awaitable[None]]] = [functools.partial(ours, i), raw]
        if prt.injection is not None:
            steps.append(functools.partial(with_agent, i))
        for step in steps[i % len(steps):] + steps[:i % len(steps)]:
            await step()
    await prt.remove_pod_sandbox(raw_pod.id)
    return res


async def bench_pod_exec(prt: GvisorPodRuntime, n: int) -> dict[str, list[float]]:
    cfg = pod("bench-pod-exec")
    await prt.run_pod_sandbox(cfg)
    await prt.start_container(cfg.id, MAIN)
    cid = json.loads(PodDir(prt.root, cfg.id).container("main").record.read_text())["cid"]
    raw_argv = prt._cmd("exec", cid, "true")

    async def ours() -> float:
        t = time.perf_counter()
        stream = await prt.exec(cfg.id, "main", ["true"])
        await stream.process.stdout.read()
        code = await stream.process.wait()
        dt = time.perf_counter() - t
        assert code == 0, code
        return dt

    res: dict[str, list[float]] = {"runtime": [], "raw": []}
    try:
        for i in range(n + 10):
            if i % 2:
                a, b = await ours(), await exec_raw(raw_argv)
            else:
                b, a = await exec_raw(raw_argv), await ours()
            if i >= 10:
                res["runtime"].append(a)
                res["raw"].append(b)
    finally:
        await prt.remove_pod_sandbox(cfg.id)
    return res


def cells(ours: list[float], ref: list[float]) -> str:
    p50, r50 = statistics.median(ours), statistics.median(ref)
    return (f"{p50 * 1e3:.1f} ms | {pct(ours, 0.99) * 1e3:.1f} ms | {r50 * 1e3:.1f} ms | "
            f"{pct(ref, 0.99) * 1e3:.1f} ms | {p50 / r50:.3f}")


def binaries(choices: list[str]) -> list[Runsc]:
    """The ``--runsc`` choices as chosen binaries (``both``: Debian's and the shared one)."""
    from tests.gvisor_binaries import debian_runsc, resolve

    paths: list[str] = []
    for choice in choices or ["default"]:
        for one in ("default", "shared") if choice == "both" else (choice,):
            path = resolve(one) or os.environ.get("TURBOK_RUNSC") or debian_runsc() or "runsc"
            if path not in paths:
                paths.append(path)
    return [choose_runsc(RunscSettings.from_env(binary=p)) for p in paths]


async def measure(runsc: Runsc, images: ImageStore, root: Path, starts: int, execs: int
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    prt = GvisorPodRuntime(root / "pods", images, runsc=runsc, cgroup_parent=CGROUP_PARENT)
    prt.injection = agent_injection(images, root / "agent")
    try:
        return await bench_pod_start(prt, starts), await bench_pod_exec(prt, execs)
    finally:
        for id in await prt.list_pod_sandboxes():
            await prt.remove_pod_sandbox(id)
        release_root(root / "pods")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--pods", type=int, dest="starts", default=argparse.SUPPRESS, help="the same as --starts")
    ap.add_argument("--root", type=Path, default=None, help="pod root (default: a temp dir)")
    ap.add_argument("--runsc", action="append", default=[], metavar="PATH|default|shared|both",
                    help="a runsc to measure (repeatable; a column group each; default: TURBOK_RUNSC or Debian's)")
    args = ap.parse_args()
    images = ImageStore()
    images.resolve(IMAGE)  # fails clearly when the base image is not built
    chosen = binaries(args.runsc)
    root = args.root or Path(tempfile.mkdtemp(prefix="turbok-bench-"))
    results = []
    try:
        for i, runsc in enumerate(chosen):
            results.append(await measure(runsc, images, root / f"runsc-{i}", args.starts, args.execs))
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
        remove_parent_cgroup()
    med = statistics.median
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")
    for i, runsc in enumerate(chosen):
        print(f"runsc {chr(65 + i)}: {runsc.path}, version {runsc.version}, platform {runsc.platform}")
    groups = [chr(65 + i) for i in range(len(chosen))]
    print("| what | " + " | ".join(f"{g} p50 | {g} p99 | {g} raw p50 | {g} raw p99 | {g} ratio p50" for g in groups)
          + " |")
    print("|---|" + "---|" * (5 * len(groups)))
    first = results[0][0]
    print(f"| pod cold start: run_pod_sandbox + start_container vs raw `runsc run --detach` (n={len(first['runtime'])}) | "
          + " | ".join(cells(st["runtime"], st["raw"]) for st, _ in results) + " |")
    if all(st["agent"] for st, _ in results):
        print(f"| pod cold start with the sandboxd agent started with it (eager) vs raw `runsc run --detach` (n={len(first['agent'])}) | "
              + " | ".join(cells(st["agent"], st["raw"]) for st, _ in results) + " |")
    print(f"| pod exec `true`: PodRuntime.exec (a stream) vs raw `runsc exec` (n={args.execs}) | "
          + " | ".join(cells(ex["runtime"], ex["raw"]) for _, ex in results) + " |")
    print()
    cores = os.cpu_count() or 1
    for g, (starts, _) in zip(groups, results, strict=True):
        per_claim = med(starts["cpu_start"]) + med(starts["cpu_stop"])
        print(f"{g}: CPU per start (p50) {med(starts['cpu_start']) * 1e3:.0f} ms (runsc clients "
              f"{med(starts['client_cpu']) * 1e3:.0f} ms, the rest sandbox+gofer) over "
              f"{med(starts['runtime']) * 1e3:.0f} ms wall; per stop {med(starts['cpu_stop']) * 1e3:.0f} ms over "
              f"{med(starts['stop_wall']) * 1e3:.0f} ms wall; machine busy (a ceiling) start "
              f"{med(starts['host_start']) * 1e3:.0f} ms, stop {med(starts['host_stop']) * 1e3:.0f} ms")
        print(f"{g}: => start+stop costs {per_claim * 1e3:.0f} ms of CPU: at most {cores / per_claim:.1f} "
              f"pods/s refilled on {cores} cores if nothing else ran")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
