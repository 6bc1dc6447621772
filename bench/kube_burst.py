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
from the POST's answer. Results: bench/RESULTS.md ("Claims on a real API server"). Usage (root, base
image built for the embedded half; ``TURBOK_IMAGES`` defaults to ``~/.turbok/images``)::

    .venv/bin/python bench/kube_burst.py [--pool 300] [--claims 300] [--rate 300] [--skip-embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.kube.conftest import prepare  # noqa: E402
from tests.kube_cluster import kube_cluster  # noqa: E402

EXT = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces"
UPSTREAM = {"p50": 1000.0, "p90": 1000.0, "p99": 5000.0}  # ms, rapid-burst-test.yaml's thresholds
NS = "burst"


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

    def burst(self, claims: int, rate: float) -> tuple[list[float], list[float]]:
        """Latencies (ms) from each POST sent, and from its answer, to ``Ready=True`` seen on a watch.

        The watch runs in a process of its own (a thread would share the GIL with the posting loop and
        see events late); ``time.monotonic`` is the same clock in both processes.
        """
        ctx = multiprocessing.get_context("fork")
        seen: Any = ctx.Queue()
        watching = ctx.Event()
        watcher = ctx.Process(target=_watch, args=(self.kw, claims, seen, watching), daemon=True)
        watcher.start()
        watching.wait(30)
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}

        async def post_all() -> None:
            async with httpx.AsyncClient(**self.kw, timeout=60,
                                         limits=httpx.Limits(max_connections=32)) as http:
                t0 = time.monotonic()

                async def one(i: int) -> None:
                    await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                    name = f"c{i}"
                    sent[name] = time.monotonic()
                    r = await http.post(f"{EXT}/{NS}/sandboxclaims", json={
                        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
                        "metadata": {"name": name}, "spec": {"warmPoolRef": {"name": "pool"}}})
                    answered[name] = time.monotonic()
                    r.raise_for_status()

                await asyncio.gather(*(one(i) for i in range(claims)))
                print(f"{self.name}: {claims} claims posted in {time.monotonic() - t0:.2f} s "
                      f"(asked: {claims / rate:.2f} s)", flush=True)

        asyncio.run(post_all())
        ready: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(ready) < claims and time.monotonic() < deadline:
            try:
                name, when = seen.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            ready.setdefault(name, when)
        watcher.terminate()
        watcher.join()
        missing = [n for n in sent if n not in ready]
        if missing:
            print(f"{self.name}: {len(missing)} claims never Ready within 120 s", flush=True)
        return (sorted((ready[n] - sent[n]) * 1000 for n in sent if n in ready),
                sorted((ready[n] - answered[n]) * 1000 for n in answered if n in ready))


def _watch(kw: dict[str, Any], claims: int, seen: Any, watching: Any) -> None:
    reported: set[str] = set()
    with httpx.Client(**kw, timeout=httpx.Timeout(30, read=600)) as http, http.stream(
            "GET", f"{EXT}/{NS}/sandboxclaims", params={"watch": "true", "timeoutSeconds": 600}) as r:
        watching.set()
        for line in r.iter_lines():
            if not line.strip():
                continue
            obj = json.loads(line)["object"]
            name = obj["metadata"]["name"]
            if name not in reported and any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in (obj.get("status") or {}).get("conditions") or []):
                reported.add(name)
                seen.put((name, time.monotonic()))
            if len(reported) >= claims:
                return


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def report(name: str, result: tuple[list[float], list[float]]) -> dict[str, float]:
    lat, from_answer = result
    out = {"p50": statistics.median(lat), "p90": _pct(lat, 90), "p99": _pct(lat, 99), "max": lat[-1], "n": len(lat)}
    verdict = ", ".join(f"{k} {out[k]:.1f} ms (upstream <= {UPSTREAM[k]:.0f}: {'met' if out[k] <= UPSTREAM[k] else 'MISSED'})"
                        for k in UPSTREAM)
    print(f"{name}: {len(lat)} claims; {verdict}; max {out['max']:.1f} ms", flush=True)
    print(f"{name}: from the POST's answer: p50 {statistics.median(from_answer):.1f} ms, p90 "
          f"{_pct(from_answer, 90):.1f} ms, p99 {_pct(from_answer, 99):.1f} ms", flush=True)
    return out


def run_kube(pool: int, claims: int, rate: float) -> tuple[list[float], list[float]]:
    with kube_cluster(prepare=prepare) as kube:
        env = {**os.environ, "TURBOK_LOG": "WARNING"}
        op = subprocess.Popen([sys.executable, "-m", "turbok", "operator", "--kubeconfig", str(kube.kubeconfig),
                               "--namespace", "turbok-system", "--health-address", ""], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            target = Target("kube (operator + kube-apiserver + kube-scheduler + kwok)", kube.url, kube.token, False)
            target.setup(pool)
            return target.burst(claims, rate)
        finally:
            op.send_signal(signal.SIGTERM)
            try:
                op.wait(30)
            except subprocess.TimeoutExpired:
                print("the operator did not exit within 30 s of SIGTERM: killed", flush=True)
                op.kill()
                op.wait()


def run_embedded(pool: int, claims: int, rate: float) -> tuple[list[float], list[float]]:
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
        return target.burst(claims, rate)
    finally:
        cp.stop()
        stop_sandboxes(Home(home), remove=True)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=300)
    ap.add_argument("--claims", type=int, default=300)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--skip-embedded", action="store_true")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    report("kube", run_kube(args.pool, args.claims, args.rate))
    if not args.skip_embedded:
        report("embedded", run_embedded(args.pool, args.claims, args.rate))
    print(f"load average at end: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
