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
from typing import Any

from turbok.api.kinds import Kind
from turbok.api.meta import FieldSelector, LabelSelector
from turbok.api.patch import JSON_PATCH, MERGE, STRATEGIC
from turbok.api.status import BadRequest, NotFound
from turbok.controllers.client import Client, Obj, ObjectEvent, PatchType
from turbok.store.registry import ObjectRegistry

__all__ = ["EmbeddedClient"]

#: Objects parsed per slice of a list before other work gets the event loop.
LIST_PAGE = 100

_MEDIA_TYPES = {"merge": MERGE, "strategic": STRATEGIC, "json": JSON_PATCH}


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
                   selector: LabelSelector | None = None,
                   field_selector: FieldSelector | None = None) -> list[Obj]:
        # In pages, yielding between them: a controller listing a pool of hundreds of sandboxes
        # must not hold the event loop (and every request behind it) for the whole list.
        items: list[Obj] = []
        token = ""
        while True:
            page = self.registry.list(kind, namespace, label_selector=selector, field_selector=field_selector,
                                      limit=LIST_PAGE, continue_token=token)
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

    async def patch(self, kind: Kind, namespace: str, name: str, body: Any, *, patch_type: PatchType = "merge",
                    subresource: str | None = None) -> Obj:
        media = _MEDIA_TYPES.get(patch_type)
        if media is None:
            raise BadRequest(f"unknown patch type {patch_type!r}: merge, strategic or json")
        if subresource not in (None, "status"):
            raise BadRequest(f"cannot patch the {subresource!r} subresource")
        if self.registry.is_large(kind, namespace, name):
            return await self.registry.offload(self.registry.patch, kind, namespace, name, media, body,
                                               subresource=subresource)
        return self.registry.patch(kind, namespace, name, media, body, subresource=subresource)

    async def create_subresource(self, kind: Kind, namespace: str, name: str, subresource: str,
                                 body: Obj) -> Obj:
        return self.registry.create_subresource(kind, namespace, name, subresource, body)

    async def delete(self, kind: Kind, namespace: str, name: str, *, propagation: str | None = None,
                     uid: str | None = None, grace_period_seconds: int | None = None,
                     preconditions_rv: str | None = None) -> None:
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", preconditions_rv)) if v}
        with contextlib.suppress(NotFound):
            self.registry.delete(kind, namespace, name, propagation=propagation,
                                 preconditions=preconditions or None, grace_period_seconds=grace_period_seconds)

    def subscribe(self, callback: Callable[[ObjectEvent], None]) -> None:
        self.registry.hub.listeners.append(callback)
