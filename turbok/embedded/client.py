"""The controllers' ``Client`` over the in-process registry: no HTTP, same semantics.

Writes go through ``ObjectRegistry`` exactly as API requests do (validation,
optimistic concurrency, finalizers), so a controller cannot store what a user
could not. Subscriptions are the registry's commit listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from turbok.api.kinds import Kind
from turbok.api.meta import LabelSelector
from turbok.api.status import NotFound
from turbok.controllers.client import Client, Obj, ObjectEvent
from turbok.store.registry import ObjectRegistry

__all__ = ["EmbeddedClient"]

#: Objects parsed per slice of a list before other work gets the event loop.
LIST_PAGE = 100


class EmbeddedClient(Client):
    def __init__(self, registry: ObjectRegistry) -> None:
        self.registry = registry
        self.kinds = registry.kinds

    async def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        if self.registry.is_large(kind, namespace, name):  # decoding it is tens of milliseconds
            text = self.registry.get_json(kind, namespace, name)
            obj: Obj = await asyncio.to_thread(json.loads, text)
            return obj
        return self.registry.get(kind, namespace, name)

    async def try_get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        try:
            return await self.get(kind, namespace, name)
        except NotFound:
            return None

    async def list(self, kind: Kind, namespace: str | None = None, *,
                   selector: LabelSelector | None = None) -> list[Obj]:
        # In pages, yielding between them: a controller listing a pool of hundreds of sandboxes
        # must not hold the event loop (and every request behind it) for the whole list.
        items: list[Obj] = []
        token = ""
        while True:
            page = self.registry.list(kind, namespace, label_selector=selector, limit=LIST_PAGE,
                                      continue_token=token)
            items += page.items
            token = page.continue_token
            if not token:
                return items
            await asyncio.sleep(0)

    async def create(self, kind: Kind, obj: Obj) -> Obj:
        return self.registry.create(kind, obj, namespace=obj.get("metadata", {}).get("namespace"))

    async def update(self, kind: Kind, obj: Obj) -> Obj:
        return await self._update(kind, obj, None)

    async def update_status(self, kind: Kind, obj: Obj) -> Obj:
        return await self._update(kind, obj, "status")

    async def _update(self, kind: Kind, obj: Obj, subresource: str | None) -> Obj:
        # A large object takes hundreds of milliseconds to validate: on a worker thread, the event loop
        # keeps serving (the commit still comes back to it, in order).
        md = obj["metadata"]
        if self.registry.is_large(kind, md.get("namespace") or "", md.get("name") or ""):
            return await self.registry.offload(self.registry.update, kind, obj, namespace=md.get("namespace"),
                                               subresource=subresource)
        return self.registry.update(kind, obj, namespace=md.get("namespace"), subresource=subresource)

    async def delete(self, kind: Kind, namespace: str, name: str, *, propagation: str | None = None,
                     uid: str | None = None) -> None:
        with contextlib.suppress(NotFound):
            self.registry.delete(kind, namespace, name, propagation=propagation,
                                 preconditions={"uid": uid} if uid else None)

    def subscribe(self, callback: Callable[[ObjectEvent], None]) -> None:
        self.registry.hub.listeners.append(callback)
