"""The API server under large writes: a neighbour's latency, and memory after many large patches.

1. Neighbour latency. One client GETs a small object (the ``default`` namespace) over and over, 5 ms
   apart, on its own connection, while another client (its own process, so that building and
   parsing 1.4 MB bodies costs the neighbour nothing) writes ``--writes`` SandboxTemplates of about
   1.4 MB each (30,000 env vars: under the 1.5 MiB object limit, and the costliest shape to decode
   and validate), each created and then replaced. The template controller then rewrites each one (its
   label), as controllers do. Figure: the neighbour's p50 / p99 / max during the writes. Reference:
   the same neighbour in the same run with nothing else going on.
2. Memory. RSS of ``turbok serve`` before and after ``--patches`` merge patches of one template
   carrying a ``--patch-mib`` MiB env value (each patch a new version of that size); the watch
   history's byte bound (64 MiB) is what keeps old versions from piling up. Over 1.4 MiB the run
   raises the server's object and body limits to fit (``TURBOK_MAX_OBJECT_BYTES``,
   ``TURBOK_MAX_REQUEST_BYTES``), to replay the 10 MiB case of the original report.

``turbok serve`` runs as a user runs it, in a temporary home; nothing here starts a sandbox. Usage::

    .venv/bin/python bench/apiserver.py [--writes 10] [--patches 40] [--patch-mib 1]

To measure another checkout (say, the code before a change), put it first on the server's path:
``PYTHONPATH=/path/to/checkout .venv/bin/python bench/apiserver.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import ControlPlaneProcess  # noqa: E402

TEMPLATES = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/default/sandboxtemplates"
ENTRIES = 30_000


def template(name: str, value: str = "x" * 20) -> dict[str, Any]:
    env = [{"name": f"V{i}", "value": value} for i in range(ENTRIES)]
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": name},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python", "env": env}]}}}}


def client(where: tuple[str, str, str]) -> httpx.Client:
    """A client of the API at ``where``: (URL, CA file, token)."""
    url, ca, token = where
    return httpx.Client(base_url=url, verify=ca, timeout=60,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def where(cp: ControlPlaneProcess) -> tuple[str, str, str]:
    return cp.api_url, str(cp.home / "pki" / "ca.crt"), cp.token


class Neighbour(threading.Thread):
    def __init__(self, cp: ControlPlaneProcess) -> None:
        super().__init__(daemon=True)
        self.http = client(where(cp))
        self.latencies: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.perf_counter()
            self.http.get("/api/v1/namespaces/default").raise_for_status()
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.005)

    def measure(self, work: Any) -> list[float]:
        self.latencies = []
        work()
        return list(self.latencies)


def write_templates(api: tuple[str, str, str], count: int, out: Any) -> None:
    """In a child process: create and replace ``count`` large templates; send back each one's time."""
    writer = client(api)
    bodies = [(json.dumps(template(f"t{i}")).encode(), template(f"t{i}", value="y" * 20)) for i in range(count)]
    times = []
    for i, (body, replaced) in enumerate(bodies):
        started = time.perf_counter()
        created = writer.post(TEMPLATES, content=body)
        if created.status_code != 201:
            raise SystemExit(f"create answered {created.status_code}: {created.text[:300]}")
        found = re.search(rb'"resourceVersion":"(\d+)"', created.content)
        assert found is not None
        replaced["metadata"]["resourceVersion"] = found.group(1).decode()
        # 409 when the template controller relabelled it first: a write all the same.
        writer.put(f"{TEMPLATES}/t{i}", content=json.dumps(replaced).encode())
        times.append(time.perf_counter() - started)
    out.put(times)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"p50 {statistics.median(xs) * 1000:.1f} / p99 {p99 * 1000:.1f} / max {xs[-1] * 1000:.1f} ms (n={len(xs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=10)
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--patch-mib", type=float, default=1.0)
    args = parser.parse_args()
    blob = int(args.patch_mib * 1024 * 1024)
    if blob > 1_400_000:
        os.environ["TURBOK_MAX_OBJECT_BYTES"] = str(blob + 1024 * 1024)
        os.environ["TURBOK_MAX_REQUEST_BYTES"] = str(blob + 2 * 1024 * 1024)
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="turbok-bench-api-") as tmp:
        cp = ControlPlaneProcess(Path(tmp) / "home").start()
        assert cp.proc is not None
        try:
            writer = client(where(cp))
            neighbour = Neighbour(cp)
            neighbour.start()
            time.sleep(1.0)  # settle: the controllers' start-up work is done
            idle = neighbour.measure(lambda: time.sleep(2.0))

            context = multiprocessing.get_context("spawn")
            results: Any = context.Queue()
            child = context.Process(target=write_templates, args=(where(cp), args.writes, results))
            write_times: list[float] = []

            def writes() -> None:
                child.start()
                write_times.extend(results.get(timeout=600))
                child.join()
                time.sleep(1.0)  # the controller's rewrites of the last ones

            during = neighbour.measure(writes)
            neighbour.stopping.set()
            neighbour.join()
            print(f"neighbour GET, idle:                {summary(idle)}")
            print(f"neighbour GET, during large writes: {summary(during)}")
            print(f"one large create + replace (client side): p50 {statistics.median(write_times) * 1000:.0f} ms")

            before = rss_mib(cp.proc.pid)
            big = template("patched")
            container = big["spec"]["podTemplate"]["spec"]["containers"][0]
            container["env"] = [{"name": "BLOB", "value": "x" * blob}]
            writer.post(TEMPLATES, content=json.dumps(big).encode()).raise_for_status()
            for i in range(args.patches):
                container["env"] = [{"name": "BLOB", "value": f"{i:08}" + "y" * (blob - 8)}]
                writer.patch(f"{TEMPLATES}/patched", content=json.dumps({"spec": big["spec"]}).encode(),
                             headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
            time.sleep(2.0)
            after = rss_mib(cp.proc.pid)
            print(f"RSS of turbok serve: {before:.0f} MiB before, {after:.0f} MiB after {args.patches} patches of a "
                  f"{args.patch_mib:g} MiB object (+{after - before:.0f} MiB)")
            writer.close()
        finally:
            cp.stop()
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
