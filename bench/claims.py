"""SandboxClaims end to end on a real control plane, each figure next to its reference.

1. Warm claims: a warm pool of ``--pool`` Ready sandboxes; claims are posted at ``--rate`` per
   second for ``--seconds`` over one keep-alive HTTPS connection, while one watch on claims
   observes Ready. Latency = POST sent -> Ready event received (client side, so it includes TLS,
   HTTP, the store, the claim controller and the watch). The pool refills in the background.
2. Cold claims: claims against an empty pool, one at a time, alternating with a raw
   ``runsc run --detach`` of the same kind of bundle (the reference, measured in the same run).
   Latency = POST sent -> Ready event received.

Both use ``turbok serve`` as a user runs it, in a temporary home. Usage (root, base image built)::

    .venv/bin/python bench/claims.py [--rate 20] [--seconds 30] [--pool 600] [--cold 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime as rt_bench  # noqa: E402  (bench/runtime.py: the raw runsc reference)

from tests.conftest import ControlPlaneProcess  # noqa: E402
from turbok.embedded.daemon import stop_sandboxes  # noqa: E402
from turbok.home import Home  # noqa: E402
from turbok.runtime import overlay  # noqa: E402
from turbok.runtime.gvisor import RunscRuntime  # noqa: E402
from turbok.runtime.images import ImageStore  # noqa: E402
from turbok.runtime.layout import SandboxDir  # noqa: E402

EXT = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces"


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

    def setup(self, ns: str, replicas: int) -> None:
        self.post("/api/v1/namespaces", {"metadata": {"name": ns}})
        self.post(f"{EXT}/{ns}/sandboxtemplates", {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": "py"},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}}})
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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def warm(api: Api, rate: float, seconds: float, pool: int) -> dict[str, Any]:
    ns = "bench-warm"
    api.setup(ns, pool)
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
    start = time.perf_counter()
    for i in range(count):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        name = f"w{i:05d}"
        sent[name] = time.perf_counter()
        api.claim(ns, name)
        created[name] = time.perf_counter()
    achieved = count / (time.perf_counter() - start)
    deadline = time.perf_counter() + 60
    while len(watch.ready) < count and time.perf_counter() < deadline:
        time.sleep(0.1)
    after = api.stalls()
    stalls = {k: [a - b for a, b in zip(v, before.get(k, [0.0] * 3), strict=True)] for k, v in after.items()}
    lat = [(watch.ready[n] - t) * 1e3 for n, t in sent.items() if n in watch.ready]
    post = [(created[n] - t) * 1e3 for n, t in sent.items()]
    windows = []
    per_window = int(rate * 5)
    for i in range(0, len(lat), per_window):
        chunk = lat[i:i + per_window]
        windows.append((statistics.median(chunk), pct(chunk, 0.99)))
    return {"claims": count, "ready": len(lat), "rate": achieved, "p50": statistics.median(lat),
            "p99": pct(lat, 0.99), "max": max(lat),
            "post_p50": statistics.median(post), "post_p99": pct(post, 0.99), "pool_ready_after": api.ready_replicas(ns), "windows": windows,
            "stalls": stalls}


async def cold(api: Api, n: int, work: Path) -> dict[str, Any]:
    ns = "bench-cold"
    api.setup(ns, 0)
    watch = ReadyWatch(api, ns)
    watch.start()
    watch.started.wait(10)
    runtime = RunscRuntime(work / "raw", ImageStore())
    raw_spec = rt_bench.spec("bench-claims-raw")
    await runtime.start(raw_spec)
    await runtime.stop(raw_spec.id)
    raw_dir = SandboxDir(runtime.root, raw_spec.id)
    image = runtime.images.resolve(rt_bench.IMAGE)
    ours: list[float] = []
    raw: list[float] = []

    async def one_claim(i: int) -> None:
        name = f"c{i:04d}"
        t = time.perf_counter()
        await asyncio.to_thread(api.claim, ns, name)
        ready = await asyncio.to_thread(watch.wait_for, name, 60)
        ours.append((ready - t) * 1e3)

    async def one_raw() -> None:
        overlay.mount_overlay(lower=image.rootfs, upper=raw_dir.upper, work=raw_dir.ovwork, target=raw_dir.rootfs)
        raw.append(await rt_bench.raw_run(rt_bench.run_flags(runtime, raw_dir), raw_dir) * 1e3)
        await runtime.stop(raw_spec.id)

    for i in range(n):
        if i % 2:
            await one_raw()
            await one_claim(i)
        else:
            await one_claim(i)
            await one_raw()
        await asyncio.sleep(2.5)  # let the previous sandbox's boot settle before the next sample
    await runtime.remove(raw_spec.id)
    return {"claims": n, "p50": statistics.median(ours), "p99": pct(ours, 0.99),
            "raw_p50": statistics.median(raw), "raw_p99": pct(raw, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pool", type=int, default=600)
    parser.add_argument("--cold", type=int, default=15)
    parser.add_argument("--skip-warm", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-claims-"))
    cp = ControlPlaneProcess(work / "home").start()
    api = Api(cp)
    try:
        print(f"turbok serve at {cp.api_url} (home {cp.home}, pid {cp.proc.pid if cp.proc else '?'})", flush=True)
        # Cold first, on a quiet machine; the warm phase leaves a pool refilling in the background.
        if args.cold:
            c = asyncio.run(cold(api, args.cold, work))
            print(f"| cold claim create -> Ready (watch), n={c['claims']} | p50 {c['p50']:.1f} ms | p99 {c['p99']:.1f} ms "
                  f"| raw runsc run p50 {c['raw_p50']:.1f} ms p99 {c['raw_p99']:.1f} ms | ratio {c['p50'] / c['raw_p50']:.2f} |",
                  flush=True)
        if not args.skip_warm:
            w = warm(api, args.rate, args.seconds, args.pool)
            print(f"| warm claim create -> Ready (watch), {w['claims']} claims at {w['rate']:.1f}/s, pool {args.pool} "
                  f"| p50 {w['p50']:.1f} ms | p99 {w['p99']:.1f} ms | max {w['max']:.1f} ms | ready {w['ready']}/{w['claims']} "
                  f"| pool ready after: {w['pool_ready_after']} |", flush=True)
            for window, (p50, p99) in enumerate(w["windows"]):
                print(f"|   seconds {window * 5}-{window * 5 + 5}: p50 {p50:.1f} ms, p99 {p99:.1f} ms |")
            print(f"|   of which the create request: p50 {w['post_p50']:.1f} ms, p99 {w['post_p99']:.1f} ms |")
            for what, (n, total, slow) in sorted(w["stalls"].items()):
                print(f"|   control plane {what}: {n:.0f} observed, {total * 1e3:.0f} ms in all, {slow:.0f} over 50 ms |")
    finally:
        cp.stop()
        print("cleaning up sandboxes ...", flush=True)
        stop_sandboxes(Home(cp.home), remove=True)


if __name__ == "__main__":
    main()
