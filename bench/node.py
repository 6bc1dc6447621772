"""Benchmark of the embedded node's boot path against the pod runtime alone, in the same run.

A cold Pod through the node: the Pod is created without a node (as a controller
creates it), the node's scheduler binds it (``pods/binding``), its worker boots
the pod sandbox and starts the container (``run_pod_sandbox``,
``start_container``) and the ``pods/status`` write saying Ready commits; timed
from the create to that commit (seen by a commit listener, as a watch sees it).
Against: the same two runtime calls of the same config made directly (what the
node cannot avoid). Alternating, one at a time; teardown untimed. The ratio is
the node's overhead (scheduling, status, events, the worker); the runtime's own
against raw ``runsc run`` is ``bench/runtime.py``'s.

Usage (root, runsc, base image built)::

    .venv/bin/python bench/node.py [--boots 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from turbok.api.kinds import default_registry
from turbok.embedded.client import EmbeddedClient
from turbok.node.node import Node, NodeSettings
from turbok.node.podspec import container_config, sandbox_config
from turbok.runtime.cri import SecurityContext
from turbok.runtime.ids import sandbox_id
from turbok.runtime.images import ImageStore
from turbok.runtime.pods_gvisor import GvisorPodRuntime
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

CONTAINER = {"name": "main", "image": "python-runtime-sandbox"}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boots", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        root = Path(tmp)
        registry = ObjectRegistry(SqliteStore(root / "store.db"), default_registry())
        registry.ensure_namespace("default")
        runtime = GvisorPodRuntime(root / "pods", ImageStore())
        node = Node(EmbeddedClient(registry), runtime, state_dir=root / "node", name="bench",
                    settings=NodeSettings(relist_seconds=1.0))
        await node.start()
        pod_kind = registry.kinds.by_kind("v1", "Pod")
        ready: dict[str, float] = {}

        def listen(event: Any) -> None:
            if event.resource == pod_kind.key and event.name not in ready and event.type == "MODIFIED":
                obj = event.object()
                if any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in obj.get("status", {}).get("conditions") or []):
                    ready[event.name] = time.perf_counter()

        registry.hub.listeners.append(listen)
        through_node: list[float] = []
        direct: list[float] = []
        try:
            for i in range(args.boots):
                name = f"p{i}"
                t0 = time.perf_counter()
                registry.create(pod_kind, {"apiVersion": "v1", "kind": "Pod",
                                           "metadata": {"name": name, "namespace": "default"},
                                           "spec": {"containers": [dict(CONTAINER)]}}, namespace="default")
                while name not in ready:
                    await asyncio.sleep(0.001)
                through_node.append(ready[name] - t0)
                registry.delete(pod_kind, "default", name)
                while registry.try_get(pod_kind, "default", name) is not None:
                    await asyncio.sleep(0.01)

                fake = {"metadata": {"name": f"d{i}", "namespace": "default", "uid": f"direct-{i}"},
                        "spec": {"containers": [dict(CONTAINER)]}}
                rid = sandbox_id(f"direct-{i}")
                t0 = time.perf_counter()
                await runtime.run_pod_sandbox(sandbox_config(fake, rid, []))
                await runtime.start_container(rid, container_config(CONTAINER, env={}, mounts=[],
                                                                    security=SecurityContext(), attempt=0))
                direct.append(time.perf_counter() - t0)
                await runtime.remove_pod_sandbox(rid)
        finally:
            await node.stop()
            await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                                 return_exceptions=True)
            registry.db.close()
    ms = 1000.0
    print(f"cold Pod -> Ready through the node: p50 {statistics.median(through_node) * ms:.0f} ms, "
          f"p90 {pct(through_node, 0.9) * ms:.0f} ms (n={len(through_node)})")
    print(f"run_pod_sandbox + start_container directly: p50 {statistics.median(direct) * ms:.0f} ms, "
          f"p90 {pct(direct, 0.9) * ms:.0f} ms")
    print(f"node / runtime (p50): {statistics.median(through_node) / statistics.median(direct):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
