"""core/v1 Events from the node, as the kubelet and kube-scheduler write them, off the hot path.

``EventRecorder.record(obj, reason, message)`` returns at once; a background
task writes the Event ``WRITE_DELAY`` later, so that its write (on the same loop)
never sits in the chain of writes that starts a Pod (binding, status, boot).
Repeats of the same (object, reason, message, type)
within ``AGGREGATE_SECONDS`` update the first Event's ``count`` and
``lastTimestamp`` instead of writing a new one (client-go's event correlator),
so a crash loop makes one ``BackOff`` Event with a growing count, not
hundreds. Best effort: an Event that cannot be written is logged, never an
error for the Pod. Events carry ``source.component``/``reportingComponent``
(``kubelet`` or ``default-scheduler``) and ``source.host`` = the node, and
``involvedObject.fieldPath`` (``spec.containers{main}``) for a container's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass

from turbok.api import meta as m
from turbok.api.status import ApiError
from turbok.node.client import NodeClient, Obj

__all__ = ["EventRecorder", "KUBELET", "SCHEDULER"]

log = logging.getLogger(__name__)

KUBELET = "kubelet"
SCHEDULER = "default-scheduler"
AGGREGATE_SECONDS = 600.0
#: Distinct Events remembered for aggregation (oldest forgotten first).
CACHE_SIZE = 4096
#: Events waiting to be written; past this, new ones are dropped (and logged): a flood must not grow memory.
QUEUE_LIMIT = 10_000
#: Seconds an Event waits before it is written (all queued by then go together): a cold start's chain from
#: the Pod's binding to its boot is about 20 ms of writes on the loop the Events would be written on.
WRITE_DELAY = 0.05


@dataclass
class _Seen:
    name: str
    namespace: str
    count: int
    first: str
    at: float


class EventRecorder:
    def __init__(self, client: NodeClient, *, component: str, host: str) -> None:
        self.client = client
        self.kind = client.kinds.by_kind("v1", "Event")
        self.component = component
        self.host = host
        self._queue: collections.deque[tuple[Obj, str, str, str, str | None]] = collections.deque()
        self._seen: collections.OrderedDict[tuple[str, ...], _Seen] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def record(self, obj: Obj, reason: str, message: str, *, warning: bool = False,
               field_path: str | None = None) -> None:
        """Queue an Event about ``obj`` (a Pod, the Node...); never blocks, never raises."""
        if len(self._queue) >= QUEUE_LIMIT:
            log.warning("event queue full: dropping %s on %s %s", reason, obj.get("kind"),
                        obj.get("metadata", {}).get("name"))
            return
        self._queue.append((obj, reason, message, "Warning" if warning else "Normal", field_path))
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"events-{self.component}")

    async def flush(self) -> None:
        """Wait until every queued Event has been written (tests; stop)."""
        await self._idle.wait()

    async def stop(self) -> None:
        if self._queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), timeout=5.0)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WRITE_DELAY)
            while self._queue:
                obj, reason, message, type_, field_path = self._queue.popleft()
                try:
                    await self._write(obj, reason, message, type_, field_path)
                except ApiError as e:
                    md = obj.get("metadata", {})
                    log.warning("could not record event %s on %s %s: %s", reason, obj.get("kind"), md.get("name"), e)
                except Exception:
                    log.exception("recording event %s", reason)
            self._idle.set()
            self._wake.clear()
            await self._wake.wait()

    async def _write(self, obj: Obj, reason: str, message: str, type_: str, field_path: str | None) -> None:
        md = obj["metadata"]
        namespace = md.get("namespace") or "default"
        key = (obj.get("kind", ""), namespace, md.get("name", ""), md.get("uid", ""), field_path or "", reason,
               message, type_)
        now_s = asyncio.get_running_loop().time()
        now = m.now()
        seen = self._seen.get(key)
        if seen is not None and now_s - seen.at < AGGREGATE_SECONDS:
            seen.count += 1
            seen.at = now_s
            self._seen.move_to_end(key)
            try:
                await self.client.patch(self.kind, seen.namespace, seen.name,
                                        {"count": seen.count, "lastTimestamp": now})
                return
            except ApiError:
                pass  # expired or removed: write a new one
        involved: Obj = {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""),
                         "name": md.get("name", ""), "namespace": md.get("namespace", ""),
                         "uid": md.get("uid", ""), "resourceVersion": md.get("resourceVersion", "")}
        if field_path:
            involved["fieldPath"] = field_path
        event: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{md.get('name', 'node')[:200]}.", "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }
        made = await self.client.create(self.kind, event)
        self._seen[key] = _Seen(made["metadata"]["name"], namespace, 1, now, now_s)
        while len(self._seen) > CACHE_SIZE:
            self._seen.popitem(last=False)
