"""``turbok operator``: the controllers of the embedded engine, run against a real Kubernetes API server.

Order of a run:

1. Connect (kubeconfig, or the Pod's ServiceAccount in a cluster) and start the informers: every cached
   kind listed in pages and watched (``KubeClient``). A standby keeps warm caches, so taking over costs
   no relist.
2. Leader election on the Lease ``turbok-operator`` in the operator's namespace (``LeaderElector``);
   ``--leader-elect=false`` skips it (one replica, or tests).
3. Leading: the manager starts the Sandbox, SandboxTemplate, SandboxWarmPool and SandboxClaim reconcilers
   (the same code as ``turbok up`` runs) over the cached client.
4. SIGTERM/SIGINT (graceful shutdown): stop the reconcilers (work in flight is cancelled between API calls;
   every write is idempotent, the next leader finishes it), release the Lease so a standby takes over at
   once, stop the watches. A lost Lease (renewals failing for the renew deadline) ends the run with an
   error: an operator that may no longer lead stops acting rather than race the new leader.

What a cluster does instead of turbok: kube-controller-manager's garbage collector removes what a deleted
Sandbox owned (ownerReferences with ``blockOwnerDeletion``), its namespace, ServiceAccount, root CA,
Endpoints and ResourceQuota controllers do their jobs, and the kubelet runs the Pods (runtimeClassName
``gvisor``). So the operator runs only the Agent Sandbox reconcilers. Health: ``/healthz`` (alive),
``/readyz`` (caches synced), ``/metrics`` (Prometheus), on ``--health-address``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from turbok.client.api import AsyncApi
from turbok.client.kubeconfig import ClusterConfig, load_kubeconfig
from turbok.controllers.claim import ClaimReconciler
from turbok.controllers.events import EventRecorder
from turbok.controllers.injection import DEFAULT_LABEL_DOMAINS
from turbok.controllers.manager import Manager
from turbok.controllers.sandbox import SandboxReconciler
from turbok.controllers.template import TemplateReconciler
from turbok.controllers.warmpool import WarmPoolReconciler
from turbok.errors import TurbokError
from turbok.kube.client import KubeClient, claim_lane
from turbok.kube.leader import LeaderElector, LeaseSettings

__all__ = ["LeadershipLost", "Operator", "OperatorSettings", "operator_namespace"]

log = logging.getLogger(__name__)

FIELD_MANAGER = "turbok-operator"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class LeadershipLost(TurbokError):
    """The Lease could not be renewed: another replica may lead now."""


def operator_namespace() -> str:
    """The namespace of the operator's Lease: ``$POD_NAMESPACE``, the Pod's own, else ``turbok-system``."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if _SA_NAMESPACE.exists():
        return _SA_NAMESPACE.read_text().strip()
    return "turbok-system"


@dataclass(frozen=True)
class OperatorSettings:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str = "turbok-system"
    leader_elect: bool = True
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: client-side rate limit: requests a second and burst (client-go's defaults are 5/10; upstream's
    #: load tests run unlimited). A warm claim costs about 8 requests (sandbox update, Pod relabel,
    #: statuses, an Event): a burst of 300 claims in a second needs about 2,400.
    qps: float = 1000.0
    burst: int = 2000
    runtime_class: str = "gvisor"
    health_address: str = "127.0.0.1:8081"
    watch_timeout: int = 300
    #: reconciles of each kind at once (different objects): on a cluster each is mostly waiting on the API
    #: server, so more than the embedded engine's few (upstream's load tests run 1000)
    workers: int = 32
    #: requests to the API server in flight at once (HTTP/1.1 connections; watches have their own). 32
    #: workers and 64 connections served a burst of 300 claims no slower than 128 and 128 here.
    connections: int = 64
    pool_coalesce: float = 0.5
    allowed_label_domains: tuple[str, ...] = DEFAULT_LABEL_DOMAINS


class Operator:
    def __init__(self, settings: OperatorSettings, config: ClusterConfig | None = None) -> None:
        self.settings = settings
        self.config = config or load_kubeconfig(settings.kubeconfig, settings.context)
        self.identity = settings.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.metrics = CollectorRegistry()
        self.api = AsyncApi(self.config, qps=settings.qps, burst=settings.burst, field_manager=FIELD_MANAGER,
                            user_agent=f"turbok-operator/{self.identity}", connections=settings.connections)
        self.client = KubeClient(self.api, runtime_class=settings.runtime_class or None,
                                 watch_timeout=settings.watch_timeout)
        self.elector: LeaderElector | None = None
        if settings.leader_elect:
            # its own connection: renewals must not queue behind the controllers' burst of writes
            lease_api = AsyncApi(self.config, qps=0, burst=1, field_manager=FIELD_MANAGER,
                                 user_agent=f"turbok-operator/{self.identity}", timeout=settings.renew_deadline)
            self.elector = LeaderElector(lease_api, self.identity, LeaseSettings(
                settings.namespace, lease_duration=settings.lease_duration, renew_deadline=settings.renew_deadline,
                retry_period=settings.retry_period))
        self.manager: Manager | None = None
        self.ready = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def _manager(self) -> Manager:
        client = self.client
        events = EventRecorder(client)
        reconcilers = [
            SandboxReconciler(client, events=events), TemplateReconciler(client), WarmPoolReconciler(client, events=events),
            ClaimReconciler(client, metrics=self.metrics, events=events,
                            allowed_label_domains=self.settings.allowed_label_domains),
        ]
        for reconciler in reconcilers:
            reconciler.concurrency = max(reconciler.concurrency, self.settings.workers)
        # a pool refills behind a burst rather than during it: its changes are gathered for half a second
        reconcilers[2].coalesce = max(reconcilers[2].coalesce, self.settings.pool_coalesce)
        claims = reconcilers[-1]
        serve = claims.reconcile

        async def reconcile_claim(namespace: str, name: str) -> Any:
            with claim_lane():  # a claim's writes go before refills and relabelling (KubeClient)
                return await serve(namespace, name)

        claims.reconcile = reconcile_claim  # type: ignore[method-assign]
        return Manager(client, reconcilers, metrics=self.metrics)

    async def _serve_health(self) -> None:
        if not self.settings.health_address:
            return
        host, _, port = self.settings.health_address.rpartition(":")

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            return web.Response(text="ok") if self.ready.is_set() else web.Response(status=503, text="not ready")

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host or "0.0.0.0", int(port)).start()  # noqa: S104 (kubelet probes)

    async def start(self) -> None:
        """Caches, then leadership (waits while another replica leads), then the reconcilers."""
        await self._serve_health()
        await self.client.start()
        self.ready.set()
        if self.elector is not None:
            await self.elector.acquire()
        self.manager = self._manager()
        await self.manager.start()
        log.info("turbok operator %s running against %s", self.identity, self.config.server)

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
        if self.elector is not None:
            await self.elector.release()
            await self.elector.api.close()
        await self.client.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``stop``); ``LeadershipLost`` if the Lease is lost."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, stop.set)
        lost = self.elector.lost if self.elector is not None else asyncio.Event()
        try:
            starting = asyncio.create_task(self.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            starting.result()
            losing = asyncio.create_task(lost.wait())
            await asyncio.wait({stopping, losing}, return_when=asyncio.FIRST_COMPLETED)
            losing.cancel()
            stopping.cancel()
            if lost.is_set():
                raise LeadershipLost(f"{self.identity} lost the Lease {self.settings.namespace}/turbok-operator; "
                                     "exiting so that only the new leader acts")
        finally:
            await self.stop()
