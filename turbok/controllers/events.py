"""Kubernetes Events from the controllers: what `kubectl describe` shows under an object.

``EventRecorder.record(obj, reason, message)`` writes a ``v1`` Event about
``obj`` (the upstream reasons: ``SandboxAdopted``, ``SandboxProvisioned``,
``ClaimExpired``...). Recording is best effort: an event that cannot be
written is logged, never an error for the reconcile. Events expire on the
API server's side, an hour after their last write, as with kube-apiserver's
``--event-ttl`` (the embedded engine: ``turbok.store.eventttl``).
"""

from __future__ import annotations

import logging
import socket

from turbok.api import meta as m
from turbok.api.status import ApiError
from turbok.controllers.client import Client, Obj

__all__ = ["EventRecorder"]

log = logging.getLogger(__name__)

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
