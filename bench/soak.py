"""A soak: claims that churn for an hour, and whether anything the control plane holds grows (issue 16).

``turbok serve`` as a user runs it, in a temporary home, with a warm pool of
``--pool`` sandboxes (the base image's shell asleep in each, as ``bench/scale.py``).
``--workers`` threads each run the cycle an agent platform runs, over and over,
started at ``--rate`` per second in all (a token bucket; never more than
``--workers`` cycles in flight, so an overloaded machine slows the loop instead
of piling work up), until ``--minutes`` have passed:

1. POST a SandboxClaim of the pool; wait for its Ready on one shared watch;
2. write a file through the router (``POST /upload``, the legacy runtime API the
   official client speaks) and run a command that reads it back (``POST /execute``,
   ``cat``): the output must be the file's bytes;
3. DELETE the claim (its Sandbox and Pod go with it; the node tears down off the path).

Every wait is bounded (``--timeout``); a cycle that fails is counted by what
failed and the loop goes on. Every ``--every`` seconds one row: cycles done
and their rate, errors, claim -> Ready p50/p99 of the interval, and what must
stay flat: the control plane's RSS and open descriptors, the host's tasks, the
home's disk use, the store's size, runsc sandboxes, network namespaces and
memory available. At the end: each series' slope per hour (least squares over
the samples after the first ``--warmup`` minutes) against its level, and, once
the pool is set to 0 and every Sandbox is gone, what is left for deleted objects
(runsc sandboxes, network namespaces, pod cgroups, mounts, pod directories,
store rows; each counted, each must be 0).

Events expire after ``--event-ttl`` seconds (``TURBOK_EVENT_TTL_SECONDS``; 300 here, kube-apiserver's
default is an hour): each cycle writes a handful, and with the default they would grow the store for the
whole hour by design, hiding whether anything else grows.

Reference in the same run: the machine before ``turbok serve`` started (tasks,
memory available), so what the control plane and its sandboxes hold is told
apart from the rest of the machine.

Usage (root, runsc, nft, base image built)::

    .venv/bin/python bench/soak.py [--minutes 60] [--rate 10] [--workers 16] [--pool 20] [--every 60] [--event-ttl 300]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.claims import EXT, IMAGE, Api, pct, remove_half_made, unmount_under  # noqa: E402
from bench.scale import SLEEPER, meminfo, rss  # noqa: E402
from tests.conftest import ControlPlaneProcess  # noqa: E402
from turbok.embedded.daemon import stop_sandboxes  # noqa: E402
from turbok.home import Home  # noqa: E402

NS = "bench-soak"


# ------------------------------------------------------------------ the machine's figures

def host_tasks() -> int:
    """Threads on the host (every process's tasks)."""
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):  # ended while counted
                count += len(os.listdir(f"/proc/{pid}/task"))
    return count


def disk_used(path: Path) -> int:
    """Bytes the tree takes on disk (sparse files count what they hold), one filesystem."""
    out = subprocess.run(["du", "-sx", "--block-size=1", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0


def store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("store*") if p.is_file())


def runsc_sandboxes(home: Path) -> int:
    return sum(1 for _ in (home / "pods" / ".runsc").glob("*_sandbox:*.state"))


def netns_count() -> int:
    return sum(1 for _ in Path("/run/netns").glob("turbok-*")) if Path("/run/netns").is_dir() else 0


def pod_cgroups() -> set[Path]:
    """The pods' cgroups under the control plane's parent (/turbok), v1 (one per controller) or v2."""
    return {p for pattern in ("*/turbok/*", "turbok/*") for p in Path("/sys/fs/cgroup").glob(pattern) if p.is_dir()}


def mounts_under(path: Path) -> int:
    prefix = f"{path}/"
    return sum(1 for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if line.split()[4].startswith(prefix))


def pod_dirs(home: Path) -> int:
    root = home / "pods"
    return sum(1 for p in root.iterdir() if not p.name.startswith(".")) + \
        sum(1 for _ in (root / ".removing").glob("*")) if root.is_dir() else 0


SERIES = ("rss MiB", "fds", "host tasks", "disk MiB", "store MiB", "runsc sandboxes", "netns", "available MiB")


def sample(cp: ControlPlaneProcess) -> dict[str, float]:
    assert cp.proc is not None
    pid = cp.proc.pid
    return {"rss MiB": rss(pid) / 2**20, "fds": len(os.listdir(f"/proc/{pid}/fd")), "host tasks": host_tasks(),
            "disk MiB": disk_used(cp.home) / 2**20, "store MiB": store_bytes(cp.home) / 2**20,
            "runsc sandboxes": runsc_sandboxes(cp.home), "netns": netns_count(),
            "available MiB": meminfo()["MemAvailable"] / 2**20}


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    return 3600 * sum((t - mx) * (v - my) for t, v in points) / sxx if sxx else float("nan")


# ------------------------------------------------------------------ the loop

class Claims(threading.Thread):
    """One watch on the namespace's claims: each claim's Sandbox name once it is Ready."""

    def __init__(self, api: Api) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.ready: dict[str, str] = {}
        self.changed = threading.Condition()
        self.stopping = False

    def run(self) -> None:
        version = ""
        with httpx.Client(**self.api.kw, timeout=httpx.Timeout(30, read=None)) as http:
            while not self.stopping:
                try:
                    version = self._watch(http, version)
                except httpx.HTTPError:
                    version = ""  # the server ended the watch badly: list again
                    time.sleep(0.2)

    def _watch(self, http: httpx.Client, version: str) -> str:
        params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
        if version:
            params["resourceVersion"] = version
        with http.stream("GET", f"{EXT}/{NS}/sandboxclaims", params=params) as r:
            if r.status_code == 410:
                return ""
            r.raise_for_status()
            for line in r.iter_lines():
                event = json.loads(line)
                obj = event["object"]
                version = obj["metadata"].get("resourceVersion", version)
                if event["type"] == "ERROR":
                    return ""
                if event["type"] == "BOOKMARK":
                    continue
                status = obj.get("status") or {}
                ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
                name = obj["metadata"]["name"]
                if event["type"] in ("ADDED", "MODIFIED") and ready and (status.get("sandbox") or {}).get("name"):
                    with self.changed:
                        self.ready[name] = status["sandbox"]["name"]
                        self.changed.notify_all()
                elif event["type"] == "DELETED":
                    with self.changed:
                        self.ready.pop(name, None)
        return version

    def wait(self, name: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while name not in self.ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)
            return self.ready[name]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    cycles: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_errors: list[str] = field(default_factory=list)
    ready_ms: list[float] = field(default_factory=list)  # since the last row

    def fail(self, what: str, detail: str) -> None:
        with self.lock:
            self.errors[what] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append(f"{what}: {detail[:200]}")


class Bucket:
    """``rate`` tokens a second, at most one waiting: starts spaced evenly whatever the workers do."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def take(self, deadline: float) -> bool:
        with self.lock:
            at = max(self.next, time.monotonic())
            self.next = at + self.interval
        if at >= deadline:
            return False
        time.sleep(max(0.0, at - time.monotonic()))
        return True


def cycle(api: Api, router: httpx.Client, claims: Claims, tally: Tally, timeout: float) -> None:
    name = f"c-{uuid.uuid4().hex[:10]}"
    posted = time.monotonic()
    try:
        api.claim(NS, name)
    except httpx.HTTPError as e:
        tally.fail("create", repr(e))
        return
    try:
        sandbox = claims.wait(name, timeout)
        if sandbox is None:
            tally.fail("ready", f"{name} not Ready within {timeout:.0f} s")
            return
        ready = (time.monotonic() - posted) * 1e3
        headers = {"X-Sandbox-ID": sandbox, "X-Sandbox-Namespace": NS}
        content = uuid.uuid4().hex.encode()
        r = router.post("/upload", headers=headers, files={"file": ("soak.txt", content)})
        if r.status_code != 200:
            tally.fail("write", f"{r.status_code} {r.text}")
            return
        r = router.post("/execute", headers=headers, json={"command": "cat soak.txt"})
        if r.status_code != 200 or r.json().get("stdout") != content.decode():
            tally.fail("exec", f"{r.status_code} {r.text}")
            return
        with tally.lock:
            tally.cycles += 1
            tally.ready_ms.append(ready)
    except httpx.HTTPError as e:
        tally.fail("router", repr(e))
    finally:
        try:
            r = api.http.delete(f"{EXT}/{NS}/sandboxclaims/{name}")
            if r.status_code not in (200, 202):
                tally.fail("delete", f"{r.status_code} {r.text}")
        except httpx.HTTPError as e:
            tally.fail("delete", repr(e))


def worker(api: Api, cp: ControlPlaneProcess, claims: Claims, tally: Tally, bucket: Bucket, deadline: float,
           timeout: float) -> None:
    mine = Api(cp)  # a connection of its own for the API and the router, as each agent process would have
    with mine.http, httpx.Client(base_url=cp.router_url, headers=cp.router_headers, timeout=timeout) as router:
        while bucket.take(deadline):
            cycle(mine, router, claims, tally, timeout)


# ------------------------------------------------------------------ the run

def setup(api: Api, pool: int) -> None:
    api.post("/api/v1/namespaces", {"metadata": {"name": NS}})
    # No agent in the sandboxes (the router runs commands with ``runsc exec``): its interpreter's start, 0.5-0.9 s
    # of a core under ptrace, would be most of the cycle's cost on this machine.
    api.post(f"{EXT}/{NS}/sandboxtemplates", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
        "metadata": {"name": "sleeper"},
        "spec": {"podTemplate": {"metadata": {"annotations": {"turbok.dev/sandboxd": "off"}},
                                 "spec": {"containers": [{"name": "main", "image": IMAGE, "command": SLEEPER}]}}}})
    api.post(f"{EXT}/{NS}/sandboxwarmpools", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
        "metadata": {"name": "pool"}, "spec": {"replicas": pool, "sandboxTemplateRef": {"name": "sleeper"}}})


def count(api: Api, plural: str, group: str = EXT) -> int:
    return len(api.http.get(f"{group}/{NS}/{plural}").json()["items"])


def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: {what} not within {timeout:.0f} s")
        time.sleep(1)


def leftovers(api: Api, cp: ControlPlaneProcess, cgroups_before: set[Path]) -> dict[str, int]:
    """What is left once the pool is 0 and every Sandbox is gone: each must be 0 (pod cgroups: new since the start;
    the parent is the machine's, other homes' pods are under it too)."""
    return {"runsc sandboxes": runsc_sandboxes(cp.home), "netns": netns_count(),
            "pod cgroups": len(pod_cgroups() - cgroups_before),
            "mounts": mounts_under(cp.home / "pods"), "pod dirs": pod_dirs(cp.home),
            "claims": count(api, "sandboxclaims"), "sandboxes": count(api, "sandboxes", "/apis/agents.x-k8s.io/v1beta1/namespaces"),
            "pods": count(api, "pods", "/api/v1/namespaces")}


def report(rows: list[tuple[float, dict[str, float]]], warmup: float) -> None:
    print("\n| series | at the start of the fit | at the end | slope per hour | slope x 1 h / level |")
    print("|---|---|---|---|---|")
    fit = [(t, s) for t, s in rows if t >= warmup] or rows
    for name in SERIES:
        points = [(t, s[name]) for t, s in fit]
        slope = slope_per_hour(points)
        level = max(abs(points[-1][1]), 1e-9)
        print(f"| {name} | {points[0][1]:.1f} | {points[-1][1]:.1f} | {slope:+.2f} | {slope / level:+.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0, help="cycles started per second, at most")
    parser.add_argument("--workers", type=int, default=16, help="cycles in flight, at most")
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between rows")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes left out of the slopes")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on each wait of a cycle, seconds")
    parser.add_argument("--event-ttl", type=int, default=300, help="seconds Events are kept")
    args = parser.parse_args()
    os.environ["TURBOK_EVENT_TTL_SECONDS"] = str(args.event_ttl)  # the control plane's, started below

    before = {"host tasks": host_tasks(), "available MiB": meminfo()["MemAvailable"] / 2**20}
    cgroups_before = pod_cgroups()
    print(f"before: {before['host tasks']} host tasks, {before['available MiB']:.0f} MiB available", flush=True)
    work = Path(tempfile.mkdtemp(prefix="turbok-bench-soak-"))
    cp = ControlPlaneProcess(work / "home").start()
    api = Api(cp)
    tally = Tally()
    try:
        print(f"turbok serve at {cp.api_url} (home {cp.home}, pid {cp.proc.pid if cp.proc else '?'})", flush=True)
        setup(api, args.pool)
        wait_until("the pool Ready", lambda: api.ready_replicas(NS) >= args.pool, 600)
        claims = Claims(api)
        claims.start()
        time.sleep(1)  # the watch open before the first claim
        start = time.monotonic()
        deadline = start + args.minutes * 60
        bucket = Bucket(args.rate)
        threads = [threading.Thread(target=worker, args=(api, cp, claims, tally, bucket, deadline, args.timeout),
                                    daemon=True) for _ in range(args.workers)]
        for t in threads:
            t.start()
        rows: list[tuple[float, dict[str, float]]] = []
        print("| minute | cycles | per s | errors | claim -> Ready p50 / p99 ms | " + " | ".join(SERIES) + " |")
        print("|---" * (5 + len(SERIES)) + "|", flush=True)
        last_cycles, last_t = 0, start
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=max(0.0, last_t + args.every - time.monotonic()))
                if time.monotonic() >= last_t + args.every:
                    break
            now = time.monotonic()
            with tally.lock:
                done, ready, tally.ready_ms = tally.cycles, tally.ready_ms or [float("nan")], []
                errors = sum(tally.errors.values())
            s = sample(cp)
            rows.append((now - start, s))
            print(f"| {(now - start) / 60:.1f} | {done} | {(done - last_cycles) / (now - last_t):.2f} | {errors} "
                  f"| {pct(ready, 0.5):.0f} / {pct(ready, 0.99):.0f} | "
                  + " | ".join(f"{s[k]:.1f}" for k in SERIES) + " |", flush=True)
            last_cycles, last_t = done, now
        claims.stopping = True
        elapsed = time.monotonic() - start
        print(f"\n{tally.cycles} cycles in {elapsed / 60:.1f} min ({tally.cycles / elapsed:.2f}/s), "
              f"errors: {dict(tally.errors) or 0}", flush=True)
        for line in tally.first_errors:
            print(f"  {line}")
        report(rows, args.warmup * 60)
        # Everything deleted: the pool to 0, then what is left for deleted objects, counted.
        r = api.http.patch(f"{EXT}/{NS}/sandboxwarmpools/pool", json={"spec": {"replicas": 0}},
                           headers={"Content-Type": "application/merge-patch+json"})
        r.raise_for_status()
        wait_until("every Sandbox and Pod gone",
                   lambda: not count(api, "sandboxes", "/apis/agents.x-k8s.io/v1beta1/namespaces")
                   and not count(api, "pods", "/api/v1/namespaces"), 600)
        deadline_left = time.monotonic() + 120  # the reaper's teardowns finish off the path
        while any((left := leftovers(api, cp, cgroups_before)).values()) and time.monotonic() < deadline_left:
            time.sleep(2)
        print("left behind: " + ", ".join(f"{k} {v}" for k, v in left.items()), flush=True)
        after = {"host tasks": host_tasks(), "available MiB": meminfo()["MemAvailable"] / 2**20}
        print(f"with the control plane idle and empty: {after['host tasks']} host tasks "
              f"({after['host tasks'] - before['host tasks']:+d} against before it started), "
              f"{after['available MiB']:.0f} MiB available ({after['available MiB'] - before['available MiB']:+.0f})")
        if any(left.values()) or tally.errors:
            raise SystemExit("soak: errors, or something was left behind")
    finally:
        cp.stop()
        print("cleaning up ...", flush=True)
        stop_sandboxes(Home(cp.home), remove=True)
        asyncio.run(remove_half_made(Home(cp.home)))
        unmount_under(work)
        if not mounts_under(work):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
