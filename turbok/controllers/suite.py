"""Every controller of turbok, assembled over one client.

``ControllerSuite`` is what an engine starts: the garbage collector, then the
manager with the namespace, sandbox, template, warm pool, claim, endpoints,
resource quota and sandbox snapshot reconcilers, then the idle suspender. They
write Pods, Services, PVCs, Endpoints, EndpointSlices and snapshot triggers and
read Pod status; a node (``turbok.node`` on one machine, the
kubelet on a cluster) runs the Pods. The embedded control plane starts it over
the in-process registry; tests start it beside a fake node.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from turbok.controllers.claim import ClaimReconciler
from turbok.controllers.client import Client
from turbok.controllers.endpoints import EndpointsReconciler
from turbok.controllers.events import EventRecorder
from turbok.controllers.garbage import GarbageCollector
from turbok.controllers.idle import IdleSuspender
from turbok.controllers.injection import DEFAULT_LABEL_DOMAINS
from turbok.controllers.manager import Manager
from turbok.controllers.namespace import NamespaceReconciler
from turbok.controllers.quota import QuotaReconciler
from turbok.controllers.sandbox import SandboxReconciler
from turbok.controllers.sandboxsnapshot import SandboxSnapshotReconciler
from turbok.controllers.template import TemplateReconciler
from turbok.controllers.warmpool import WarmPoolReconciler

__all__ = ["ControllerSuite"]


class ControllerSuite:
    def __init__(self, client: Client, metrics: CollectorRegistry | None = None, *, root_ca: str | None = None,
                 allowed_label_domains: tuple[str, ...] = DEFAULT_LABEL_DOMAINS,
                 idle: IdleSuspender | None = None, pool_max_starting: int | None = None, pool_burst_quiet: float = 0.0) -> None:
        """``root_ca``: the API server's CA bundle (PEM), published in every namespace as ``kube-root-ca.crt``;
        ``allowed_label_domains``: the label domains a claim's ``additionalPodMetadata`` may use; ``idle``: the
        idle suspender the router and streams tell about use (one of its own when None); ``pool_max_starting``:
        how many sandboxes of a warm pool start at once, ``pool_burst_quiet``: how long a pool waits for a burst of
        claims to pause before it refills (``WarmPoolReconciler``)."""
        events = EventRecorder(client)
        self.sandboxes = SandboxReconciler(client, events=events)
        self.claims = ClaimReconciler(client, metrics=metrics, events=events,
                                      allowed_label_domains=allowed_label_domains)
        self.pools = WarmPoolReconciler(client, events=events, max_starting=pool_max_starting,
                                        burst_quiet=pool_burst_quiet)
        self.endpoints = EndpointsReconciler(client)
        self.namespaces = NamespaceReconciler(client, root_ca=root_ca)
        self.collector = GarbageCollector(client)
        self.snapshots = SandboxSnapshotReconciler(client)
        self.idle = idle or IdleSuspender(client, events=events)
        self.manager = Manager(
            client,
            [self.namespaces, self.sandboxes, TemplateReconciler(client), self.pools, self.claims, self.endpoints,
             QuotaReconciler(client), self.snapshots],
            metrics=metrics,
        )

    async def start(self) -> None:
        await self.collector.start()
        await self.manager.start()
        await self.idle.start()

    async def stop(self) -> None:
        await self.idle.stop()
        await self.manager.stop()
        await self.collector.stop()
