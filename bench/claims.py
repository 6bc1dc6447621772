"""SandboxClaims end to end on a real control plane, each figure next to its reference.

1. Warm claims: a warm pool of ``--pool`` Ready sandboxes (each a Pod the embedded node runs);
   claims are posted at ``--rate`` per second for ``--seconds`` over one keep-alive HTTPS
   connection, while one watch on claims observes Ready. Latency = POST sent -> Ready event
   received (client side, so it includes TLS, HTTP, the store, the claim controller adopting a
   warm Pod and the watch). The pool refills in the background. Printed by 5 s windows beside how
   busy the host's CPUs were (``/proc/stat``); ``--samples FILE`` writes each claim's times on the
   wall clock, to line up with the control plane's own logs.
2. Cold claims: claims against an empty pool, one at a time (each: the Sandbox, its Pod, the
   node's scheduler and worker, the Pod's network namespace and address, the pod sandbox boot,
   the Pod's and then the claim's Ready), alternating with a raw ``runsc run --detach`` of the
   same container bundle, measured in the same run: the pod runtime prepares it untimed with the
   claim Pod's config (the same image, the built-in limits, the sandboxd agent injected, a network
   namespace on a pod network of the benchmark's own) and runsc runs it with the node's flags
   (``--network=sandbox`` inside that namespace). Every sample starts ``SETTLE_S`` after the one
   before, the raw sandbox deleted right after its own sample: no sample meets the last one's app
   starting, and none gets memory freed a moment before (see ``RawReference.run``). ``--cold-agent`` says how the claims' Pods
   get the sandboxd agent, as the template's ``turbok.dev/sandboxd`` says it: ``on-demand`` (the
   default a user gets: injected, started by the first call that reaches it, which these claims
   never make), ``eager`` (the runtime execs it after the boot and the Pod is Ready once it
   serves, which raw ``runsc run`` does not do), ``off`` (none; the raw bundle made without it),
   or ``all`` (one series each). ``--warm-agent`` makes the warm pool's template the same way.

Both use ``turbok serve`` as a user runs it, in a temporary home; every sandbox is removed at the
end (``stop_sandboxes``). Usage (root, runsc, base image built)::

    .venv/bin/python bench/claims.py [--rate 20] [--seconds 30] [--pool 600] [--cold 15] [--cold-agent all] [--warm-agent on-demand]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import ControlPlaneProcess  # noqa: E402
from turbok.api.limitrange import BUILTIN_DEFAULT_LIMITS  # noqa: E402
from turbok.api.quantity import cpu_millis, to_bytes  # noqa: E402
from turbok.embedded.daemon import stop_sandboxes  # noqa: E402
from turbok.home import Home  # noqa: E402
from turbok.runtime.cri import ContainerConfig, PodSandboxConfig  # noqa: E402
from turbok.runtime.factory import make_pod_runtime  # noqa: E402
from turbok.runtime.ids import sandbox_id  # noqa: E402
from turbok.runtime.images import ImageStore  # noqa: E402
from turbok.runtime.network import PodNetwork, runsc_prefix  # noqa: E402
from turbok.runtime.podlayout import PodDir  # noqa: E402
from turbok.runtime.pods_gvisor import GvisorPodRuntime  # noqa: E402
from turbok.sandboxd.injection import agent_injection  # noqa: E402

EXT = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces"
IMAGE = "python-runtime-sandbox"
#: The raw reference's cgroup parent and pod network (its own: the control plane's pods are under /turbok, on
#: turbok0); a range no test uses.
RAW_CGROUP = "/turbok-bench-claims"
RAW_NETWORK = ("tkbcl", "10.241.77.0/28")
#: Seconds between two cold samples: the last boot's app has started, freed memory has gone back to the host.
SETTLE_S = 3.0


class Api:
    def __init__(self, cp: ControlPlaneProcess) -> None:
        self.cp = cp
        self.kw: dict[str, Any] = {"base_url": cp.api_url, "verify": str(cp.home / "pki" / "ca.crt"),
                                   "headers": {"Authorization": f"Bearer {cp.token}"}}
        self.http = httpx.Client(**self.kw, timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(path, json=body)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def setup(self, ns: str, replicas: int, *, agent: str = "on-demand") -> None:
        self.post("/api/v1/namespaces", {"metadata": {"name": ns}})
        template: dict[str, Any] = {"spec": {"containers": [{"name": "main", "image": IMAGE}]}}
        if agent != "on-demand":
            template["metadata"] = {"annotations": {"turbok.dev/sandboxd": agent}}
        self.post(f"{EXT}/{ns}/sandboxtemplates", {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": "py"}, "spec": {"podTemplate": template}})
        self.post(f"{EXT}/{ns}/sandboxwarmpools", {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
            "metadata": {"name": "pool"}, "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": "py"}}})

    def ready_replicas(self, ns: str) -> int:
        status = self.http.get(f"{EXT}/{ns}/sandboxwarmpools/pool").json().get("status") or {}
        return int(status.get("readyReplicas") or 0)

    def stalls(self) -> dict[str, list[float]]:
        """[count, total seconds, count over 50 ms] of the control plane's event-loop lag and GC pauses."""
        out: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(self.http.get("/metrics").text):
            if family.name not in ("turbok_event_loop_lag_seconds", "turbok_gc_pause_seconds"):
                continue
            for sample in family.samples:
                key = family.name.removeprefix("turbok_").removesuffix("_seconds")
                if "generation" in sample.labels:
                    key += f" gen{sample.labels['generation']}"
                row = out.setdefault(key, [0.0, 0.0, 0.0])
                if sample.name.endswith("_count"):
                    row[0] += sample.value
                    row[2] += sample.value
                elif sample.name.endswith("_sum"):
                    row[1] += sample.value
                elif sample.name.endswith("_bucket") and sample.labels["le"] == "0.05":
                    row[2] -= sample.value
        return out

    def claim(self, ns: str, name: str) -> None:
        self.post(f"{EXT}/{ns}/sandboxclaims", {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
            "metadata": {"name": name}, "spec": {"warmPoolRef": {"name": "pool"}}})


class ReadyWatch(threading.Thread):
    """One watch on a namespace's claims, recording when each first reports Ready=True."""

    def __init__(self, api: Api, ns: str) -> None:
        super().__init__(daemon=True)
        self.api, self.ns = api, ns
        self.ready: dict[str, float] = {}
        self.started = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the control plane stops at the end of the benchmark
            self._watch()

    def _watch(self) -> None:
        with httpx.Client(**self.api.kw, timeout=None) as http:
            rv = http.get(f"{EXT}/{self.ns}/sandboxclaims").json()["metadata"]["resourceVersion"]
            with http.stream("GET", f"{EXT}/{self.ns}/sandboxclaims",
                             params={"watch": "true", "resourceVersion": rv}) as response:
                self.started.set()
                for line in response.iter_lines():
                    now = time.perf_counter()
                    obj = json.loads(line)["object"]
                    conds = (obj.get("status") or {}).get("conditions") or []
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                        with self.changed:
                            self.ready.setdefault(obj["metadata"]["name"], now)
                            self.changed.notify_all()

    def wait_for(self, name: str, timeout: float) -> float:
        with self.changed:
            self.changed.wait_for(lambda: name in self.ready, timeout)
        return self.ready[name]


def host_cpu() -> tuple[int, int, int]:
    """(busy, system, all) ticks of every CPU of the host so far (``/proc/stat``)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], ticks[2] + ticks[5] + ticks[6], sum(ticks)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def warm(api: Api, rate: float, seconds: float, pool: int, *, agent: str = "on-demand",
         samples: Path | None = None) -> dict[str, Any]:
    ns = "bench-warm"
    api.setup(ns, pool, agent=agent)
    t0 = time.monotonic()
    while api.ready_replicas(ns) < pool:
        print(f"\r  warming the pool: {api.ready_replicas(ns)}/{pool} ready", end="", flush=True)
        time.sleep(1)
    print(f"\r  pool of {pool} ready in {time.monotonic() - t0:.0f}s" + " " * 20)
    watch = ReadyWatch(api, ns)
    watch.start()
    watch.started.wait(10)
    sent: dict[str, float] = {}
    created: dict[str, float] = {}  # when the create request returned
    count = int(rate * seconds)
    before = api.stalls()
    per_window = int(rate * 5)
    cpu_marks = []  # /proc/stat at each window's start and at the end: how busy the host was meanwhile
    start = time.perf_counter()
    for i in range(count):
        if i % per_window == 0:
            cpu_marks.append(host_cpu())
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        name = f"w{i:05d}"
        sent[name] = time.perf_counter()
        api.claim(ns, name)
        created[name] = time.perf_counter()
    achieved = count / (time.perf_counter() - start)
    cpu_marks.append(host_cpu())
    deadline = time.perf_counter() + 60
    while len(watch.ready) < count and time.perf_counter() < deadline:
        time.sleep(0.1)
    after = api.stalls()
    stalls = {k: [a - b for a, b in zip(v, before.get(k, [0.0] * 3), strict=True)] for k, v in after.items()}
    lat = [(watch.ready[n] - t) * 1e3 for n, t in sent.items() if n in watch.ready]
    if samples is not None:  # each claim's times on the wall clock, to line up with the control plane's logs
        shift = time.time() - time.perf_counter()
        samples.write_text("".join(f"{n} {t + shift:.6f} {created[n] + shift:.6f} "
                                   f"{watch.ready[n] + shift if n in watch.ready else float('nan'):.6f}\n"
                                   for n, t in sent.items()))
    post = [(created[n] - t) * 1e3 for n, t in sent.items()]
    windows = []
    for w, i in enumerate(range(0, len(lat), per_window)):
        chunk = lat[i:i + per_window]
        (busy0, sys0, all0), (busy1, sys1, all1) = cpu_marks[w], cpu_marks[min(w + 1, len(cpu_marks) - 1)]
        elapsed = max(all1 - all0, 1)
        windows.append((statistics.median(chunk), pct(chunk, 0.99), (busy1 - busy0) / elapsed, (sys1 - sys0) / elapsed))
    return {"claims": count, "ready": len(lat), "rate": achieved, "p50": statistics.median(lat),
            "p99": pct(lat, 0.99), "max": max(lat),
            "post_p50": statistics.median(post), "post_p99": pct(post, 0.99), "pool_ready_after": api.ready_replicas(ns), "windows": windows,
            "stalls": stalls}


def raw_run(runtime: GvisorPodRuntime, network: PodNetwork, pod_id: str) -> tuple[str, list[str]]:
    """The container id and the raw ``runsc run --detach`` argv of container ``main`` of a pod the runtime
    prepared (started and stopped): its bundle, in its network namespace, with the node's runsc flags.

    Call ``network.setup(pod_id)`` before each run of the argv, as the node does before each boot: runsc's
    netstack takes the namespace's addresses away when it starts, and a sandbox booted in a namespace without
    them has no network at all (no packet socket, none of its 2 MiB receive ring): a cheaper, unfair reference."""
    pdir = PodDir(runtime.root, pod_id)
    cdir = pdir.container("main")
    cid = str(json.loads(cdir.record.read_text())["cid"])
    attachment = network.attachment(pod_id)
    assert attachment is not None, f"raw pod {pod_id} has no network namespace"
    return cid, [*runsc_prefix(attachment.netns), *runtime._cmd(
        "--network=sandbox", "--cpu-num-from-quota", f"--debug-log={pdir.boot_log_of('main', 0)}",
        "--debug-command=boot", "run", "--detach", f"--bundle={cdir.bundle}", cid)]


class RawReference:
    """A raw ``runsc run --detach`` of a container bundle the pod runtime prepared for a Pod like the claims'.

    Its own root, cgroup parent and pod network in the benchmark's work directory; the same image,
    limits (the built-in ones a template without resources gets), sandboxd agent, network namespace
    and runsc flags as the node's runtime gives a claim's Pod. Timed: ``runsc run`` alone.
    """

    def __init__(self, work: Path, *, agent: bool = True) -> None:
        images = ImageStore()
        name, cidr = RAW_NETWORK
        self.network = PodNetwork(work / "net", cidr=cidr, name=name, shared_dir=work / "net-shared")
        self.runtime = GvisorPodRuntime(work / "raw", images, cgroup_parent=RAW_CGROUP, network=self.network)
        self.runtime.injection = agent_injection(images, work / "agent") if agent else None
        cpu, memory = cpu_millis(BUILTIN_DEFAULT_LIMITS["cpu"]), to_bytes(BUILTIN_DEFAULT_LIMITS["memory"])
        self.pod = PodSandboxConfig(id=sandbox_id("bench-claims-raw"), name="raw", namespace="bench", uid="raw",
                                    hostname="raw", cpu_millis=cpu, memory_bytes=memory, network=True,
                                    single_container=True,
                                    agent_container="main" if self.runtime.injection is not None else "",
                                    agent_ports=(8080, 9090) if self.runtime.injection is not None else ())
        self.container = ContainerConfig("main", IMAGE, cpu_millis=cpu, memory_bytes=memory)
        self.argv: list[str] = []
        self.cid = ""
        self.out = work / "raw.out"

    async def prepare(self) -> None:
        await asyncio.to_thread(self.network.ensure_host)
        await self.runtime.run_pod_sandbox(self.pod)
        await self.runtime.start_container(self.pod.id, self.container)
        await self.runtime.stop_container(self.pod.id, "main", 0)
        self.cid, self.argv = raw_run(self.runtime, self.network, self.pod.id)
        await self.stop()

    async def run(self) -> float:
        """Seconds one raw ``runsc run --detach`` took (its network set up first, untimed).

        Call ``stop`` after each run, a settling time before the next (``SETTLE_S``): a sandbox deleted
        just before the next run hands it memory the guest has not given back to the host yet, which a
        claim's boot never gets (this VM's balloon reports free memory to the host about 2 s after it is
        freed, and memory touched again after that costs host page faults: measured, the first boot of a
        fresh pod against a rerun of its bundle right after its delete, +27 to +38 ms at the median; with
        the delete 3 s before the rerun, +2 ms)."""
        await asyncio.to_thread(self.network.setup, self.pod.id)  # untimed: see raw_run
        out = os.open(self.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                    stderr=out, start_new_session=True)
        os.close(out)  # a detached sandbox keeps what it is given: never a pipe
        code = await proc.wait()
        took = time.perf_counter() - t
        if code != 0:
            raise SystemExit(f"raw runsc run failed ({code}); see {self.out}")
        return took

    async def stop(self) -> None:
        """The sandbox of the last run deleted (untimed)."""
        await self.runtime._runsc("delete", "--force", self.cid)

    async def remove(self) -> None:
        await self.stop()
        await self.runtime.remove_pod_sandbox(self.pod.id)
        await asyncio.to_thread(self.network.remove_host)


async def cold(api: Api, n: int, work: Path, *, agent: str) -> dict[str, Any]:
    ns = f"bench-cold-{agent}"
    api.setup(ns, 0, agent=agent)
    watch = ReadyWatch(api, ns)
    watch.start()
    watch.started.wait(10)
    raw_ref = RawReference(work / ns, agent=agent != "off")
    await raw_ref.prepare()
    ours: list[float] = []
    raw: list[float] = []

    async def one_claim(i: int) -> None:
        name = f"c{i:04d}"
        t = time.perf_counter()
        await asyncio.to_thread(api.claim, ns, name)
        ready = await asyncio.to_thread(watch.wait_for, name, 60)
        ours.append((ready - t) * 1e3)

    async def one_raw(_: int) -> None:
        raw.append(await raw_ref.run() * 1e3)
        await raw_ref.stop()

    try:
        await asyncio.sleep(SETTLE_S)
        for i in range(n):  # alternating which goes first; each sample starts after the one before has settled
            for one in ((one_raw, one_claim) if i % 2 else (one_claim, one_raw)):
                await one(i)
                # The sandbox just booted goes on starting its app for a while, a raw one's delete frees memory
                # (see ``RawReference.run``): the next sample must meet neither.
                await asyncio.sleep(SETTLE_S)
    finally:
        await raw_ref.remove()
    print(f"cold samples (ms), claims: {[round(x) for x in ours]}; raw: {[round(x) for x in raw]}", file=sys.stderr)
    return {"claims": n, "p50": statistics.median(ours), "p99": pct(ours, 0.99),
            "raw_p50": statistics.median(raw), "raw_p99": pct(raw, 0.99)}


async def remove_half_made(home: Home) -> None:
    """What the node was still making when the control plane stopped: pod directories without a record
    (``list_pod_sandboxes``, so ``stop_sandboxes``, misses them) and runsc sandboxes already started for them."""
    pods = home.root / "pods"
    runtime = make_pod_runtime(pods, network=PodNetwork.from_env(home.root / "network"))
    for pod in sorted(pods.glob("tk*")):
        with contextlib.suppress(Exception):
            await runtime.remove_pod_sandbox(pod.name)
    state = pods / ".runsc"
    listed = subprocess.run(["runsc", f"--root={state}", "list", "-quiet"], capture_output=True, text=True)
    for cid in listed.stdout.split():
        subprocess.run(["runsc", f"--root={state}", "delete", "--force", cid], capture_output=True)


def unmount_under(work: Path) -> None:
    """Unmount what is left under ``work`` (the pod runtime's own bind mount of its root), deepest first."""
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((p for p in points if p.startswith(f"{work}/")), key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True)


def remove_raw_cgroups(parent: str = RAW_CGROUP) -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        d = controller / parent.strip("/")
        with contextlib.suppress(OSError):
            for child in d.iterdir():
                if child.is_dir():
                    child.rmdir()
            d.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pool", type=int, default=600)
    parser.add_argument("--cold", type=int, default=15)
    parser.add_argument("--cold-agent", choices=("on-demand", "eager", "off", "all"), default="all")
    parser.add_argument("--warm-agent", choices=("on-demand", "eager", "off"), default="on-demand")
    parser.add_argument("--samples", type=Path, default=None,
                        help="write each warm claim's sent, created and Ready times (wall clock) to this file")
    parser.add_argument("--skip-warm", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-claims-"))
    cp = ControlPlaneProcess(work / "home").start()
    api = Api(cp)
    try:
        print(f"turbok serve at {cp.api_url} (home {cp.home}, pid {cp.proc.pid if cp.proc else '?'})", flush=True)
        # Cold first, on a quiet machine; the warm phase leaves a pool refilling in the background.
        agents = ["off", "on-demand", "eager"] if args.cold_agent == "all" else [args.cold_agent]
        for agent in agents if args.cold else []:
            c = asyncio.run(cold(api, args.cold, work, agent=agent))
            print(f"| cold claim create -> Ready (watch), sandboxd agent {agent}, "
                  f"n={c['claims']} | p50 {c['p50']:.1f} ms | p99 {c['p99']:.1f} ms "
                  f"| raw runsc run p50 {c['raw_p50']:.1f} ms p99 {c['raw_p99']:.1f} ms | ratio {c['p50'] / c['raw_p50']:.2f} |",
                  flush=True)
        if not args.skip_warm:
            w = warm(api, args.rate, args.seconds, args.pool, agent=args.warm_agent, samples=args.samples)
            print(f"| warm claim create -> Ready (watch), {w['claims']} claims at {w['rate']:.1f}/s, pool {args.pool}, "
                  f"sandboxd agent {args.warm_agent} "
                  f"| p50 {w['p50']:.1f} ms | p99 {w['p99']:.1f} ms | max {w['max']:.1f} ms | ready {w['ready']}/{w['claims']} "
                  f"| pool ready after: {w['pool_ready_after']} |", flush=True)
            for window, (p50, p99, busy, system) in enumerate(w["windows"]):
                print(f"|   seconds {window * 5}-{window * 5 + 5}: p50 {p50:.1f} ms, p99 {p99:.1f} ms; host CPUs "
                      f"{busy * 100:.0f} % busy, {system * 100:.0f} % in the kernel |")
            print(f"|   of which the create request: p50 {w['post_p50']:.1f} ms, p99 {w['post_p99']:.1f} ms |")
            for what, (n, total, slow) in sorted(w["stalls"].items()):
                print(f"|   control plane {what}: {n:.0f} observed, {total * 1e3:.0f} ms in all, {slow:.0f} over 50 ms |")
    finally:
        cp.stop()
        print("cleaning up sandboxes ...", flush=True)
        stop_sandboxes(Home(cp.home), remove=True)
        asyncio.run(remove_half_made(Home(cp.home)))
        remove_raw_cgroups()
        unmount_under(work)
        if not any(line.split()[1].startswith(f"{work}/") for line in Path("/proc/mounts").read_text().splitlines()):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
