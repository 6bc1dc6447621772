"""Watch fan-out: every committed change goes to the watchers that asked for it.

The hub keeps a window of recent events (the watch history), bounded both in
events and in bytes (each event counted as twice its object's JSON: the text
and the encoded line watchers share), so large objects cannot make it hold
hundreds of megabytes. A watch that starts from a resourceVersion inside the
window replays what it missed and then goes live; one from before the window
gets ``Gone`` (410), as kube-apiserver answers after etcd compaction, and the
client re-lists. After a restart the window starts at the revision the store
was opened at. A watcher whose queue grows past its bounds (events or bytes) is
ended; its client resumes from the last resourceVersion it saw.

Selectors are applied per event with the object's previous labels and
selectable fields, so a watcher sees ADDED when an object starts matching and
DELETED when it stops, as the watch cache does. Events are encoded once and shared by all watchers.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turbok.api.status import Gone

__all__ = ["Event", "Scope", "WatchHub", "Watcher", "watch_line"]

log = logging.getLogger(__name__)


@dataclass
class Event:
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    namespace: str
    name: str
    rv: int
    data: str  # the object as JSON
    labels: dict[str, str]
    prev_labels: dict[str, str] | None  # None for ADDED
    #: The kind's selectable fields (``Kind.field_selectors``) after and before the change, when it has any.
    fields: dict[str, str] | None = None
    prev_fields: dict[str, str] | None = None
    _lines: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        """What the event is counted as in the history's and the queues' byte bounds."""
        return 2 * len(self.data)

    def line(self, type_: str | None = None) -> bytes:
        """The watch-stream line for this event (as ``type_`` after selector translation)."""
        t = type_ or self.type
        if t not in self._lines:
            self._lines[t] = watch_line(t, self.data)
        return self._lines[t]

    def object(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.data)
        return obj


#: Decides what a watcher sees of an event: a type, or None to skip it.
Filter = Callable[[Event], "str | None"]
#: The objects a watcher can hear of at all: (namespace, name), None for any. Its filter decides the rest.
Scope = tuple["str | None", "str | None"]


class Watcher:
    """One client's watch: an async iterator of (type, event)."""

    def __init__(self, hub: WatchHub, resource: str, filter_: Filter, maxsize: int,
                 max_bytes: int = 64 * 1024 * 1024, scope: Scope = (None, None)) -> None:
        self._hub = hub
        self.resource = resource
        self.scope = scope
        self._filter = filter_
        self._queue: asyncio.Queue[tuple[str, Event] | None] = asyncio.Queue(maxsize)
        self._max_bytes = max_bytes
        self.queued_bytes = 0
        self.closed = False
        self.overflowed = False

    def _offer(self, event: Event) -> None:
        type_ = self._filter(event)
        if type_ is None or self.closed:
            return
        try:
            if self.queued_bytes + event.size > self._max_bytes and not self._queue.empty():
                raise asyncio.QueueFull
            self._queue.put_nowait((type_, event))
            self.queued_bytes += event.size
        except asyncio.QueueFull:
            # A watcher this far behind would only grow memory: end it; the client re-watches.
            self.overflowed = True
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._hub._remove(self)
        if self._queue.full() or self.overflowed:
            # The end marker must fit, or the reader would wait forever, and an overflowed watcher must not
            # keep its backlog alive. Dropping the buffered events is safe: the client resumes from the last
            # resourceVersion it saw and the history replays them.
            while not self._queue.empty():
                self._queue.get_nowait()
            self.queued_bytes = 0
        self._queue.put_nowait(None)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> tuple[str, Event]:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        self.queued_bytes -= item[1].size
        return item


class WatchHub:
    def __init__(self, start_rv: int, window: int = 20_000, watcher_queue: int = 50_000, *,
                 history_bytes: int = 64 * 1024 * 1024, watcher_queue_bytes: int = 64 * 1024 * 1024) -> None:
        self._history: collections.deque[Event] = collections.deque()
        self._window = window
        self._max_bytes = history_bytes
        self.history_bytes = 0  # the history's size, as counted by Event.size
        self._floor = start_rv  # events at or before this revision are not retained
        # resource -> scope -> watchers: a change is offered to the four scopes that can hold it, so that
        # a thousand watches of one object each (the Agent Sandbox client waits on its claim so) cost a
        # change of any other object nothing.
        self._watchers: dict[str, dict[Scope, set[Watcher]]] = {}
        self._watcher_queue = watcher_queue
        self._watcher_queue_bytes = watcher_queue_bytes
        self.listeners: list[Callable[[Event], None]] = []

    def publish(self, event: Event) -> None:
        self._history.append(event)
        self.history_bytes += event.size
        while len(self._history) > self._window or (self.history_bytes > self._max_bytes and len(self._history) > 1):
            old = self._history.popleft()
            self.history_bytes -= old.size
            self._floor = old.rv
        scopes = self._watchers.get(event.resource)
        if scopes:
            ns, name = event.namespace, event.name
            for scope in ((None, None), (ns, None), (ns, name), (None, name)):
                for watcher in list(scopes.get(scope, ())):
                    watcher._offer(event)
        for listener in self.listeners:
            # The change is committed: a failing listener must not turn it into an error for the
            # writer (who would retry a write that happened), nor starve the listeners after it.
            try:
                listener(event)
            except Exception:
                log.exception("watch listener %r failed on %s %s %s/%s", listener, event.type, event.resource,
                              event.namespace, event.name)

    def subscribe(self, resource: str, from_rv: int | None, filter_: Filter,
                  scope: Scope = (None, None)) -> Watcher:
        """Watch ``resource`` from just after ``from_rv`` (None: from now), only objects in ``scope``."""
        if from_rv is not None and from_rv < self._floor:
            raise Gone(f"too old resource version: {from_rv} ({self._floor + 1})")
        watcher = Watcher(self, resource, filter_, self._watcher_queue, self._watcher_queue_bytes, scope)
        ns, name = scope
        if from_rv is not None:
            for event in self._history:
                if (event.rv > from_rv and event.resource == resource and ns in (None, event.namespace)
                        and name in (None, event.name)):
                    watcher._offer(event)
        self._watchers.setdefault(resource, {}).setdefault(scope, set()).add(watcher)
        return watcher

    def _remove(self, watcher: Watcher) -> None:
        scopes = self._watchers.get(watcher.resource, {})
        watchers = scopes.get(watcher.scope)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del scopes[watcher.scope]  # scopes of one name come and go by the thousand

    def watcher_count(self) -> int:
        return sum(len(w) for scopes in self._watchers.values() for w in scopes.values())


def watch_line(type_: str, data: str) -> bytes:
    """One line of a JSON watch stream: the event's type and the object as stored (compact JSON)."""
    return b'{"type":"' + type_.encode() + b'","object":' + data.encode() + b"}\n"
