"""A node in one event loop: the real registry, the real node, a fake pod runtime and a fake clock.

``NodeHarness`` writes Pods through the registry (as the API does), reads them
back, advances the node's clock and waits for conditions; ``runtime`` is a
``turbok.node.testing.FakePodRuntime`` recording every call.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import default_registry
from turbok.embedded.client import EmbeddedClient
from turbok.node.node import Node, NodeSettings
from turbok.node.nodeinfo import Machine
from turbok.node.testing import FakeClock, FakePodRuntime
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]
NODE = "node1"
GiB = 2**30


def machine() -> Machine:
    return Machine(cpus=4, memory_bytes=8 * GiB, memory_available_bytes=6 * GiB, disk_bytes=100 * GiB,
                   disk_available_bytes=80 * GiB, kernel="6.1.0-test", os_image="Debian GNU/Linux 12 (bookworm)",
                   machine_id="m" * 32, boot_id="b-o-o-t", internal_ip="10.0.0.5")


class NodeHarness:
    def __init__(self, tmp: Path, registry: ObjectRegistry, runtime: FakePodRuntime, clock: FakeClock) -> None:
        self.tmp = tmp
        self.registry = registry
        self.client = EmbeddedClient(registry)
        self.runtime = runtime
        self.clock = clock
        self.kinds = registry.kinds
        self.pod_kind = self.kinds.by_kind("v1", "Pod")
        self.event_kind = self.kinds.by_kind("v1", "Event")
        self.node: Node | None = None

    def make_node(self, **kw: Any) -> Node:
        kw.setdefault("settings", NodeSettings(relist_seconds=1.0, cpu_overcommit=1.0))  # the kubelet's accounting
        kw.setdefault("machine", machine)
        return Node(self.client, self.runtime, state_dir=self.tmp / "node", name=NODE, clock=self.clock,
                    kubelet_version="v1.34.0", runtime_version="gvisor://release-20221219.0",
                    internal_ip="10.0.0.5", **kw)

    async def start(self, **kw: Any) -> Node:
        self.node = self.make_node(**kw)
        await self.node.start()
        return self.node

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.stop()
            self.node = None

    # ------------------------------------------------------------ objects

    def create(self, obj: Obj) -> Obj:
        kind = self.kinds.by_kind(obj["apiVersion"], obj["kind"])
        return self.registry.create(kind, copy.deepcopy(obj), namespace=obj["metadata"].get("namespace", "default"))

    def pod(self, name: str, namespace: str = "default") -> Obj | None:
        return self.registry.try_get(self.pod_kind, namespace, name)

    def delete(self, name: str, namespace: str = "default", **kw: Any) -> None:
        self.registry.delete(self.pod_kind, namespace, name, **kw)

    def events(self, name: str | None = None, reason: str | None = None) -> list[Obj]:
        out = []
        for e in self.registry.list(self.event_kind, "default").items:
            if name is not None and e["involvedObject"].get("name") != name:
                continue
            if reason is not None and e.get("reason") != reason:
                continue
            out.append(e)
        return sorted(out, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]

    # ------------------------------------------------------------ waiting

    async def reaped(self) -> None:
        """Wait for the node's background removals (what a deleted Pod's stopped sandbox left)."""
        if self.node is not None:
            await self.node.ctx.reaper.drain()

    async def settle(self) -> None:
        """Let every task that can run, run (events and statuses are written in the background)."""
        for _ in range(50):
            await asyncio.sleep(0)
        if self.node is not None:
            await self.node.events.flush()
            await self.node.scheduler_events.flush()
        for _ in range(50):
            await asyncio.sleep(0)

    async def wait(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def wait_pod(self, name: str, check: Callable[[Obj], Any], what: str = "", timeout: float = 5.0) -> Obj:
        def probe() -> Obj | None:
            pod = self.pod(name)
            try:
                return pod if pod is not None and check(pod) else None
            except AssertionError:  # e.g. no container status yet
                return None
        result: Obj = await self.wait(probe, timeout, what or f"pod {name}")
        return result

    async def wait_phase(self, name: str, phase: str, timeout: float = 5.0) -> Obj:
        return await self.wait_pod(name, lambda p: p.get("status", {}).get("phase") == phase, f"{name} {phase}",
                                   timeout)

    async def wait_ready(self, name: str, ready: bool = True, timeout: float = 5.0) -> Obj:
        return await self.wait_pod(name, lambda p: condition(p, "Ready") == ("True" if ready else "False"),
                                   f"{name} Ready={ready}", timeout)

    async def wait_gone(self, name: str, timeout: float = 5.0) -> None:
        await self.wait(lambda: self.pod(name) is None, timeout, what=f"pod {name} gone")


def condition(pod: Obj, type_: str) -> str | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == type_:
            return str(c["status"])
    return None


def container_status(pod: Obj, name: str, init: bool = False) -> Obj:
    key = "initContainerStatuses" if init else "containerStatuses"
    for c in pod.get("status", {}).get(key) or []:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no status for container {name}: {pod.get('status')}")


def pod(name: str = "p", *, containers: list[Obj] | None = None, node: str | None = NODE,
        annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    body: Obj = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": name, "namespace": "default"},
                 "spec": {"containers": containers or [{"name": "main", "image": "python-runtime-sandbox"}],
                          **spec}}
    if node:
        body["spec"]["nodeName"] = node
    if annotations:
        body["metadata"]["annotations"] = annotations
    return body


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    h = NodeHarness(tmp_path, registry, FakePodRuntime(tmp_path / "pods"), FakeClock())
    yield h
    await h.stop()
    registry.db.close()


@pytest.fixture
async def node(harness: NodeHarness) -> AsyncIterator[NodeHarness]:
    """The harness with its node started."""
    await harness.start()
    yield harness
