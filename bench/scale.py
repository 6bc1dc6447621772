"""Boot rate against the number of sandboxes, and density, each against raw runsc in the same run (issue 16).

A warm pool of ``turbok serve`` (as a user runs it) grows in steps to ``--max``
sandboxes. At each measured count C (``--at``, default 0, 450 and 900) the pool
holds C Ready sandboxes, and two things are timed one after the other:

1. raw: ``--window`` (100) ``runsc run --detach`` at the node's concurrency (its
   start slots: the CPUs) of bundles the pod runtime prepared untimed for Pods like
   the pool's (same image and command, limits, network namespace on a pod network of
   the benchmark's own, runsc flags); then removed, untimed;
2. turbok: the pool's ``replicas`` raised from C to C + window, timed from the patch
   to the last of the new Sandboxes reporting Ready on a watch (the pool controller
   makes Sandboxes, the sandbox controller Pods, the node binds and boots them).

Rates are sandboxes per second over each window; the ratio is raw rate / turbok's.
Between windows the pool grows to the next count untimed. At the top (``--max``)
the machine holds that many idle sandboxes: reported per sandbox are the host's
memory (``MemAvailable`` fallen since before the first, over the count), against
one raw idle sandbox (the raw batch of the first window, idle 10 s, the same
reading); the API's GET and LIST p99 with all of them up; the control plane's
RSS and CPU (``/proc/PID/stat``) and the whole machine's CPU over ``--idle``
seconds with nothing asked of it.

The sandboxes run the base image's shell asleep (``--command``; the
python-runtime-sandbox image's own command starts an HTTP server in Python in
each, about twice the memory). Everything is removed at the end: the pool set to
0 (the node tears down), then ``turbok serve`` stopped.

Usage (root, runsc, nft, base image built; ``scripts/setup.sh`` raises the host limits)::

    .venv/bin/python bench/scale.py [--max 1000] [--at 0 450 900] [--window 100] [--idle 30] [--runsc both]

The default stops at 1,000: the pod network is one Linux bridge, which takes 1,023 ports (the kernel's
BR_MAX_PORTS), so one machine holds at most 1,023 networked Pods today (``turbok.node.hostroom``); 1,800
needs the pod network to shard its bridge or route veths without one, and more memory than this 24 GiB
machine has: a raw networked sandbox takes about 16 MiB of host memory by itself (bench/RESULTS.md, "Scale").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.claims import EXT, IMAGE, Api, pct, raw_run, remove_half_made, remove_raw_cgroups, unmount_under  # noqa: E402
from bench.runtime import binaries  # noqa: E402
from tests.conftest import ControlPlaneProcess  # noqa: E402
from turbok.api.limitrange import BUILTIN_DEFAULT_LIMITS  # noqa: E402
from turbok.api.quantity import cpu_millis, to_bytes  # noqa: E402
from turbok.embedded.daemon import stop_sandboxes  # noqa: E402
from turbok.home import Home  # noqa: E402
from turbok.runtime.cri import ContainerConfig, PodSandboxConfig  # noqa: E402
from turbok.runtime.ids import sandbox_id  # noqa: E402
from turbok.runtime.images import ImageStore  # noqa: E402
from turbok.runtime.network import PodNetwork  # noqa: E402
from turbok.runtime.pods_gvisor import GvisorPodRuntime  # noqa: E402

NS = "bench-scale"
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
#: The raw batch's own cgroup parent and network (the control plane's pods are under /turbok, on turbok0).
RAW_CGROUP = "/turbok-bench-scale"
POD_CGROUP = "/turbok"
RAW_NETWORK = ("tkbsc", "10.241.80.0/22")


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        number, *unit = value.split()
        fields[name] = int(number) * (1024 if unit == ["kB"] else 1)
    return fields


def mem_available() -> int:
    return meminfo()["MemAvailable"]


#: Where an idle sandbox's host memory goes, beyond what its cgroup is charged (per sandbox, both runs).
MEMINFO_FIELDS = ("MemFree", "AnonPages", "Shmem", "Cached", "Buffers", "SReclaimable", "SUnreclaim",
                  "KernelStack", "PageTables", "Percpu", "VmallocUsed")


def meminfo_change(before: dict[str, int], after: dict[str, int], count: int) -> dict[str, float]:
    """MiB per sandbox each field changed by (MemFree: fallen, the rest: grown)."""
    sign = {"MemFree": -1}
    return {f: sign.get(f, 1) * (after.get(f, 0) - before.get(f, 0)) / count / 2**20 for f in MEMINFO_FIELDS}


def cpu_ticks(pid: int | None = None) -> float:
    """Seconds of CPU: a process's (user + system, its threads too), or the machine's busy time."""
    hz = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz
    cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(cpu) - cpu[3] - cpu[4]) / hz  # all but idle and iowait


def cgroup_memory(parent: str) -> int:
    """Memory charged to a cgroup and its children (v1 ``memory.usage_in_bytes``, v2 ``memory.current``)."""
    for path in (f"/sys/fs/cgroup/memory{parent}/memory.usage_in_bytes", f"/sys/fs/cgroup{parent}/memory.current"):
        with contextlib.suppress(OSError):
            return int(Path(path).read_text())
    return 0


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class ReadyCount(threading.Thread):
    """One watch on the namespace's Sandboxes: when each first reports Ready=True."""

    def __init__(self, api: Api) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.ready: dict[str, float] = {}
        self.started = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the control plane stops at the end
            self._watch()

    def _watch(self) -> None:
        path = f"/apis/agents.x-k8s.io/v1beta1/namespaces/{NS}/sandboxes"
        with httpx.Client(**self.api.kw, timeout=None) as http:
            rv = http.get(path).json()["metadata"]["resourceVersion"]
            with http.stream("GET", path, params={"watch": "true", "resourceVersion": rv,
                                                  "allowWatchBookmarks": "true"}) as response:
                self.started.set()
                for line in response.iter_lines():
                    now = time.perf_counter()
                    event = json.loads(line)
                    obj = event["object"]
                    conds = (obj.get("status") or {}).get("conditions") or []
                    with self.changed:
                        if event["type"] == "DELETED":
                            self.ready.pop(obj["metadata"]["name"], None)
                        elif any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                            self.ready.setdefault(obj["metadata"]["name"], now)
                        self.changed.notify_all()

    def wait_count(self, n: int, timeout: float, progress: str = "") -> float:
        """Until ``n`` are Ready: the time the n-th became Ready."""
        deadline = time.perf_counter() + timeout
        shown = -1
        with self.changed:
            while len(self.ready) < n:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise SystemExit(f"scale: only {len(self.ready)} of {n} sandboxes Ready in {timeout:.0f} s")
                self.changed.wait(min(left, 1.0))
                if progress and len(self.ready) // 10 != shown:
                    shown = len(self.ready) // 10
                    print(f"\r  {progress}: {len(self.ready)}/{n} Ready", end="", flush=True)
            if progress:
                print("\r" + " " * 70 + "\r", end="")
            return sorted(self.ready.values())[n - 1]


class RawBatch:
    """``n`` bundles the pod runtime prepared (untimed) for Pods like the pool's; timed: ``runsc run --detach``
    of each, ``slots`` at a time."""

    def __init__(self, work: Path, command: list[str]) -> None:
        name, cidr = RAW_NETWORK
        self.network = PodNetwork(work / "net", cidr=cidr, name=name, shared_dir=work / "net-shared")
        self.runtime = GvisorPodRuntime(work / "raw", ImageStore(), cgroup_parent=RAW_CGROUP, network=self.network)
        self.cpu, self.memory = cpu_millis(BUILTIN_DEFAULT_LIMITS["cpu"]), to_bytes(BUILTIN_DEFAULT_LIMITS["memory"])
        self.command = command
        self.out = work / "raw.out"
        self.runs: list[tuple[str, list[str]]] = []  # (pod id, argv)
        self.serial = 0

    async def prepare(self, n: int, slots: int) -> None:
        await asyncio.to_thread(self.network.ensure_host)
        limit = asyncio.Semaphore(slots)

        async def one(i: int) -> tuple[str, list[str]]:
            async with limit:
                self.serial += 1
                pod = PodSandboxConfig(id=sandbox_id(f"bench-scale-raw-{os.getpid()}-{self.serial}"),
                                       name=f"raw-{i}", namespace="bench", uid=f"raw-{self.serial}",
                                       hostname=f"raw-{i}", cpu_millis=self.cpu, memory_bytes=self.memory,
                                       network=True, single_container=True)
                await self.runtime.run_pod_sandbox(pod)
                await self.runtime.start_container(pod.id, ContainerConfig(
                    "main", IMAGE, command=self.command, cpu_millis=self.cpu, memory_bytes=self.memory))
                await self.runtime.stop_container(pod.id, "main", 0)
                cid, argv = raw_run(self.runtime, self.network, pod.id)
                await self.runtime._runsc("delete", "--force", cid)
                return pod.id, argv

        self.runs = list(await asyncio.gather(*(one(i) for i in range(n))))

    async def run(self, slots: int) -> float:
        """Seconds for every ``runsc run --detach``, ``slots`` at a time."""
        limit = asyncio.Semaphore(slots)

        async def one(argv: list[str]) -> None:
            async with limit:
                out = os.open(self.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
                proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                            stderr=out, start_new_session=True)
                os.close(out)  # a detached sandbox keeps what it is given: never a pipe
                if await proc.wait() != 0:
                    raise SystemExit(f"raw runsc run failed; see {self.out}")

        for pod_id, _ in self.runs:  # untimed, as the node's own before each boot (see ``raw_run``)
            await asyncio.to_thread(self.network.setup, pod_id)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(argv) for _, argv in self.runs))
        return time.perf_counter() - t0

    async def remove(self) -> None:
        limit = asyncio.Semaphore(16)

        async def one(pod_id: str) -> None:
            async with limit:
                await self.runtime.remove_pod_sandbox(pod_id)

        await asyncio.gather(*(one(pod_id) for pod_id, _ in self.runs))
        self.runs = []


def api_latency(api: Api, n: int) -> dict[str, float]:
    """p50/p99 ms of GETs of single Sandboxes and of LISTs of 100 (one connection, one after the other)."""
    base = f"/apis/agents.x-k8s.io/v1beta1/namespaces/{NS}/sandboxes"
    names = [s["metadata"]["name"] for s in api.http.get(base, params={"limit": n}).json()["items"]]
    gets, lists = [], []
    for i in range(n):
        t = time.perf_counter()
        api.http.get(f"{base}/{names[i % len(names)]}").raise_for_status()
        gets.append((time.perf_counter() - t) * 1e3)
        if i % 10 == 0:
            t = time.perf_counter()
            api.http.get(base, params={"limit": 100}).raise_for_status()
            lists.append((time.perf_counter() - t) * 1e3)
    return {"get_p50": statistics.median(gets), "get_p99": pct(gets, 0.99),
            "list_p50": statistics.median(lists), "list_p99": pct(lists, 0.99)}


def set_replicas(api: Api, n: int) -> None:
    api.http.patch(f"{EXT}/{NS}/sandboxwarmpools/pool", json={"spec": {"replicas": n}},
                   headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()


async def bench(api: Api, cp: ControlPlaneProcess, work: Path, args: argparse.Namespace) -> None:
    slots = os.cpu_count() or 1
    base = meminfo()
    base_mem = base["MemAvailable"]
    api.post("/api/v1/namespaces", {"metadata": {"name": NS}})
    api.post(f"{EXT}/{NS}/sandboxtemplates", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate", "metadata": {"name": "idle"},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": IMAGE, "command": args.command}]}}}})
    api.post(f"{EXT}/{NS}/sandboxwarmpools", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool", "metadata": {"name": "pool"},
        "spec": {"replicas": 0, "sandboxTemplateRef": {"name": "idle"}}})
    watch = ReadyCount(api)
    watch.start()
    watch.started.wait(10)
    raw = RawBatch(work / "raw", args.command)
    raw_idle_mib = prepared_mib = raw_cgroup_mib = float("nan")
    raw_fields: dict[str, float] = {}
    rows = []
    count = 0
    for at in args.at:
        if at > count:
            set_replicas(api, at)
            await asyncio.to_thread(watch.wait_count, at, at * 2 + 120, f"growing the pool to {at} (untimed)")
            count = at
        unprepared = mem_available()
        await raw.prepare(args.window, slots)
        await asyncio.sleep(2)
        before_fields = meminfo()
        before = before_fields["MemAvailable"]
        if raw_idle_mib != raw_idle_mib:
            prepared_mib = (unprepared - before) / args.window / 2**20
        raw_seconds = await raw.run(slots)
        if raw_idle_mib != raw_idle_mib:  # the first batch: one raw idle sandbox's memory
            await asyncio.sleep(10)
            after_fields = meminfo()
            raw_idle_mib = (before - after_fields["MemAvailable"]) / args.window / 2**20
            raw_fields = meminfo_change(before_fields, after_fields, args.window)
            raw_cgroup_mib = cgroup_memory(RAW_CGROUP) / args.window / 2**20
        await raw.remove()
        await asyncio.sleep(2)
        t0 = time.perf_counter()
        set_replicas(api, at + args.window)
        done = await asyncio.to_thread(watch.wait_count, at + args.window, 600, f"pool {at} -> {at + args.window}")
        ours, theirs = args.window / (done - t0), args.window / raw_seconds
        count = at + args.window
        rows.append((at, ours, theirs))
        print(f"| {at}-{at + args.window} | {ours:.2f}/s | raw runsc run {theirs:.2f}/s | ratio {theirs / ours:.2f} |",
              flush=True)
    if args.max > count:
        set_replicas(api, args.max)
        await asyncio.to_thread(watch.wait_count, args.max, args.max * 2 + 120,
                                f"growing the pool to {args.max} (untimed)")
        count = args.max
    await asyncio.sleep(10)
    top = meminfo()
    pool_mib = (base_mem - top["MemAvailable"]) / count / 2**20
    pool_fields = meminfo_change(base, top, count)
    pool_cgroup_mib = cgroup_memory(POD_CGROUP) / count / 2**20
    latency = api_latency(api, 500)
    assert cp.proc is not None
    pid = cp.proc.pid
    if args.hold:
        print(f"holding {count} idle sandboxes for {args.hold:.0f} s (control plane pid {pid})", flush=True)
        await asyncio.sleep(args.hold)
    cp0, host0, t0 = cpu_ticks(pid), cpu_ticks(), time.perf_counter()
    await asyncio.sleep(args.idle)
    took = time.perf_counter() - t0
    cp_cpu, host_cpu = (cpu_ticks(pid) - cp0) / took, (cpu_ticks() - host0) / took
    print(f"| {count} idle | host memory {pool_mib:.1f} MiB per sandbox | raw idle runsc {raw_idle_mib:.1f} MiB "
          f"| ratio {pool_mib / raw_idle_mib:.2f} | of which a prepared pod (disk, network namespace, bundle) "
          f"{prepared_mib:.1f} MiB |")
    print(f"| {count} idle | charged to the pods' cgroups {pool_cgroup_mib:.1f} MiB per sandbox | raw "
          f"{raw_cgroup_mib:.1f} MiB | ratio {pool_cgroup_mib / raw_cgroup_mib:.2f} |")
    print(f"| {count} idle | /proc/meminfo per sandbox, MiB (turbok / raw): " + ", ".join(
        f"{f} {pool_fields[f]:.2f} / {raw_fields.get(f, float('nan')):.2f}" for f in MEMINFO_FIELDS) + " |")
    print(f"| {count} idle | API GET p50 {latency['get_p50']:.1f} ms p99 {latency['get_p99']:.1f} ms, LIST of 100 "
          f"p50 {latency['list_p50']:.1f} ms p99 {latency['list_p99']:.1f} ms |")
    print(f"| {count} idle | control plane RSS {rss(pid) / 2**20:.0f} MiB, CPU {cp_cpu * 100:.1f} % of a core; "
          f"whole machine {host_cpu * 100:.1f} % of a core over {took:.0f} s |", flush=True)
    t0 = time.perf_counter()
    set_replicas(api, 0)
    with watch.changed:
        watch.changed.wait_for(lambda: not watch.ready, timeout=1200)
    print(f"| {count} removed | Sandboxes gone in {time.perf_counter() - t0:.0f} s |", flush=True)
    await asyncio.to_thread(raw.network.remove_host)  # the raw batch's bridge and tables (its pods are gone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=int, default=1000)
    parser.add_argument("--at", type=int, nargs="+", default=[0, 450, 900])
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--command", nargs="+", default=SLEEPER)
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to wait at the top (to profile)")
    parser.add_argument("--runsc", action="append", default=[], metavar="PATH|default|shared|both",
                        help="the runsc of the pods and of the raw batches (repeatable: one whole run each)")
    args = parser.parse_args()
    for runsc in binaries(args.runsc):
        os.environ["TURBOK_RUNSC"] = runsc.path  # turbok serve and the raw batches' runtime take it from there
        one_run(args)


def one_run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-scale-"))
    cp = ControlPlaneProcess(work / "home").start()
    api = Api(cp)
    try:
        print(f"turbok serve at {cp.api_url} (home {cp.home}); {os.cpu_count()} CPUs; runsc "
              f"{os.environ['TURBOK_RUNSC']}", flush=True)
        print("| sandboxes | turbok pool | raw | raw/turbok |\n|---|---|---|---|")
        asyncio.run(bench(api, cp, work, args))
    finally:
        cp.stop()
        print("cleaning up sandboxes ...", flush=True)
        stop_sandboxes(Home(cp.home), remove=True)
        asyncio.run(remove_half_made(Home(cp.home)))
        remove_raw_cgroups(RAW_CGROUP)
        unmount_under(work)


if __name__ == "__main__":
    main()
