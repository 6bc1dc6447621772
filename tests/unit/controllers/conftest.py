"""A control plane in one event loop: real registry and controllers, a fake runtime.

``Cluster`` writes objects through the registry (as the API does) and waits for
conditions; ``ControllerRuntime`` is the sandboxd fake runtime extended with
what controllers observe: started specs, main processes that exit, start
failures.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from turbok.api.kinds import default_registry
from turbok.controllers.suite import ControllerSuite
from turbok.embedded.client import EmbeddedClient
from turbok.runtime.base import Phase, RuntimeState, SandboxSpec
from turbok.sandboxd.testing import FakeRuntime
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]


class ControllerRuntime(FakeRuntime):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.started: dict[str, SandboxSpec] = {}
        self.exit_codes: dict[str, int] = {}
        self.fail_start: Exception | None = None
        self.attempts: dict[str, int] = {}

    async def start(self, spec: SandboxSpec) -> RuntimeState:
        self.attempts[spec.id] = self.attempts.get(spec.id, 0) + 1
        if self.fail_start is not None:
            raise self.fail_start
        self.started[spec.id] = spec
        self.exit_codes.pop(spec.id, None)
        return await super().start(spec)

    def exit(self, rid: str, code: int) -> None:
        """The main process of ``rid`` ends on its own with ``code``."""
        self._running.discard(rid)
        self.exit_codes[rid] = code

    async def state(self, id: str) -> RuntimeState:
        state = await super().state(id)
        if state.phase == Phase.STOPPED and id in self.exit_codes:
            return RuntimeState(id=id, phase=Phase.STOPPED, isolation=self.isolation,
                                exit_code=self.exit_codes[id], reason="Exited")
        return state

    def running(self) -> set[str]:
        return set(self._running)


class Cluster:
    def __init__(self, registry: ObjectRegistry, runtime: ControllerRuntime, suite: ControllerSuite) -> None:
        self.registry = registry
        self.runtime = runtime
        self.suite = suite
        self.kinds = registry.kinds
        self.sandbox = self.kinds.resolve("sandbox")
        self.claim = self.kinds.resolve("sandboxclaim")
        self.pool = self.kinds.resolve("sandboxwarmpool")
        self.template = self.kinds.resolve("sandboxtemplate")

    def create(self, obj: Obj) -> Obj:
        kind = self.kinds.by_kind(obj["apiVersion"], obj["kind"])
        return self.registry.create(kind, copy.deepcopy(obj), namespace=obj["metadata"].get("namespace", "default"))

    def get(self, kind: Any, name: str, namespace: str = "default") -> Obj | None:
        return self.registry.try_get(kind, namespace, name)

    def patch(self, kind: Any, name: str, patch: Obj, namespace: str = "default") -> Obj:
        return self.registry.patch(kind, namespace, name, "application/merge-patch+json", patch)

    def sandboxes(self, namespace: str = "default") -> list[Obj]:
        return self.registry.list(self.sandbox, namespace).items

    async def wait(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def wait_condition(self, kind: Any, name: str, type_: str, status: str = "True",
                             reason: str | None = None, timeout: float = 5.0) -> Obj:
        def check() -> Obj | None:
            obj = self.get(kind, name)
            for cond in (obj or {}).get("status", {}).get("conditions", []):
                if cond["type"] == type_ and cond["status"] == status and (reason is None or cond["reason"] == reason):
                    return obj
            return None

        result: Obj = await self.wait(check, timeout, f"{kind.kind} {name} {type_}={status} {reason or ''}")
        return result


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    runtime = ControllerRuntime(tmp_path / "sandboxes")
    suite = ControllerSuite(EmbeddedClient(registry), runtime)
    await suite.start()
    yield Cluster(registry, runtime, suite)
    await suite.stop()
    registry.db.close()


def template(name: str = "tpl", **spec: Any) -> Obj:
    pod: Obj = {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox",
                                         "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}}}]}}
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"podTemplate": pod, **spec}}


def pool(name: str = "pool", template_name: str = "tpl", replicas: int = 2, **spec: Any) -> Obj:
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": template_name}, **spec}}


def claim(name: str = "c1", pool_name: str = "pool", **spec: Any) -> Obj:
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"warmPoolRef": {"name": pool_name}, **spec}}


def sandbox(name: str = "sb", **spec: Any) -> Obj:
    pod: Obj = {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"podTemplate": pod, **spec}}
