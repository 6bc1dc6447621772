"""Benchmark of teardown: Pods created and deleted in cycles through the node, against raw runsc in the same run.

Reference first, while this process is not yet the sandboxes' subreaper: ``--raw``
sandboxes made with ``runsc run --detach`` (the base image, ``sleep``), then torn
down as a script would, ``runsc kill KILL`` + ``runsc delete --force`` one after
the other (the per-sandbox latency Debian's runsc gives), and the same number
again all at once (raw throughput). Then the node (``turbok.node.Node`` over a
``GvisorPodRuntime`` with a private pod network): ``--cycles`` times, ``--batch``
Pods are created and become Ready, then all are deleted at once while ``--batch``
new Pods boot (to see boots go on during teardowns). Reported: how long the
deletes took to return (the API's part), to see every Pod gone (stopped:
finalized), to see every removal done (``Reaper.drain``: network, disk,
directory), the teardown rate, the boots' time to Ready during teardowns; and
the leaks, each counted: runsc sandboxes (``runsc list``), network namespaces,
cgroups, mounts, pod directories, store rows, zombie processes.

Usage (root, runsc, nft, base image built; boots 2 x cycles x batch sandboxes)::

    .venv/bin/python bench/churn.py [--cycles 3] [--batch 10] [--raw 10] [--teardowns 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from turbok.api.kinds import default_registry
from turbok.embedded.client import EmbeddedClient
from turbok.node.node import Node, NodeSettings
from turbok.node.reaper import DEFAULT_SLOTS
from turbok.runtime import orphans
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.runtime.network import PodNetwork
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

#: Leaves on SIGTERM at once (as the sandbox agent does): what is timed is the runtime's teardown.
CONTAINER = {"name": "main", "image": "python-runtime-sandbox",
             "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]}
#: Outside the control plane's 10.213.0.0/16 and the tests' 10.224.0.0/12.
NETWORK: dict[str, Any] = {"name": "tkchrn", "cidr": "10.222.250.0/24"}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)] if values else float("nan")


# ------------------------------------------------------------------ the raw reference

def raw_bundle(root: Path, images: ImageStore) -> Path:
    bundle = root / "raw-bundle"
    bundle.mkdir()
    subprocess.run(["runsc", "spec", "--", "/bin/sleep", "100000"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(images.builtin_dir(BASE_IMAGE) / "rootfs"), "readonly": True}
    spec["process"]["terminal"] = False
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


async def runsc(state: Path, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec("runsc", f"--root={state}", "--network=none", *args,
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, start_new_session=True)
    await proc.wait()


async def raw_teardown(state: Path, sid: str) -> None:
    await runsc(state, "kill", sid, "KILL")
    await runsc(state, "delete", "--force", sid)


async def bench_raw(root: Path, images: ImageStore, n: int) -> dict[str, float]:
    state, bundle = root / "raw-state", raw_bundle(root, images)
    ids = [f"churn-raw-{os.getpid()}-{i:05d}" for i in range(2 * n)]  # prefix-free: runsc matches ids by prefix
    await asyncio.gather(*(runsc(state, "run", "--detach", f"--bundle={bundle}", sid) for sid in ids))
    one: list[float] = []
    for sid in ids[:n]:
        t0 = time.perf_counter()
        await raw_teardown(state, sid)
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    await asyncio.gather(*(raw_teardown(state, sid) for sid in ids[n:]))
    together = time.perf_counter() - t0
    return {"p50": statistics.median(one), "rate": n / together}


# ------------------------------------------------------------------ leaks

def leaks(node: Node, net: PodNetwork, rids: set[str]) -> dict[str, int]:
    rt: Any = node.runtime
    listed = subprocess.run(["runsc", f"--root={rt.state_dir}", "list", "--quiet"], capture_output=True,
                            text=True).stdout.split()
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    zombies = [p for p in orphans.children() if Path(f"/proc/{p}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"]
    return {
        "runsc sandboxes": len(listed),
        "netns": len(list(net.netns_dir.glob(f"{net.name}-*"))),
        "cgroups": sum(1 for rid in rids for pattern in (f"*/turbok/{rid}*", f"turbok/{rid}*")  # v1, v2
                       for _ in Path("/sys/fs/cgroup").glob(pattern)),
        "mounts": sum(1 for m in mounts for d in (*rids, ".removing") if m.startswith(f"{rt.root}/{d}/")),
        "pod dirs": sum(1 for p in rt.root.iterdir() if p.name in rids) +
        len(list((rt.root / ".removing").glob("*"))),
        "store rows": len(node.client.registry.list(node.pod_kind, "default").items),  # type: ignore[attr-defined]
        "zombies": len(zombies),
    }


# ------------------------------------------------------------------ the node

async def bench_node(root: Path, images: ImageStore, *, cycles: int, batch: int,
                     teardowns: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    from turbok.runtime.pods_gvisor import GvisorPodRuntime  # from here on, this process reaps its sandboxes

    net = PodNetwork(root / "net", shared_dir=root / "machine", **NETWORK)
    await asyncio.to_thread(net.ensure_host)
    registry = ObjectRegistry(SqliteStore(root / "store.db"), default_registry())
    registry.ensure_namespace("default")
    runtime = GvisorPodRuntime(root / "pods", images, network=net)
    node = Node(EmbeddedClient(registry), runtime, state_dir=root / "node", name="bench", network=net,
                serve_dns=False, settings=NodeSettings(relist_seconds=1.0, teardowns=teardowns))
    pod_kind = registry.kinds.by_kind("v1", "Pod")
    ready: dict[str, float] = {}
    gone: dict[str, float] = {}

    def listen(event: Any) -> None:
        if event.resource != pod_kind.key:
            return
        if event.type == "DELETED":
            gone[event.name] = time.perf_counter()
        elif event.name not in ready and any(c.get("type") == "Ready" and c.get("status") == "True" for c in
                                             event.object().get("status", {}).get("conditions") or []):
            ready[event.name] = time.perf_counter()

    def create(name: str) -> None:
        registry.create(pod_kind, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                   "spec": {"containers": [dict(CONTAINER)]}}, namespace="default")

    async def until(check: Any, what: str, timeout: float = 300) -> None:
        deadline = time.perf_counter() + timeout
        while not check():
            if time.perf_counter() > deadline:
                raise SystemExit(f"churn: {what} not within {timeout:.0f} s")
            await asyncio.sleep(0.002)

    registry.hub.listeners.append(listen)
    await node.start()
    out: dict[str, list[float]] = {"returned": [], "gone": [], "drained": [], "rate": [], "boot": [],
                                   "boot alone": []}
    rids: set[str] = set()
    try:
        names = [f"c0-{i}" for i in range(batch)]
        started = time.perf_counter()
        for name in names:  # the same number of boots with no teardown under way: what the others compare to
            create(name)
        await until(lambda names=names: all(n in ready for n in names), "boots")
        out["boot alone"] = [ready[n] - started for n in names]
        for cycle in range(cycles):
            await until(lambda names=names: all(n in ready for n in names), "boots")
            rids |= set(await runtime.list_pod_sandboxes())
            t0 = time.perf_counter()
            for name in names:
                registry.delete(pod_kind, "default", name)
            out["returned"].append(time.perf_counter() - t0)
            following = [f"c{cycle + 1}-{i}" for i in range(batch)] if cycle + 1 < cycles else []
            started = time.perf_counter()
            for name in following:  # these boot while the batch is torn down
                create(name)
            await until(lambda names=names: all(n in gone for n in names), "deletions")
            out["gone"].append(max(gone[n] for n in names) - t0)
            out["rate"].append(batch / out["gone"][-1])
            await node.ctx.reaper.drain()
            out["drained"].append(time.perf_counter() - t0)
            if following:
                await until(lambda f=following: all(n in ready for n in f), "boots during teardown")
                out["boot"].extend(ready[n] - started for n in following)
            names = following
        deadline = time.perf_counter() + 20  # a loop device, a veth go a moment after their unmount
        while any((found := leaks(node, net, rids)).values()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.2)
        return out, found
    finally:
        await node.stop()
        for rid in await runtime.list_pod_sandboxes():
            await runtime.remove_pod_sandbox(rid)
        await asyncio.to_thread(net.remove_host)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--raw", type=int, default=10)
    parser.add_argument("--teardowns", type=int, default=DEFAULT_SLOTS)
    args = parser.parse_args()
    if shutil.which("runsc") is None:
        raise SystemExit("churn: runsc not found (apt-get install -y runsc)")
    images = ImageStore()
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as tmp:
        root = Path(tmp)
        raw = await bench_raw(root, images, args.raw)
        print(f"raw runsc kill+delete: {raw['p50']:.3f} s each (p50, one at a time), {raw['rate']:.1f}/s "
              f"({args.raw} at once)")
        out, found = await bench_node(root, images, cycles=args.cycles, batch=args.batch, teardowns=args.teardowns)
    print(f"node, {args.cycles} cycles of {args.batch} Pods, {args.teardowns} teardown slots:")
    print(f"  deletes returned in      p50 {statistics.median(out['returned']) * 1000:.1f} ms")
    print(f"  all Pods gone after      p50 {statistics.median(out['gone']):.2f} s "
          f"-> {statistics.median(out['rate']):.1f} teardowns/s (raw, at once: {raw['rate']:.1f}/s; "
          f"x{statistics.median(out['rate']) / raw['rate']:.1f})")
    print(f"  all removals done after  p50 {statistics.median(out['drained']):.2f} s")
    print(f"  {args.batch} boots alone           p50 {pct(out['boot alone'], 0.5):.2f} s, "
          f"p95 {pct(out['boot alone'], 0.95):.2f} s")
    if out["boot"]:
        print(f"  {args.batch} boots, {args.batch} teardowns p50 {pct(out['boot'], 0.5):.2f} s, "
              f"p95 {pct(out['boot'], 0.95):.2f} s")
    print("  left behind: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    if any(found.values()):
        raise SystemExit("churn: something was left behind")


if __name__ == "__main__":
    asyncio.run(main())
