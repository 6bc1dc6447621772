"""The controllers' ``Client`` over a real API server: cached reads, direct writes, one watch per kind.

Reads of the kinds the controllers own or write (``CACHED``: the Agent Sandbox kinds, Pods, Services,
PVCs) are answered from informers (``informer.Informer``), as controller-runtime's cached client does:
no request per ``get`` or ``list``, and label and field selectors applied here. Other kinds go to the API
server. Writes go to the API server; what it answers is put into the cache at once, so a controller reads
its own writes, and subscribers hear of it then (and not again when the watch brings the same version).

Writes never take other managers' fields: ``update`` is a PUT of the object as it was read, with its
resourceVersion (a 409 Conflict if anyone wrote since, and the manager reconciles again from the fresh
copy); objects are plain dicts, so fields turbok does not model travel back unchanged; ``patch`` sends
only what changed (merge, strategic or JSON patch), under the field manager ``turbok-operator``.

Two lanes share the API server: writes made while serving a claim (``claim_lane()``, which the
operator enters around the claim reconciler) go first; other writes (pool refills, Pod relabelling,
status, Events) wait while claim writes are in flight, for at most ``LOW_LANE_MAX_WAIT`` seconds
each. On a small control plane a burst of claims is then served before the pool refills behind it,
as the embedded engine serves them (its refills are niced); nothing starves.

On a cluster, turbok's Pods get ``spec.runtimeClassName`` (``runtime_class``, ``gvisor`` by default) when
their template names none: the kubelet runs them under that runtime. Pods are kept in one cache for all
namespaces; ``pod_selector`` narrows the Pod watch to the Pods turbok makes on big clusters.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from turbok.api import status as st
from turbok.api.kinds import POD, Kind, KindRegistry, default_registry
from turbok.api.meta import FieldSelector, LabelSelector
from turbok.client.api import AsyncApi
from turbok.controllers.client import Client, Obj, ObjectEvent, PatchType
from turbok.kube.informer import Change, Informer

__all__ = ["CACHED_KINDS", "KubeClient", "claim_lane"]

#: Seconds a write of the low lane waits at most for claim writes in flight to finish.
LOW_LANE_MAX_WAIT = 2.0
_HIGH: contextvars.ContextVar[bool] = contextvars.ContextVar("turbok_kube_high_lane", default=False)


@contextlib.contextmanager
def _lane(high: bool) -> Any:
    token = _HIGH.set(high)
    try:
        yield
    finally:
        _HIGH.reset(token)


def claim_lane() -> Any:
    """Context manager: writes made inside it (and in tasks started inside it) take the high lane."""
    return _lane(True)


class _Lanes:
    def __init__(self) -> None:
        self.high = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def slot(self, high: bool) -> AsyncIterator[None]:
        """High: counted while in flight. Low: waits (bounded) while any high write is in flight."""
        if high:
            self.high += 1
            self._idle.clear()
            try:
                yield
            finally:
                self.high -= 1
                if self.high == 0:
                    self._idle.set()
            return
        if self.high:
            deadline = time.monotonic() + LOW_LANE_MAX_WAIT
            while self.high and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), deadline - time.monotonic())
        yield

#: Kinds read from informers (everything else is read from the API server).
CACHED_KINDS = (
    ("agents.x-k8s.io/v1beta1", "Sandbox"),
    ("extensions.agents.x-k8s.io/v1beta1", "SandboxTemplate"),
    ("extensions.agents.x-k8s.io/v1beta1", "SandboxClaim"),
    ("extensions.agents.x-k8s.io/v1beta1", "SandboxWarmPool"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


def _field(obj: Obj, path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


class KubeClient(Client):
    """``start()`` lists and watches the cached kinds; ``stop()`` ends the watches and closes the API client."""

    def __init__(self, api: AsyncApi, *, kinds: KindRegistry | None = None, runtime_class: str | None = "gvisor",
                 watch_timeout: int = 300, cached: tuple[tuple[str, str], ...] = CACHED_KINDS,
                 namespace: str | None = None) -> None:
        self.api = api
        self.kinds = kinds or default_registry()
        self.runtime_class = runtime_class
        self._callbacks: list[Callable[[ObjectEvent], None]] = []
        self.informers: dict[str, Informer] = {}
        for api_version, name in cached:
            kind = self.kinds.by_kind(api_version, name)
            self.informers[kind.key] = Informer(api, kind, self._notify, watch_timeout=watch_timeout,
                                                namespace=namespace)
        self._tasks: list[asyncio.Task[None]] = []
        self._lanes = _Lanes()

    async def start(self, timeout: float = 60.0) -> None:
        for informer in self.informers.values():
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer {informer.kind.key}"))
        await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers.values())), timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.api.close()

    def _slot(self, kind: Kind) -> Any:
        if not _HIGH.get():
            return self._lanes.slot(False)
        # a claim's Event goes at once but holds no other write back
        return contextlib.nullcontext() if kind.kind == "Event" else self._lanes.slot(True)

    def _notify(self, change: Change) -> None:
        for callback in list(self._callbacks):
            callback(change)

    def subscribe(self, callback: Callable[[ObjectEvent], None]) -> None:
        self._callbacks.append(callback)

    def _observe(self, kind: Kind, obj: Any) -> None:
        informer = self.informers.get(kind.key)
        if informer is None or not isinstance(obj, dict) or obj.get("kind") == "Status":
            return
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        informer.observe(obj)

    # ------------------------------------------------------------------ reads
    async def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        informer = self.informers.get(kind.key)
        if informer is None:
            return await self.api.get(kind, namespace, name)
        obj = informer.get(namespace, name)
        if obj is None:
            raise st.NotFound(f'{kind.qualified} "{name}" not found', kind=kind.plural, group=kind.group, name=name)
        return obj

    async def try_get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        try:
            return await self.get(kind, namespace, name)
        except st.NotFound:
            return None

    async def list(self, kind: Kind, namespace: str | None = None, *,
                   selector: LabelSelector | None = None,
                   field_selector: FieldSelector | None = None) -> list[Obj]:
        informer = self.informers.get(kind.key)
        if informer is None:
            items, _ = await self.api.list(kind, namespace, label_selector=selector, field_selector=field_selector)
            return items
        out = []
        for obj in informer.values():
            md = obj["metadata"]
            if namespace and kind.namespaced and md.get("namespace") != namespace:
                continue
            if selector and not selector.matches(md.get("labels")):
                continue
            if field_selector and not field_selector.matches(obj, _field):
                continue
            out.append(obj)
        return out

    # ------------------------------------------------------------------ writes
    async def create(self, kind: Kind, obj: Obj) -> Obj:
        if kind.key == POD.key and self.runtime_class:
            spec = obj.setdefault("spec", {})
            if not spec.get("runtimeClassName"):
                spec["runtimeClassName"] = self.runtime_class
        async with self._slot(kind):
            out = await self.api.create(kind, obj)
        self._observe(kind, out)
        return out

    async def update(self, kind: Kind, obj: Obj) -> Obj:
        async with self._slot(kind):
            out = await self.api.replace(kind, obj)
        self._observe(kind, out)
        return out

    async def update_status(self, kind: Kind, obj: Obj) -> Obj:
        async with self._slot(kind):
            out = await self.api.replace(kind, obj, subresource="status")
        self._observe(kind, out)
        return out

    async def patch(self, kind: Kind, namespace: str, name: str, body: Any, *, patch_type: PatchType = "merge",
                    subresource: str | None = None) -> Obj:
        if subresource not in (None, "status"):
            raise st.BadRequest(f"cannot patch the {subresource!r} subresource")
        async with self._slot(kind):
            out = await self.api.patch(kind, namespace, name, body, patch_type=patch_type, subresource=subresource)
        self._observe(kind, out)
        return out

    async def create_subresource(self, kind: Kind, namespace: str, name: str, subresource: str,
                                 body: Obj) -> Obj:
        return await self.api.create(kind, body, namespace=namespace, subresource_of=name, subresource=subresource)

    async def delete(self, kind: Kind, namespace: str, name: str, *, propagation: str | None = None,
                     uid: str | None = None, grace_period_seconds: int | None = None,
                     preconditions_rv: str | None = None) -> None:
        with contextlib.suppress(st.NotFound):
            async with self._slot(kind):
                out = await self.api.delete(kind, namespace, name, propagation=propagation, uid=uid,
                                            resource_version=preconditions_rv,
                                            grace_period_seconds=grace_period_seconds)
            informer = self.informers.get(kind.key)
            if informer is None or not isinstance(out, dict):
                return
            if out.get("kind") == "Status" or not (out.get("metadata") or {}).get("deletionTimestamp"):
                # gone at once: the cache forgets it now (the watch's DELETED then finds nothing to do)
                cached = informer.get(namespace, name)
                if cached is not None:
                    informer.observe(cached, deleted=True)
            else:
                self._observe(kind, out)
