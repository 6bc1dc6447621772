"""What every pod worker of a node shares: the cluster, the runtime, the clock, the writers, the locks.

``NodeContext.lock(id)`` serialises the workers of one runtime id: an old Pod
of a Sandbox still terminating and its new Pod (same
``turbok.dev/sandbox-identity``) never act on the pod sandbox at once, and the
node's sweeps never remove a sandbox a worker holds. It is granted only once
the id's background removal (``reaper``) is done, so a new Pod never boots into
one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from turbok.api.kinds import Kind
from turbok.node.client import NodeClient, Obj
from turbok.node.clock import Clock
from turbok.node.events import EventRecorder
from turbok.node.reaper import Reaper
from turbok.node.startqueue import StartQueue
from turbok.node.status import StatusWriter
from turbok.node.storage import LocalStorage
from turbok.node.suspend import KeptStates
from turbok.node.volumes import ServiceAccountTokens
from turbok.runtime.cri import DNSConfig, PodRuntime

if TYPE_CHECKING:
    from turbok.node.dra.manager import NodeDra
    from turbok.node.podworker import PodWorker
    from turbok.node.snapshots import NodeSnapshots

__all__ = ["NodeContext"]


@dataclass
class NodeContext:
    """What every pod worker of a node shares."""

    client: NodeClient
    runtime: PodRuntime
    node_name: str
    host_ip: str
    clock: Clock
    events: EventRecorder
    status: StatusWriter
    starts: StartQueue
    kept: KeptStates
    pod_kind: Kind
    #: workers waiting for a Secret, ConfigMap or claim to appear: the node wakes them on such changes
    input_waiters: set[PodWorker] = field(default_factory=set)
    #: local storage (claims, bounded emptyDirs), the service-account token issuer, the Node's allocatable
    #: (for resourceFieldRef and memory emptyDirs): the pod inputs of ``env``/``volumes`` (helper N2)
    storage: LocalStorage | None = None
    tokens: ServiceAccountTokens | None = None
    allocatable: Callable[[], Mapping[str, Decimal]] = dict
    #: a pod's resolv.conf (``turbok.node.netpolicy.dns_config``); None: the image's own (no pod network)
    dns: Callable[[Obj], DNSConfig | None] = lambda pod: None
    #: the Pod Snapshot API on this node (``turbok.node.snapshots``): what a Pod starts from; None without it
    snapshots: NodeSnapshots | None = None
    #: a Pod's ResourceClaims prepared by their DRA drivers before its sandbox starts (``turbok.node.dra``)
    dra: NodeDra | None = None
    #: the node's bounded teardowns and the removals still running after their Pods went (``turbok.node.reaper``)
    reaper: Reaper = field(default_factory=Reaper)
    _locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def lock(self, id: str) -> AsyncIterator[None]:
        """Hold the runtime id ``id`` (one worker at a time per pod sandbox)."""
        lock, users = self._locks.get(id) or (asyncio.Lock(), 0)
        self._locks[id] = (lock, users + 1)
        try:
            async with lock:
                await self.reaper.removed(id)  # queued for the lock before its removal began: not into it
                yield
        finally:
            lock, users = self._locks[id]
            if users <= 1:
                del self._locks[id]
            else:
                self._locks[id] = (lock, users - 1)

    def busy(self, id: str) -> bool:
        return id in self._locks
