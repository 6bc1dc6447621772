"""Events expire an hour after their last write, as with kube-apiserver's ``--event-ttl``.

kube-apiserver stores each Event under an etcd lease that every write renews,
so the clock is the server's, not the timestamps inside the event (which clients
choose: an event dated 2999 must not live forever). ``EventTTL`` notes the time
of each committed Event write (a commit listener on the watch hub) and
``expire`` deletes those older than ``StoreLimits.event_ttl_seconds``. An event
loaded from disk counts from the newest of its own timestamps, never later than
the first sweep. The apiserver calls ``ObjectRegistry.expire_events`` once a
minute.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from turbok.api import meta as m
from turbok.api.kinds import EVENT
from turbok.api.status import NotFound
from turbok.store.watch import Event

if TYPE_CHECKING:
    from turbok.store.registry import ObjectRegistry

__all__ = ["EventTTL"]


class EventTTL:
    def __init__(self, registry: ObjectRegistry) -> None:
        self.registry = registry
        self._written: dict[tuple[str, str], float] = {}  # (namespace, name) -> time.time() of the last write
        registry.hub.listeners.append(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.resource != EVENT.key:
            return
        if event.type == "DELETED":
            self._written.pop((event.namespace, event.name), None)
        else:
            self._written[(event.namespace, event.name)] = time.time()

    def expire(self, now: float | None = None) -> int:
        """Delete the Events last written ``ttl`` seconds ago or more; how many went."""
        now = time.time() if now is None else now
        ttl = self.registry.db.limits.event_ttl_seconds
        removed = 0
        for ns, name, row in list(self.registry.db.rows(EVENT.key)):
            written = self._written.get((ns, name))
            if written is None:
                written = self._written[(ns, name)] = min(now, _newest_stamp(row.object(), now))
            if now - written < ttl:
                continue
            try:
                self.registry.delete(EVENT, ns, name)
            except NotFound:
                continue
            removed += 1
        return removed


def _newest_stamp(event: dict[str, Any], default: float) -> float:
    """The newest timestamp an Event carries (creation, last, eventTime, series), as epoch seconds."""
    stamps = [(event.get("metadata") or {}).get("creationTimestamp"), event.get("lastTimestamp"),
              event.get("eventTime"), (event.get("series") or {}).get("lastObservedTime")]
    times = []
    for stamp in stamps:
        if isinstance(stamp, str) and stamp:
            try:
                times.append(m.parse_time(stamp).timestamp())
            except ValueError:
                continue
    return max(times) if times else default
