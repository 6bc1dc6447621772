"""The Kubernetes engine under test: a real control plane, turbok's operator on a thread, and an adapter.

``OperatorThread`` runs ``turbok.kube.operator.Operator`` in an event loop of its own (a module's tests
share one operator, as they share one control plane). ``KubeEngineCluster`` offers the interface of the
embedded engine's test ``Cluster`` (tests/unit/controllers/conftest.py: ``create``, ``get``, ``patch``,
``sandboxes``, ``pods``, ``events``, ``wait``, ``wait_condition``, ``registry.delete/list``), over the
real API server, so the same test bodies run on both engines. Each test gets its own namespace: the
bodies say ``default``, the adapter puts that in the test's namespace. kwok plays the node: Pods go
Running and Ready with a 127.64.x.x IP; ``node.started`` lists the Pods that ever ran.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.kube_cluster import KubeCluster
from turbok.api import status as st
from turbok.api.kinds import POD, default_registry
from turbok.client.api import error_from, resource_path
from turbok.client.kubeconfig import load_kubeconfig
from turbok.kube.operator import Operator, OperatorSettings

Obj = dict[str, Any]
Objs = list[Obj]  # (KubeEngineCluster has a method named list)


class OperatorThread:
    def __init__(self, kubeconfig: Path, **settings: Any) -> None:
        defaults = {"health_address": "", "lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.5,
                    "namespace": "turbok-system"}
        self.settings = OperatorSettings(kubeconfig=str(kubeconfig), **{**defaults, **settings})
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.operator: Operator | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="operator")
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop_event = asyncio.Event()
            self.operator = Operator(self.settings)
            self._started.set()
            await self.operator.run(self.stop_event)

        try:
            self.loop.run_until_complete(main())
        except BaseException as e:  # reported by stop()
            self.error = e
            self._started.set()

    def start(self, timeout: float = 60.0) -> OperatorThread:
        self.thread.start()
        self._started.wait(timeout)
        deadline = time.monotonic() + timeout
        while self.operator is None or self.operator.manager is None:
            if self.error is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start: {self.error!r}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.stop_event is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)
        if self.error is not None:
            raise self.error


@dataclass
class _List:
    items: list[Obj]


class _RegistryShim:
    """What the embedded tests ask of ``cluster.registry``, over the real API server."""

    def __init__(self, engine: KubeEngineCluster) -> None:
        self.engine = engine

    def delete(self, kind: Any, namespace: str, name: str, **options: Any) -> None:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if options.get("propagation"):
            body["propagationPolicy"] = options["propagation"]
        self.engine.call("DELETE", resource_path(kind, self.engine.ns_of(namespace), name), json=body)

    def list(self, kind: Any, namespace: str | None = None, **_: Any) -> _List:
        return _List(self.engine.list(kind, namespace or "default"))

    def try_get(self, kind: Any, namespace: str, name: str) -> Obj | None:
        return self.engine.get(kind, name, namespace)


class _KwokNode:
    name = "kwok-node-0"

    def __init__(self, engine: KubeEngineCluster) -> None:
        self.engine = engine
        self._seen: list[str] = []

    @property
    def started(self) -> list[str]:
        """Pods that ran, in the order this adapter first saw them Running (kwok starts each Pod once)."""
        for pod in sorted(self.engine.pods(), key=lambda p: p["metadata"]["creationTimestamp"]):
            name = pod["metadata"]["name"]
            if (pod.get("status") or {}).get("phase") == "Running" and name not in self._seen:
                self._seen.append(name)
        return list(self._seen)


class KubeEngineCluster:
    def __init__(self, kube: KubeCluster, namespace: str) -> None:
        self.kube = kube
        self.http: httpx.Client = kube.client
        self.namespace = namespace
        self.kinds = default_registry()
        self.sandbox = self.kinds.resolve("sandbox")
        self.claim = self.kinds.resolve("sandboxclaim")
        self.pool = self.kinds.resolve("sandboxwarmpool")
        self.template = self.kinds.resolve("sandboxtemplate")
        self.pod = POD
        self.registry = _RegistryShim(self)
        self.node = _KwokNode(self)

    def ns_of(self, namespace: str | None) -> str:
        return self.namespace if namespace in (None, "", "default") else str(namespace)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = None
            raise error_from(r.status_code, body, r.text)
        return r.json() if r.content else None

    def _fix(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        kind = self.kinds.by_kind(obj["apiVersion"], obj["kind"])
        if kind.namespaced:
            obj["metadata"]["namespace"] = self.ns_of(obj["metadata"].get("namespace"))
        return obj

    def create(self, obj: Obj) -> Obj:
        obj = self._fix(obj)
        kind = self.kinds.by_kind(obj["apiVersion"], obj["kind"])
        out: Obj = self.call("POST", resource_path(kind, obj["metadata"].get("namespace")), json=obj)
        return out

    def get(self, kind: Any, name: str, namespace: str = "default") -> Obj | None:
        try:
            out: Obj = self.call("GET", resource_path(kind, self.ns_of(namespace), name))
        except st.NotFound:
            return None
        return out

    def patch(self, kind: Any, name: str, patch: Obj, namespace: str = "default") -> Obj:
        out: Obj = self.call("PATCH", resource_path(kind, self.ns_of(namespace), name), content=json.dumps(patch),
                             headers={"Content-Type": "application/merge-patch+json"})
        return out

    def list(self, kind: Any, namespace: str = "default") -> list[Obj]:
        out = self.call("GET", resource_path(kind, self.ns_of(namespace)))
        items: list[Obj] = out.get("items") or []
        for item in items:
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    def sandboxes(self, namespace: str = "default") -> Objs:
        return self.list(self.sandbox, namespace)

    def pods(self, namespace: str = "default") -> Objs:
        return self.list(POD, namespace)

    def events(self, reason: str, namespace: str = "default") -> Objs:
        kind = self.kinds.by_kind("v1", "Event")
        return [e for e in self.list(kind, namespace) if e.get("reason") == reason]

    async def wait(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        # a real control plane (scheduler, kwok, the operator's watches) takes longer than one event loop,
        # and far longer when the 2 cores it shares are busy: generous, since only a failure waits it out
        deadline = time.monotonic() + max(timeout, 5.0) * 6
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

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


def admin_config(kube: KubeCluster) -> Any:
    return load_kubeconfig(kube.kubeconfig)
