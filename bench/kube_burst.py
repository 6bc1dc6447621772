"""A burst of warm claims on a real Kubernetes control plane with turbok's operator, and on the embedded engine.

Upstream's rapid-burst load test (dev/load-test/test-recipes/rapid-burst-test.yaml) posts SandboxClaims
as fast as a QPS allows against a warm pool and fails above p50 1 s, p90 1 s, p99 5 s (claim startup
latency). Here, in one run:

1. Kubernetes engine: etcd, kube-apiserver 1.37, kube-controller-manager, kube-scheduler and kwok on
   loopback (tests/kube_cluster.py), ``turbok operator`` as its own process (leader election on); a
   warm pool of ``--pool`` sandboxes whose Pods kwok runs; ``--claims`` claims posted at ``--rate``/s.
2. Embedded engine: ``turbok serve`` in a temporary home (its node runs the pool under gVisor), the same
   pool, the same burst.

Latency = the claim's POST sent -> its ``Ready=True`` seen on a watch of claims (client side: TLS,
HTTP, storage, the claim controller, the watch; the watch runs in a process of its own), and the same
from the POST's answer. The claims come from ``--clients`` processes, each on its own User-Agent (a
429 is sent again after its Retry-After), beside ``--misbehaving`` clients that each try to open 10,000
watches and flood creates (64 at once, ignoring Retry-After) in a namespace of their own. Also measured:
a neighbour's GET of the pool every 20 ms during the burst (API p99), what the misbehaving clients were
answered, the time from the burst's start until the pool is full again, and an audit of the claims (every
one Ready, each with a sandbox of its own). Results: bench/RESULTS.md ("Claims on a real API server").
Usage (root, base image built for the embedded half; ``TURBOK_IMAGES`` defaults to ``~/.turbok/images``)::

    .venv/bin/python bench/kube_burst.py [--pool 300] [--claims 300] [--rate 300] [--clients 10]
        [--misbehaving 1] [--skip-kube] [--skip-embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.kube.conftest import prepare  # noqa: E402
from tests.kube_cluster import kube_cluster  # noqa: E402

EXT = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces"
UPSTREAM = {"p50": 1000.0, "p90": 1000.0, "p99": 5000.0}  # ms, rapid-burst-test.yaml's thresholds
NS = "burst"
NOISY = "noisy"  # the misbehaving clients' namespace
BAD_WATCHES = 10_000


class Target:
    def __init__(self, name: str, url: str, token: str, verify: Any) -> None:
        self.name, self.url = name, url
        self.kw: dict[str, Any] = {"base_url": url, "verify": verify, "headers": {"Authorization": f"Bearer {token}"}}
        self.http = httpx.Client(**self.kw, timeout=60)

    def post(self, path: str, body: dict[str, Any]) -> None:
        r = self.http.post(path, json=body)
        if r.status_code not in (200, 201, 409):
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")

    def setup(self, pool: int) -> None:
        self.post("/api/v1/namespaces", {"metadata": {"name": NS}})
        deadline = time.monotonic() + 60
        while self.http.get(f"/api/v1/namespaces/{NS}/serviceaccounts/default").status_code != 200:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.post(f"{EXT}/{NS}/sandboxtemplates", {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate", "metadata": {"name": "py"},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}}})
        self.post(f"{EXT}/{NS}/sandboxwarmpools", {
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool", "metadata": {"name": "pool"},
            "spec": {"replicas": pool, "sandboxTemplateRef": {"name": "py"}}})
        started = time.monotonic()
        while (self.http.get(f"{EXT}/{NS}/sandboxwarmpools/pool").json().get("status") or {}).get(
                "readyReplicas") != pool:
            if time.monotonic() - started > 900:
                raise RuntimeError(f"{self.name}: the pool did not get ready")
            time.sleep(0.5)
        print(f"{self.name}: pool of {pool} ready in {time.monotonic() - started:.1f} s", flush=True)

    def burst(self, claims: int, rate: float, clients: int, bad: int) -> Burst:
        """``claims`` claims at ``rate``/s from ``clients`` processes, each on its own User-Agent, beside
        ``bad`` misbehaving ones; latencies (ms) from each POST sent, and from its answer, to ``Ready=True``
        seen on a watch, the API's latency meanwhile, and the time until the pool is full again.

        The watch, the probe and every client run in processes of their own (threads would share the GIL
        with the posting loops and see events late); ``time.monotonic`` is the same clock in all of them.
        """
        ctx = multiprocessing.get_context("fork")
        seen, out = ctx.Queue(), ctx.Queue()
        watching, stop = ctx.Event(), ctx.Event()
        watcher = ctx.Process(target=_watch, args=(self.kw, claims, seen, watching), daemon=True)
        watcher.start()
        watching.wait(30)
        if bad:
            self.post("/api/v1/namespaces", {"metadata": {"name": NOISY}})
        t0 = time.monotonic() + 1.0  # every client's schedule starts here
        procs = [ctx.Process(target=_probe, args=(self.kw, stop, out), daemon=True)]
        procs += [ctx.Process(target=_misbehave, args=(self.kw, k, stop, out), daemon=True) for k in range(bad)]
        procs += [ctx.Process(target=_post_claims, args=(self.kw, k, clients, claims, rate, t0, out), daemon=True)
                  for k in range(clients)]
        for proc in procs:
            proc.start()
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        retried = 0
        reports: dict[str, Any] = {}
        for _ in range(clients):
            kind, value = out.get(timeout=600)
            while kind != "client":  # the probe and the misbehaving clients report only once stopped
                reports.setdefault(kind, []).append(value)
                kind, value = out.get(timeout=600)
            sent.update(value["sent"])
            answered.update(value["answered"])
            retried += value["retried"]
        print(f"{self.name}: {len(answered)} of {claims} claims posted in {max(answered.values()) - t0:.2f} s "
              f"(asked: {claims / rate:.2f} s) by {clients} clients; {retried} answered 429 and sent again",
              flush=True)
        ready: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(ready) < claims and time.monotonic() < deadline:
            try:
                name, when = seen.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            ready.setdefault(name, when)
        stop.set()
        for _ in range(1 + bad):
            kind, value = out.get(timeout=120)
            reports.setdefault(kind, []).append(value)
        for proc in [watcher, *procs]:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
        missing = [n for n in sent if n not in ready]
        if missing:
            print(f"{self.name}: {len(missing)} claims never Ready within 120 s", flush=True)
        refill = self.wait_full(t0)
        return Burst(sorted((ready[n] - sent[n]) * 1000 for n in sent if n in ready),
                     sorted((ready[n] - answered[n]) * 1000 for n in answered if n in ready),
                     sorted(reports["probe"][0]), reports.get("bad", []), refill, self.audit(claims))

    def wait_full(self, t0: float) -> float:
        """Seconds from the burst's start until the pool is full again (readyReplicas = replicas)."""
        while True:
            spec = self.http.get(f"{EXT}/{NS}/sandboxwarmpools/pool").json()
            if (spec.get("status") or {}).get("readyReplicas") == spec["spec"]["replicas"]:
                return time.monotonic() - t0
            if time.monotonic() - t0 > 900:
                return float("inf")
            time.sleep(0.5)

    def audit(self, claims: int) -> str:
        """Every claim Ready with a sandbox of its own: none lost, none sharing one."""
        items = self.http.get(f"{EXT}/{NS}/sandboxclaims").json()["items"]
        names = [((c.get("status") or {}).get("sandbox") or {}).get("name") for c in items]
        ready = sum(1 for c in items if any(x["type"] == "Ready" and x["status"] == "True"
                                            for x in (c.get("status") or {}).get("conditions") or []))
        given = [n for n in names if n]
        return (f"{len(items)} claims stored (posted {claims}), {ready} Ready, {len(given)} with a sandbox, "
                f"{len(set(given))} distinct sandboxes")


@dataclass
class Burst:
    latency: list[float]  # ms, POST sent -> Ready seen
    from_answer: list[float]  # ms, POST answered -> Ready seen
    api: list[float]  # ms, the probe's GETs during the burst
    bad: list[dict[str, int]]  # what each misbehaving client was answered
    refill: float  # s, burst start -> pool full again
    audit: str


def _post_claims(kw: dict[str, Any], k: int, clients: int, claims: int, rate: float, t0: float, out: Any) -> None:
    """Client ``k`` of ``clients``: claims k, k + clients, ... each at t0 + i / rate; a 429 is sent again after
    its Retry-After (as client-go does)."""
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    retried = 0

    async def post_all() -> None:
        nonlocal retried
        headers = {**kw["headers"], "User-Agent": f"burst-client-{k}/1.0"}
        async with httpx.AsyncClient(**{**kw, "headers": headers}, timeout=60,
                                     limits=httpx.Limits(max_connections=8)) as http:
            async def one(i: int) -> None:
                nonlocal retried
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                name = f"c{i}"
                sent[name] = time.monotonic()
                while True:
                    r = await http.post(f"{EXT}/{NS}/sandboxclaims", json={
                        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
                        "metadata": {"name": name}, "spec": {"warmPoolRef": {"name": "pool"}}})
                    if r.status_code != 429:
                        break
                    retried += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                answered[name] = time.monotonic()
                r.raise_for_status()

            # Connections made (TLS handshakes) before the burst, as a client that has been running has them.
            await asyncio.gather(*(http.get(f"{EXT}/{NS}/sandboxwarmpools/pool") for _ in range(4)))
            await asyncio.gather(*(one(i) for i in range(k, claims, clients)))

    asyncio.run(post_all())
    out.put(("client", {"sent": sent, "answered": answered, "retried": retried}))


def _probe(kw: dict[str, Any], stop: Any, out: Any) -> None:
    """A well-behaved neighbour: GET the pool every 20 ms until stopped; its latencies in ms."""
    took: list[float] = []
    headers = {**kw["headers"], "User-Agent": "burst-probe/1.0"}
    with httpx.Client(**{**kw, "headers": headers}, timeout=60) as http:
        while not stop.is_set():
            started = time.monotonic()
            http.get(f"{EXT}/{NS}/sandboxwarmpools/pool").raise_for_status()
            took.append((time.monotonic() - started) * 1000)
            time.sleep(0.02)
    out.put(("probe", took))


def _misbehave(kw: dict[str, Any], k: int, stop: Any, out: Any) -> None:
    """A client that opens ``BAD_WATCHES`` watches and floods creates (64 at once, ignoring Retry-After) until
    stopped; how many of each the server took and refused."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (BAD_WATCHES + 1024, BAD_WATCHES + 1024))
    counts = {"watches_opened": 0, "watches_refused": 0, "watches_failed": 0, "creates_201": 0,
              "creates_429": 0, "creates_other": 0}
    headers = {**kw["headers"], "User-Agent": f"misbehaving-{k}/1.0"}

    async def run() -> None:
        limits = httpx.Limits(max_connections=BAD_WATCHES + 64, max_keepalive_connections=64)
        async with httpx.AsyncClient(**{**kw, "headers": headers}, timeout=httpx.Timeout(30, read=None),
                                     limits=limits) as http:
            held: list[httpx.Response] = []

            async def watch() -> None:
                try:
                    r = await http.send(http.build_request(
                        "GET", f"/api/v1/namespaces/{NOISY}/configmaps",
                        params={"watch": "true", "timeoutSeconds": 600}), stream=True)
                except httpx.HTTPError:
                    counts["watches_failed"] += 1
                    return
                if r.status_code == 200:
                    counts["watches_opened"] += 1
                    held.append(r)
                else:
                    counts["watches_refused"] += 1
                    await r.aclose()

            async def flood(w: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    r = await http.post(f"/api/v1/namespaces/{NOISY}/configmaps", json={
                        "metadata": {"name": f"noise-{k}-{w}-{i}"}, "data": {"x": "y" * 100}})
                    key = {201: "creates_201", 429: "creates_429"}.get(r.status_code, "creates_other")
                    counts[key] += 1

            floods = [asyncio.create_task(flood(w)) for w in range(64)]
            for start in range(0, BAD_WATCHES, 200):
                if stop.is_set():
                    break
                await asyncio.gather(*(watch() for _ in range(start, min(BAD_WATCHES, start + 200))))
            while not stop.is_set():
                await asyncio.sleep(0.1)
            await asyncio.gather(*floods, return_exceptions=True)
            for r in held:
                await r.aclose()

    asyncio.run(run())
    out.put(("bad", counts))


def _watch(kw: dict[str, Any], claims: int, seen: Any, watching: Any) -> None:
    """Report each claim's first Ready as seen on a watch of claims; a watch the server ends (kube-apiserver
    closes one it finds slow) is opened again from the last resourceVersion seen, as an informer does."""
    reported: set[str] = set()
    rv = ""
    with httpx.Client(**kw, timeout=httpx.Timeout(30, read=600)) as http:
        while len(reported) < claims:
            params: dict[str, Any] = {"watch": "true", "timeoutSeconds": 600}
            if rv:
                params["resourceVersion"] = rv
            with http.stream("GET", f"{EXT}/{NS}/sandboxclaims", params=params) as r:
                watching.set()
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":  # 410: the rest is read from a fresh list
                        rv = ""
                        break
                    obj = event["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    name = obj["metadata"]["name"]
                    if name not in reported and any(c["type"] == "Ready" and c["status"] == "True"
                                                    for c in (obj.get("status") or {}).get("conditions") or []):
                        reported.add(name)
                        seen.put((name, time.monotonic()))
                    if len(reported) >= claims:
                        return


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def report(name: str, burst: Burst) -> None:
    lat, from_answer = burst.latency, burst.from_answer
    out = {"p50": statistics.median(lat), "p90": _pct(lat, 90), "p99": _pct(lat, 99)}
    verdict = ", ".join(f"{k} {out[k]:.1f} ms (upstream <= {UPSTREAM[k]:.0f}: {'met' if out[k] <= UPSTREAM[k] else 'MISSED'})"
                        for k in UPSTREAM)
    print(f"{name}: {len(lat)} claims Ready; {verdict}; max {lat[-1]:.1f} ms; issue 16's goal p99 <= 100 ms: "
          f"{'met' if out['p99'] <= 100 else 'MISSED'}", flush=True)
    print(f"{name}: from the POST's answer: p50 {statistics.median(from_answer):.1f} ms, p90 "
          f"{_pct(from_answer, 90):.1f} ms, p99 {_pct(from_answer, 99):.1f} ms", flush=True)
    print(f"{name}: a neighbour's GET during the burst: p50 {statistics.median(burst.api):.1f} ms, p99 "
          f"{_pct(burst.api, 99):.1f} ms, max {burst.api[-1]:.1f} ms ({len(burst.api)} GETs)", flush=True)
    for counts in burst.bad:
        print(f"{name}: misbehaving client: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    print(f"{name}: pool full again {burst.refill:.1f} s after the burst began (goal <= 100 s); {burst.audit}",
          flush=True)


def run_kube(pool: int, claims: int, rate: float, clients: int, bad: int) -> Burst:
    with kube_cluster(prepare=prepare) as kube:
        env = {**os.environ, "TURBOK_LOG": "WARNING"}
        op = subprocess.Popen([sys.executable, "-m", "turbok", "operator", "--kubeconfig", str(kube.kubeconfig),
                               "--namespace", "turbok-system", "--health-address", ""], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            target = Target("kube (operator + kube-apiserver + kube-scheduler + kwok)", kube.url, kube.token, False)
            target.setup(pool)
            return target.burst(claims, rate, clients, bad)
        finally:
            op.send_signal(signal.SIGTERM)
            try:
                op.wait(30)
            except subprocess.TimeoutExpired:
                print("the operator did not exit within 30 s of SIGTERM: killed", flush=True)
                op.kill()
                op.wait()


def run_embedded(pool: int, claims: int, rate: float, clients: int, bad: int) -> Burst:
    from tests.conftest import ControlPlaneProcess
    from turbok.embedded.daemon import stop_sandboxes
    from turbok.home import Home

    # the built-in base image lives in the user's home, not in this run's temporary one
    os.environ.setdefault("TURBOK_IMAGES", str(Path.home() / ".turbok" / "images"))
    home = Path(tempfile.mkdtemp(prefix="turbok-burst-"))
    cp = ControlPlaneProcess(home=home).start()
    try:
        target = Target("embedded (turbok serve, gVisor node)", cp.api_url, cp.token, str(home / "pki" / "ca.crt"))
        target.setup(pool)
        return target.burst(claims, rate, clients, bad)
    finally:
        cp.stop()
        stop_sandboxes(Home(home), remove=True)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=300)
    ap.add_argument("--claims", type=int, default=300)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--clients", type=int, default=10, help="processes posting the claims, each its own User-Agent")
    ap.add_argument("--misbehaving", type=int, default=1,
                    help=f"clients beside them that open {BAD_WATCHES} watches and flood creates")
    ap.add_argument("--skip-kube", action="store_true")
    ap.add_argument("--skip-embedded", action="store_true")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    shape = (args.pool, args.claims, args.rate, args.clients, args.misbehaving)
    if not args.skip_kube:
        report("kube", run_kube(*shape))
    if not args.skip_embedded:
        report("embedded", run_embedded(*shape))
    print(f"load average at end: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
