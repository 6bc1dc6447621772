"""A control plane in one event loop: the real registry and controllers, and a fake node.

``Cluster`` writes objects through the registry (as the API does) and waits for
conditions. ``FakeNode`` stands where the embedded node (or a kubelet) stands:
it binds the Pods it sees to itself, runs them (Running, Ready, a podIP) unless
told to hold, crash, finish or fail one, and completes graceful deletions,
remembering each Pod as it was when deleted (its ``turbok.dev/on-delete``).
Everything goes through the registry, as a node's requests through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from turbok.api import meta as m
from turbok.api.kinds import POD, default_registry
from turbok.api.status import ApiError
from turbok.controllers.suite import ControllerSuite
from turbok.embedded.client import EmbeddedClient
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

Obj = dict[str, Any]


def _cond(type_: str, status: bool, reason: str = "", message: str = "") -> Obj:
    out: Obj = {"type": type_, "status": "True" if status else "False", "lastProbeTime": None,
                "lastTransitionTime": m.now()}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


class FakeNode:
    name = "node-1"

    def __init__(self, registry: ObjectRegistry) -> None:
        self.registry = registry
        #: Pods the node binds but does not start (they stay Pending).
        self.hold: set[str] = set()
        #: Pods as they were when their deletion completed, by name (the last one of that name).
        self.deleted: dict[str, Obj] = {}
        #: Pods this node has started, in order (a name again after it was deleted and made again).
        self.started: list[str] = []
        #: When set, the node answers every Pod's deletion only once this is set (a slow teardown).
        self.teardown_gate: asyncio.Event | None = None
        self._ips = itertools.count(2)
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.registry.hub.listeners.append(self._on_event)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_event(self, event: Any) -> None:
        if event.resource == POD.key and event.type != "DELETED":
            self._queue.put_nowait((event.namespace, event.name))

    async def _run(self) -> None:
        while True:
            ns, name = await self._queue.get()
            try:
                await self._handle(ns, name)
            except ApiError:
                self._queue.put_nowait((ns, name))  # raced with another write: look again
                await asyncio.sleep(0.01)

    async def _handle(self, ns: str, name: str) -> None:
        pod = self.registry.try_get(POD, ns, name)
        if pod is None:
            return
        if pod["metadata"].get("deletionTimestamp"):
            if self.teardown_gate is not None:
                await self.teardown_gate.wait()
            current = self.registry.try_get(POD, ns, name)
            if current is not None and current["metadata"]["uid"] == pod["metadata"]["uid"]:
                self.deleted[name] = current
                self.registry.delete(POD, ns, name, grace_period_seconds=0,
                                     preconditions={"uid": pod["metadata"]["uid"]})
            return
        if not (pod.get("spec") or {}).get("nodeName"):
            self.registry.create_subresource(POD, ns, name, "binding", {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.name}})
            return
        status = pod.get("status") or {}
        if name in self.hold or status.get("phase") != "Pending" or status.get("containerStatuses"):
            return
        self.run(name, ns)

    # ------------------------------------------------------------ what a test makes the node report

    def _write(self, name: str, ns: str, status: Obj) -> Obj:
        pod = self.registry.get(POD, ns, name)
        kept = [c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == "PodScheduled"]
        status["conditions"] = kept + status.get("conditions", [])
        body = copy.deepcopy(pod)
        body["status"] = {**(pod.get("status") or {}), **status}
        return self.registry.update(POD, body, namespace=ns, subresource="status")

    def _containers(self, pod: Obj, state: Obj, *, ready: bool, restarts: int = 0, last: Obj | None = None) -> list[Obj]:
        return [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready, "started": ready,
                 "restartCount": restarts, "state": state, "lastState": last or {}}
                for c in (pod.get("spec") or {}).get("containers") or []]

    def run(self, name: str, ns: str = "default", ip: str | None = None, *,
            extra_conditions: list[Obj] | None = None) -> Obj:
        """The Pod's containers run and are Ready; it has an address."""
        pod = self.registry.get(POD, ns, name)
        address = ip or f"10.244.0.{next(self._ips)}"
        self.started.append(name)
        return self._write(name, ns, {
            "phase": "Running", "podIP": address, "podIPs": [{"ip": address}], "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}], "startTime": m.now(),
            "conditions": [_cond("PodReadyToStartContainers", True), _cond("Initialized", True),
                           _cond("Ready", True), _cond("ContainersReady", True), *(extra_conditions or [])],
            "containerStatuses": self._containers(pod, {"running": {"startedAt": m.now()}}, ready=True)})

    def crash_loop(self, name: str, restarts: int, ns: str = "default", exit_code: int = 1) -> Obj:
        """A container keeps exiting: the kubelet's CrashLoopBackOff, the Pod Running but not Ready."""
        pod = self.registry.get(POD, ns, name)
        message = "containers with unready status: [main]"
        last = {"terminated": {"exitCode": exit_code, "reason": "Error", "startedAt": m.now(), "finishedAt": m.now()}}
        waiting = {"waiting": {"reason": "CrashLoopBackOff",
                               "message": f"back-off 10s restarting failed container=main pod={name}"}}
        status = pod.get("status") or {}
        return self._write(name, ns, {
            "phase": "Running", "podIP": status.get("podIP"), "podIPs": status.get("podIPs") or [],
            "conditions": [_cond("PodReadyToStartContainers", True), _cond("Initialized", True),
                           _cond("Ready", False, "ContainersNotReady", message),
                           _cond("ContainersReady", False, "ContainersNotReady", message)],
            "containerStatuses": self._containers(pod, waiting, ready=False, restarts=restarts, last=last)})

    def finish(self, name: str, exit_code: int, ns: str = "default") -> Obj:
        """Every container ended and none restarts (restartPolicy Never, or OnFailure and exit 0)."""
        pod = self.registry.get(POD, ns, name)
        reason = "Completed" if exit_code == 0 else "Error"
        terminated = {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": m.now()}}
        return self._write(name, ns, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [_cond("PodReadyToStartContainers", False), _cond("Initialized", True, "PodCompleted"),
                           _cond("Ready", False, "PodCompleted"), _cond("ContainersReady", False, "PodCompleted")],
            "containerStatuses": self._containers(pod, terminated, ready=False)})

    def wait_for_image(self, name: str, reason: str, message: str, ns: str = "default") -> Obj:
        """A container cannot start for want of its image."""
        pod = self.registry.get(POD, ns, name)
        return self._write(name, ns, {
            "phase": "Pending",
            "conditions": [_cond("PodReadyToStartContainers", True), _cond("Initialized", True),
                           _cond("Ready", False, "ContainersNotReady"), _cond("ContainersReady", False)],
            "containerStatuses": self._containers(pod, {"waiting": {"reason": reason, "message": message}},
                                                  ready=False)})


class Cluster:
    def __init__(self, registry: ObjectRegistry, node: FakeNode, suite: ControllerSuite) -> None:
        self.registry = registry
        self.node = node
        self.suite = suite
        self.kinds = registry.kinds
        self.sandbox = self.kinds.resolve("sandbox")
        self.claim = self.kinds.resolve("sandboxclaim")
        self.pool = self.kinds.resolve("sandboxwarmpool")
        self.template = self.kinds.resolve("sandboxtemplate")
        self.pod = POD

    def create(self, obj: Obj) -> Obj:
        kind = self.kinds.by_kind(obj["apiVersion"], obj["kind"])
        return self.registry.create(kind, copy.deepcopy(obj), namespace=obj["metadata"].get("namespace", "default"))

    def get(self, kind: Any, name: str, namespace: str = "default") -> Obj | None:
        return self.registry.try_get(kind, namespace, name)

    def patch(self, kind: Any, name: str, patch: Obj, namespace: str = "default") -> Obj:
        return self.registry.patch(kind, namespace, name, "application/merge-patch+json", patch)

    def sandboxes(self, namespace: str = "default") -> list[Obj]:
        return self.registry.list(self.sandbox, namespace).items

    def pods(self, namespace: str = "default") -> list[Obj]:
        return self.registry.list(POD, namespace).items

    def events(self, reason: str, namespace: str = "default") -> list[Obj]:
        kind = self.kinds.by_kind("v1", "Event")
        return [e for e in self.registry.list(kind, namespace).items if e["reason"] == reason]

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


ROOT_CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    node = FakeNode(registry)
    node.start()
    suite = ControllerSuite(EmbeddedClient(registry), root_ca=ROOT_CA)
    await suite.start()
    yield Cluster(registry, node, suite)
    await suite.stop()
    await node.stop()
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
