"""Kubernetes Events from the controllers: what `kubectl describe` shows under an object.

``EventRecorder.record(obj, reason, message)`` writes a ``v1`` Event about
``obj`` (the upstream reasons: ``SandboxAdopted``, ``SandboxProvisioned``,
``ClaimExpired``...). Recording is best effort: an event that cannot be
written is logged, never an error for the reconcile. ``EventExpiry`` deletes
events older than the TTL (one hour, kube-apiserver's default), so they do
not pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket

from turbok.api import meta as m
from turbok.api.status import ApiError
from turbok.controllers.client import Client, Obj

__all__ = ["EVENT_TTL_SECONDS", "EventExpiry", "EventRecorder"]

log = logging.getLogger(__name__)

EVENT_TTL_SECONDS = 3600
COMPONENT = "turbok-controller"


class EventRecorder:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.kind = client.kinds.by_kind("v1", "Event")
        self.host = socket.gethostname()

    async def record(self, obj: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        md = obj["metadata"]
        now = m.now()
        event: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{md['name'][:200]}.", "namespace": md.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": md["name"],
                               "namespace": md.get("namespace", ""), "uid": md.get("uid", ""),
                               "resourceVersion": md.get("resourceVersion", "")},
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": COMPONENT, "host": self.host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.host,
        }
        try:
            await self.client.create(self.kind, event)
        except ApiError as e:
            log.warning("could not record event %s on %s %s: %s", reason, obj["kind"], md["name"], e)


class EventExpiry:
    """Deletes events whose last occurrence is older than ``ttl`` seconds, once a minute."""

    def __init__(self, client: Client, ttl: float = EVENT_TTL_SECONDS, every: float = 60.0) -> None:
        self.client = client
        self.kind = client.kinds.by_kind("v1", "Event")
        self.ttl = ttl
        self.every = every
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.ttl)
        removed = 0
        for event in await self.client.list(self.kind):
            stamp = event.get("lastTimestamp") or event["metadata"].get("creationTimestamp")
            if stamp and m.parse_time(stamp) < cutoff:
                await self.client.delete(self.kind, event["metadata"]["namespace"], event["metadata"]["name"])
                removed += 1
        return removed

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except ApiError as e:
                log.warning("event expiry: %s", e)
            await asyncio.sleep(self.every)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-expiry")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
