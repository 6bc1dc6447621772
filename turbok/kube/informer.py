"""One kind kept in memory from a list and a watch, as client-go's reflector and informer keep it.

``Informer.run`` lists the kind (in pages), replaces its cache with the list, then watches from the list's
resourceVersion with bookmarks. Each watch ends after ``watch_timeout`` seconds (the server closes it) or
on a broken connection, and resumes from the last resourceVersion seen (an event's or a bookmark's), so
nothing is missed and nothing is replayed. When that version is too old (410 Gone: etcd compacted it) the
informer relists and tells its subscribers what the list changed: ``DELETED`` for objects that went while
it was away, ``ADDED``/``MODIFIED`` for the rest, so no deletion is lost across a relist.

Writes made through ``KubeClient`` are put into the cache as soon as the API server answers (``observe``),
so a controller reads its own writes at once; a watch event is applied only when it is newer than what
the cache holds (resourceVersions are compared as integers, which is what etcd-backed servers and turbok
hand out; a non-numeric one is always applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turbok.api import status as st
from turbok.api.kinds import Kind
from turbok.client.api import AsyncApi
from turbok.client.errors import ConnectionFailed

__all__ = ["Change", "Informer"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]


@dataclass
class Change:
    """One change to one object, as the controllers' ``Client.subscribe`` hands it out."""

    type: str  # ADDED, MODIFIED, DELETED
    resource: str  # Kind.key
    namespace: str
    name: str
    obj: Obj

    def object(self) -> Obj:
        return self.obj


def rv_int(obj: Obj) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


def key_of(obj: Obj) -> Key:
    md = obj.get("metadata") or {}
    return str(md.get("namespace") or ""), str(md.get("name") or "")


class Informer:
    """The cache of one kind and the task that keeps it. ``synced`` is set after the first list."""

    def __init__(self, api: AsyncApi, kind: Kind, notify: Callable[[Change], None], *,
                 watch_timeout: int = 300, page: int = 500, namespace: str | None = None) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.notify = notify
        self.watch_timeout = watch_timeout
        self.page = page
        self.items: dict[Key, Obj] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        #: How often the informer listed (1 at start, +1 per relist after 410): tests and metrics read it.
        self.lists = 0
        self.watches = 0

    # ------------------------------------------------------------------ cache
    def get(self, namespace: str, name: str) -> Obj | None:
        return self.items.get((namespace if self.kind.namespaced else "", name))

    def values(self) -> list[Obj]:
        return list(self.items.values())

    def observe(self, obj: Obj, *, deleted: bool = False) -> None:
        """Put an object the API server just answered with into the cache, and tell subscribers."""
        key = key_of(obj)
        current = self.items.get(key)
        if deleted:
            if current is not None:
                del self.items[key]
                self._emit("DELETED", obj)
            return
        if current is not None and not _newer(obj, current):
            return
        self.items[key] = obj
        self._emit("MODIFIED" if current is not None else "ADDED", obj)

    def _emit(self, type_: str, obj: Obj) -> None:
        ns, name = key_of(obj)
        try:
            self.notify(Change(type_, self.kind.key, ns, name, obj))
        except Exception:  # a subscriber's bug must not stop the informer
            log.exception("subscriber failed on %s %s/%s", self.kind.key, ns, name)

    def _apply(self, type_: str, obj: Obj) -> None:
        key = key_of(obj)
        current = self.items.get(key)
        if type_ == "DELETED":
            if current is not None:
                del self.items[key]
                self._emit("DELETED", obj)
            return
        if current is not None and not _newer(obj, current):
            return  # we wrote it ourselves and have it already (or a newer one)
        self.items[key] = obj
        self._emit("MODIFIED" if current is not None else "ADDED", obj)

    # ------------------------------------------------------------------ list and watch
    async def _relist(self) -> None:
        items, rv = await self.api.list(self.kind, self.namespace, limit=self.page)
        self.lists += 1
        fresh = {key_of(o): o for o in items}
        for key in [k for k in self.items if k not in fresh]:
            gone = self.items.pop(key)
            self._emit("DELETED", gone)
        for key, obj in fresh.items():
            current = self.items.get(key)
            if current is None or _newer(obj, current) or rv_int(obj) != rv_int(current):
                self.items[key] = obj
                self._emit("MODIFIED" if current is not None else "ADDED", obj)
        self.resource_version = rv
        self.synced.set()

    async def run(self) -> None:
        """List, then watch for ever (until cancelled), relisting after 410 and retrying broken watches."""
        failures = 0
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                self.watches += 1
                # closed here, in this task, even when it is cancelled between two events: a watch left to the
                # garbage collector closes its stream after the client's connection pool is gone
                async with contextlib.aclosing(self.api.watch(
                        self.kind, self.namespace, resource_version=self.resource_version,
                        timeout_seconds=self.watch_timeout)) as events:
                    async for event in events:
                        rv = event.resource_version
                        if event.type == "BOOKMARK":
                            self.resource_version = rv or self.resource_version
                            continue
                        if event.object.get("kind") is None:
                            event.object["kind"] = self.kind.kind
                            event.object["apiVersion"] = self.kind.api_version
                        self._apply(event.type, event.object)
                        self.resource_version = rv or self.resource_version
                        failures = 0
            except asyncio.CancelledError:
                raise
            except st.Gone:
                log.info("watch of %s: resourceVersion %s expired (410); relisting", self.kind.key,
                         self.resource_version)
                need_list = True
            except (ConnectionFailed, st.ApiError) as e:
                failures += 1
                delay = min(0.2 * 2 ** min(failures, 6), 10.0) * (0.5 + random.random())
                log.warning("watch of %s broke (%s); again in %.1fs", self.kind.key, e, delay)
                await asyncio.sleep(delay)


def _newer(obj: Obj, than: Obj) -> bool:
    a, b = rv_int(obj), rv_int(than)
    if a is None or b is None:
        return True
    return a > b
