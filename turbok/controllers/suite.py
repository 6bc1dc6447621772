"""Every controller of turbok, assembled over one client and one runtime.

``ControllerSuite`` is what an engine starts: the garbage collector, then the
manager with the namespace, sandbox, template, warm pool, claim and
resource quota reconcilers. The embedded control plane starts it over the in-process
registry; tests start it over a fake runtime.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from turbok.controllers.claim import ClaimReconciler
from turbok.controllers.client import Client
from turbok.controllers.events import EventRecorder
from turbok.controllers.garbage import GarbageCollector
from turbok.controllers.manager import Manager
from turbok.controllers.namespace import NamespaceReconciler
from turbok.controllers.quota import QuotaReconciler
from turbok.controllers.sandbox import SandboxReconciler
from turbok.controllers.template import TemplateReconciler
from turbok.controllers.warmpool import WarmPoolReconciler
from turbok.runtime.base import Runtime

__all__ = ["ControllerSuite"]


class ControllerSuite:
    def __init__(self, client: Client, runtime: Runtime, metrics: CollectorRegistry | None = None) -> None:
        events = EventRecorder(client)
        self.sandboxes = SandboxReconciler(client, runtime, events=events)
        self.claims = ClaimReconciler(client, metrics=metrics, events=events)
        self.pools = WarmPoolReconciler(client)
        self.collector = GarbageCollector(client)
        self.manager = Manager(
            client,
            [NamespaceReconciler(client), self.sandboxes, TemplateReconciler(client), self.pools, self.claims,
             QuotaReconciler(client)],
            metrics=metrics,
        )

    async def start(self) -> None:
        await self.collector.start()
        await self.manager.start()

    async def stop(self) -> None:
        await self.manager.stop()
        await self.collector.stop()
