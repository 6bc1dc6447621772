"""Garbage collection by ownerReferences, as kube-controller-manager does it.

- An object whose owners are all gone is deleted (background propagation).
- An owner deleted with ``propagationPolicy=Foreground`` carries the
  ``foregroundDeletion`` finalizer: its dependents are deleted first, then the
  finalizer is removed and the owner goes.
- ``Orphan`` (the ``orphan`` finalizer): the owner's reference is removed from
  each dependent, then the finalizer, so the dependents stay.

The collector keeps an index owner-uid -> dependents, fed by every change, and
works off a queue of owner uids; each step re-reads current state, so a missed
or repeated event does no harm. Before deleting a dependent whose owner it does
not know, it looks the owner up by the reference's apiVersion, kind, name and
uid (kube's "verify absent owner"): an owner created while the index was being
built is never mistaken for a gone one. Deletes carry the dependent's uid as a
precondition, so an object made again under the same name is never collected
for its predecessor. Pods deleted this way go gracefully: the node stops them.
"""

from __future__ import annotations

import asyncio
import logging

from turbok.api.kinds import Kind
from turbok.api.status import ApiError, Conflict, NotFound
from turbok.controllers.client import Client, Obj, ObjectEvent

__all__ = ["GarbageCollector"]

log = logging.getLogger(__name__)

FOREGROUND, ORPHAN = "foregroundDeletion", "orphan"

Ref = tuple[str, str, str]  # (kind key, namespace, name)


class GarbageCollector:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._dependents: dict[str, set[Ref]] = {}  # owner uid -> dependents
        self._owners_of: dict[Ref, set[str]] = {}  # dependent -> owner uids
        self._uids: dict[str, Ref] = {}  # live uid -> object
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Subscribe first: what changes while the kinds are listed is indexed too (indexing is idempotent).
        self.client.subscribe(self._on_event)
        for kind in self.client.kinds:
            for obj in await self.client.list(kind):
                self._index(kind.key, obj)
        for uid in list(self._dependents):
            if uid not in self._uids:
                self._enqueue(uid)
        self._task = asyncio.create_task(self._run(), name="garbage-collector")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _index(self, key: str, obj: Obj) -> None:
        md = obj["metadata"]
        ref: Ref = (key, md.get("namespace", ""), md["name"])
        self._uids[md["uid"]] = ref
        self._unindex_dependent(ref)
        owners = {o["uid"] for o in md.get("ownerReferences") or [] if o.get("uid")}
        if owners:
            self._owners_of[ref] = owners
            for uid in owners:
                self._dependents.setdefault(uid, set()).add(ref)

    def _unindex_dependent(self, ref: Ref) -> None:
        for uid in self._owners_of.pop(ref, ()):
            deps = self._dependents.get(uid)
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del self._dependents[uid]

    def _on_event(self, event: ObjectEvent) -> None:
        obj = event.object()
        md = obj["metadata"]
        ref: Ref = (event.resource, event.namespace, event.name)
        if event.type == "DELETED":
            self._uids.pop(md.get("uid", ""), None)
            owners = self._owners_of.get(ref, set())
            self._unindex_dependent(ref)
            if md.get("uid") in self._dependents:
                self._enqueue(md["uid"])
            for uid in owners:  # an owner waiting for its dependents (foreground) may now go
                if uid in self._uids:
                    self._enqueue(uid)
            return
        self._index(event.resource, obj)
        if md.get("deletionTimestamp") and {FOREGROUND, ORPHAN} & set(md.get("finalizers") or []):
            self._enqueue(md["uid"])
        if any(uid not in self._uids for uid in self._owners_of.get(ref, ())):
            for uid in self._owners_of.get(ref, ()):
                if uid not in self._uids:
                    self._enqueue(uid)

    def _enqueue(self, uid: str) -> None:
        if uid not in self._queued:
            self._queued.add(uid)
            self._queue.put_nowait(uid)

    async def _run(self) -> None:
        while True:
            uid = await self._queue.get()
            self._queued.discard(uid)
            try:
                await self._collect(uid)
            except Conflict:
                self._enqueue(uid)
            except (ApiError, OSError) as e:
                log.warning("garbage collection of dependents of %s: %s", uid, e)
                await asyncio.sleep(0.5)
                self._enqueue(uid)

    def _kind(self, key: str) -> Kind:
        kind = self.client.kinds.by_key(key)
        assert kind is not None
        return kind

    async def _collect(self, uid: str) -> None:
        dependents = sorted(self._dependents.get(uid, ()))
        owner_ref = self._uids.get(uid)
        owner = None
        if owner_ref is not None:
            owner = await self.client.try_get(self._kind(owner_ref[0]), owner_ref[1], owner_ref[2])
            if owner is not None and owner["metadata"].get("uid") != uid:
                owner = None
        if owner is None:
            for key, ns, name in dependents:
                dep = await self.client.try_get(self._kind(key), ns, name)
                if dep is None or await self._has_live_owner(dep):
                    continue
                log.info("garbage collecting %s %s/%s: its owners are gone", key, ns, name)
                await self.client.delete(self._kind(key), ns, name, propagation="Background",
                                         uid=dep["metadata"]["uid"])
            return
        finalizers = list(owner["metadata"].get("finalizers") or [])
        if not owner["metadata"].get("deletionTimestamp"):
            return
        if ORPHAN in finalizers:
            for key, ns, name in dependents:
                dep = await self.client.try_get(self._kind(key), ns, name)
                if dep is None:
                    continue
                refs = [r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                dep["metadata"]["ownerReferences"] = refs
                if not refs:
                    del dep["metadata"]["ownerReferences"]
                await self.client.update(self._kind(key), dep)
            await self._drop_finalizer(owner_ref, ORPHAN)
        elif FOREGROUND in finalizers:
            live = 0
            for key, ns, name in dependents:
                dep = await self.client.try_get(self._kind(key), ns, name)
                if dep is None:
                    continue
                live += 1
                if not dep["metadata"].get("deletionTimestamp"):
                    await self.client.delete(self._kind(key), ns, name, propagation="Foreground")
            if live == 0:
                await self._drop_finalizer(owner_ref, FOREGROUND)

    async def _has_live_owner(self, dep: Obj) -> bool:
        """Whether any owner of ``dep`` exists, looking up those the index does not know."""
        namespace = dep["metadata"].get("namespace", "")
        for ref in dep["metadata"].get("ownerReferences") or []:
            uid = ref.get("uid")
            if not uid:
                continue
            if uid in self._uids:
                return True
            kind = self.client.kinds.by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            if kind is None:
                continue  # not a kind served here: it cannot exist
            owner = await self.client.try_get(kind, namespace if kind.namespaced else "", ref.get("name", ""))
            if owner is not None and owner["metadata"].get("uid") == uid:
                self._index(kind.key, owner)
                return True
        return False

    async def _drop_finalizer(self, ref: Ref | None, finalizer: str) -> None:
        if ref is None:
            return
        kind = self._kind(ref[0])
        try:
            obj = await self.client.get(kind, ref[1], ref[2])
        except NotFound:
            return
        obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        await self.client.update(kind, obj)
