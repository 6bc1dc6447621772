"""The node: everything a kubelet does on this machine, put together and started in order.

``Node(client, runtime, ...)`` is started by the embedded control plane
(``turbok.embedded.controlplane``) beside the controllers; it sees the
cluster only through the ``Client`` protocol and runs Pods only through
``PodRuntime``, so the same node could serve any API server.

Start, in order:

1. Register the Node object and its Lease (``nodeinfo``).
2. Start local storage (``storage.LocalStorage``) when given a root.
3. Subscribe to changes (before listing, so none is lost), list the Pods,
   make a worker for each Pod bound here (it re-adopts a sandbox that still
   runs, keeping its status), and feed the scheduler the rest.
4. Remove runtime sandboxes that no Pod here names and no kept state
   (``suspend``) holds; forget kept state no owner and no Pod keep.
5. Loops: the heartbeat (Lease 10 s, status when it changes), the relist
   (the kubelet's PLEG: a worker whose sandbox's containers changed is woken;
   evented where the runtime tells when sandbox processes end, with a sweep
   of every pod as often as 1% of a core allows, from ``relist_seconds`` to
   ``sweep_seconds``; else every pod each ``relist_seconds``, 2 s), and the
   kept-state collector.

Stop cancels the workers without touching the Pods or their sandboxes: a
control plane that stops leaves its Pods running, and the next start adopts
them.

Changes are routed synchronously from the client's subscription: a Pod bound
here reaches its worker within the event-loop turn of the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from turbok.api import meta as m
from turbok.api.meta import FieldSelector
from turbok.api.status import ApiError
from turbok.node.client import NodeClient, Obj, ObjectEvent
from turbok.node.clock import Clock, MonotonicClock
from turbok.node.containers import fingerprint
from turbok.node.context import NodeContext
from turbok.node.dra.setup import DraSettings, NodeDraStack
from turbok.node.events import KUBELET, SCHEDULER, EventRecorder
from turbok.node.hostroom import DEFAULT_DISK_RESERVE, DEFAULT_MEMORY_RESERVE, HostRoom, host_facts
from turbok.node.netpolicy import NetworkPolicies, PolicyNetwork, dns_config
from turbok.node.nodeinfo import DEFAULT_MAX_PODS, Machine, NodeReporter, node_name, probe_machine
from turbok.node.podworker import PodWorker
from turbok.node.reaper import DEFAULT_SLOTS, Reaper
from turbok.node.scheduler import Scheduler
from turbok.node.snapshots import NodeSnapshots
from turbok.node.startqueue import StartQueue
from turbok.node.status import StatusWriter
from turbok.node.storage import LocalStorage
from turbok.node.suspend import GC_SECONDS, IDENTITY, Kept, KeptStates, runtime_id
from turbok.node.volumes import ServiceAccountTokens
from turbok.runtime.cri import PodRuntime
from turbok.runtime.errors import RuntimeError_
from turbok.runtime.network_dns import PodResolver
from turbok.settings import check_positive, from_env

__all__ = ["MIRROR_ANNOTATION", "Node", "NodeSettings"]

log = logging.getLogger(__name__)

#: Pods that mirror something this node does not run (the router's, say): never run, never touched.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
#: Sandboxes whose state is read per trip of the relist before other work gets the event loop. A read is
#: about 0.2 ms of CPU on a quiet machine, but each of its file reads is a chance for the kernel to run a
#: booting sandbox instead: with both cores busy refilling a pool, trips of 20 held the loop 80-350 ms
#: (sampled with the loop's stack). Trips of 4 keep that off the tail latency of API requests.
RELIST_BATCH = 4
#: CPU seconds of one look at a pod sandbox's status under gVisor (measured: 0.2-0.5 ms), and the share of a core
#: the sweeps of an evented relist may take.
LOOK_SECONDS = 0.0005
SWEEP_BUDGET = 0.01
#: How often running pods' configMap/secret/downwardAPI/projected files are looked at again without a
#: change (kubelet's sync period: a minute); a Secret or ConfigMap change is followed at once.
VOLUME_SYNC_SECONDS = 60.0
DEFAULT_CPU_OVERCOMMIT = 16.0


@dataclass(frozen=True)
class NodeSettings:
    """The node's bounds (docs/node.md); each from its ``TURBOK_NODE_*`` variable when set."""

    #: ``status.capacity.pods`` (TURBOK_NODE_MAX_PODS); 0: what the machine holds (``nodeinfo.pods_capacity``)
    max_pods: int = DEFAULT_MAX_PODS
    #: boots at once (TURBOK_NODE_START_SLOTS); 0: the CPUs this process may use
    start_slots: int = 0
    #: seconds between two looks at every running sandbox (TURBOK_NODE_RELIST_SECONDS): how late a container
    #: that ended on its own may be noticed. The kubelet's PLEG says 1 s; each look costs about 0.2 ms of CPU
    #: per Pod here, so 2 s keeps 600 warm Pods under 6% of a core.
    relist_seconds: float = 2.0
    #: the most seconds between two looks at every sandbox where the runtime tells when sandboxes end
    #: (TURBOK_NODE_SWEEP_SECONDS; ``PodRuntime.exits``): the look catches what no process end shows (a disk
    #: turned read-only). Below it, every ``relist_seconds`` while that costs under 1% of a core (40 Pods),
    #: then as often as 1% allows (1,200 Pods and more: each 60 s)
    sweep_seconds: float = 60.0
    #: ``status.allocatable.cpu`` = the CPUs x this (TURBOK_NODE_CPU_OVERCOMMIT). CPU is compressible and an
    #: idle gVisor sandbox uses about a thousandth of a core, so scheduling by requests one to one would leave a
    #: 2-core machine with two sandboxes of ``cpu: 1``; limits are still enforced (CFS quota). 1: the kubelet's
    #: accounting. Memory is never overcommitted.
    cpu_overcommit: float = DEFAULT_CPU_OVERCOMMIT
    #: pod sandboxes stopped or removed at once (TURBOK_NODE_TEARDOWNS; ``turbok.node.reaper``): deletions beyond
    #: it queue, boots never wait for it
    teardowns: int = DEFAULT_SLOTS
    #: memory the scheduler keeps free of new sandboxes (TURBOK_NODE_MEMORY_RESERVE, a size such as 1Gi): no
    #: Pod is bound while MemAvailable less this cannot hold one more idle sandbox (``hostroom``)
    memory_reserve: int = DEFAULT_MEMORY_RESERVE
    #: free space of the home below which no Pod is bound (TURBOK_NODE_DISK_RESERVE)
    disk_reserve: int = DEFAULT_DISK_RESERVE

    def __post_init__(self) -> None:
        check_positive(self, zero_allowed=frozenset({"start_slots", "max_pods", "memory_reserve",
                                                     "disk_reserve"}))

    @classmethod
    def from_env(cls) -> NodeSettings:
        return from_env(cls, {"max_pods": "TURBOK_NODE_MAX_PODS", "start_slots": "TURBOK_NODE_START_SLOTS",
                              "relist_seconds": "TURBOK_NODE_RELIST_SECONDS",
                              "sweep_seconds": "TURBOK_NODE_SWEEP_SECONDS",
                              "cpu_overcommit": "TURBOK_NODE_CPU_OVERCOMMIT", "teardowns": "TURBOK_NODE_TEARDOWNS",
                              "memory_reserve": "TURBOK_NODE_MEMORY_RESERVE",
                              "disk_reserve": "TURBOK_NODE_DISK_RESERVE"})


class Node:
    def __init__(self, client: NodeClient, runtime: PodRuntime, *, state_dir: Path, disk: Path | None = None,
                 name: str | None = None, kubelet_version: str = "v1.34.0", runtime_version: str | None = None,
                 scheduler: bool = True, storage_root: Path | None = None, internal_ip: str = "127.0.0.1",
                 pod_cidr: str | None = None, clock: Clock | None = None, settings: NodeSettings | None = None,
                 machine: Callable[[], Machine] | None = None, network: PolicyNetwork | None = None,
                 resolv_conf: Path = Path("/etc/resolv.conf"), serve_dns: bool = True,
                 dra: DraSettings | None = None) -> None:
        self.client = client
        self.runtime = runtime
        self.name = name or node_name()
        self.settings = settings or NodeSettings()
        self.clock = clock or MonotonicClock()
        self.state_dir = state_dir
        disk = disk or state_dir
        self.pod_kind = client.kinds.by_kind("v1", "Pod")
        self._resources = {self.pod_kind.key, client.kinds.by_kind("v1", "Node").key}
        self._inputs = {client.kinds.by_kind(v, k).key for v, k in (
            ("v1", "Secret"), ("v1", "ConfigMap"), ("v1", "PersistentVolumeClaim"), ("v1", "PersistentVolume"))}
        self._claims = client.kinds.by_kind("v1", "PersistentVolumeClaim").key
        self._files_inputs = {client.kinds.by_kind("v1", k).key for k in ("Secret", "ConfigMap")}
        self.events = EventRecorder(client, component=KUBELET, host=self.name)
        self.scheduler_events = EventRecorder(client, component=SCHEDULER, host=self.name)
        self.reporter = NodeReporter(
            client=client, name=self.name, machine=machine or (lambda: probe_machine(disk, internal_ip)),
            runtime_version=runtime_version or f"{runtime.isolation.value}://unknown",
            kubelet_version=kubelet_version, max_pods=self.settings.max_pods,
            cpu_overcommit=self.settings.cpu_overcommit, pod_cidr=pod_cidr, clock=self.clock)
        # The host's room, read cheaply (``hostroom.host_facts``); a test's ``machine`` stands in for both.
        self.room = HostRoom(machine or host_facts(disk, internal_ip), clock=self.clock,
                             memory_reserve=self.settings.memory_reserve, disk_reserve=self.settings.disk_reserve,
                             bridge_ports=getattr(network, "bridge_ports", None))
        self.scheduler = Scheduler(client, self.name, self.scheduler_events, room=self.room) if scheduler else None
        # Dynamic Resource Allocation (turbok.node.dra): claims allocated and prepared, turbok's GPU driver.
        self.dra = NodeDraStack(client, dra, node_name=self.name, events=self.scheduler_events,
                                embedded=scheduler) if dra is not None else None
        self._dra_kinds = {client.kinds.by_kind("resource.k8s.io/v1", k).key for k in (
            "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice", "DeviceClass")} if dra is not None else set()
        self._inputs |= self._dra_kinds
        if self.dra is not None and self.scheduler is not None:
            self.scheduler.dra = self.dra.scheduling
        self.storage = LocalStorage(client, storage_root, node_name=self.name) if storage_root else None
        self.kept = KeptStates(state_dir / "kept")
        self.ctx = NodeContext(client=client, runtime=runtime, node_name=self.name, host_ip=internal_ip,
                               clock=self.clock, events=self.events, status=StatusWriter(client, self.pod_kind),
                               starts=StartQueue(self.settings.start_slots or None), kept=self.kept,
                               pod_kind=self.pod_kind, storage=self.storage,
                               tokens=ServiceAccountTokens(state_dir / "serviceaccount.key", node_name=self.name),
                               allocatable=lambda: self.reporter.allocatable,
                               dra=self.dra.manager if self.dra is not None else None,
                               reaper=Reaper(self.settings.teardowns))
        # The pod network's policies and DNS (a CNI's job on a cluster): turbok.node.netpolicy.
        self.policies = NetworkPolicies(client, network, node_name=self.name) if network is not None else None
        self.resolver: PodResolver | None = None
        if network is not None:
            self._resources |= self.policies.resources  # type: ignore[union-attr]
            gateway = str(getattr(network, "gateway"))  # noqa: B009 (a PodNetwork's, not in the protocol)
            if serve_dns:
                self.resolver = PodResolver(gateway, resolv_conf=resolv_conf,
                                            netns_path=getattr(network, "host_netns", None))
            self.ctx.dns = lambda pod: dns_config(pod, gateway, resolv_conf=resolv_conf)
        # The Pod Snapshot API (podsnapshot.gke.io) where the API serves it: turbok.node.snapshots.
        self.snapshots: NodeSnapshots | None = None
        with contextlib.suppress(ApiError):
            self.snapshots = NodeSnapshots(client, runtime, node_name=self.name, pod_kind=self.pod_kind,
                                           record=self.events.record)
            self.ctx.snapshots = self.snapshots
            self._resources |= self.snapshots.resources
        self.workers: dict[str, PodWorker] = {}
        self._owners: dict[tuple[str, str, str], set[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._started = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        node = await self.reporter.register()
        if self.scheduler is not None:
            self.scheduler.observe_node(node)
        if self.storage is not None:
            await self.storage.start()
        if self.dra is not None:
            await self.dra.start()
        for kept in self.kept.load().values():
            self._index_owner(kept)
        if self.resolver is not None:
            try:
                await self.resolver.start()
            except OSError as e:  # port 53 taken on the gateway: pods' names do not resolve, said once here
                log.warning("node %s: no DNS for pods: cannot serve %s:53 (%s)", self.name, self.resolver.address,
                            e.strerror or e)
                self.resolver = None
        self.client.subscribe(self._route)
        self._started = True
        if self.dra is not None:  # the accelerator metrics' first listing, now that changes reach them
            await self.dra.load()
        if self.policies is not None:  # before the Pods: their first bindings see every policy
            await self.policies.start()
        # Embedded, the scheduler wants the unscheduled Pods too; without it, only those bound here.
        selector = None if self.scheduler is not None else FieldSelector.parse(
            f"spec.nodeName={self.name}", extra=self.pod_kind.field_selectors)
        for pod in await self.client.list(self.pod_kind, field_selector=selector):
            self._pod(pod, deleted=False)
        await self._sweep()
        if self.snapshots is not None:
            await self.snapshots.start()
        self._tasks = [asyncio.create_task(self.reporter.run(), name="node-heartbeat"),
                       asyncio.create_task(self._relist(), name="node-relist"),
                       asyncio.create_task(self._sync_volumes(), name="node-volume-sync"),
                       asyncio.create_task(self._collect_loop(), name="node-kept-gc")]
        log.info("node %s: running %d pods", self.name, len(self.workers))

    async def stop(self) -> None:
        self._started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.snapshots is not None:
            await self.snapshots.stop()
        await asyncio.gather(*(w.stop() for w in list(self.workers.values())), return_exceptions=True)
        self.workers.clear()
        await self.ctx.reaper.stop()  # what it had left is swept at the next start
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.dra is not None:
            await self.dra.stop()
        if self.storage is not None:
            await self.storage.stop()
        if self.policies is not None:
            await self.policies.stop()
        if self.resolver is not None:
            await self.resolver.stop()
        await self.ctx.status.stop()
        await self.events.stop()
        await self.scheduler_events.stop()

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ routing

    def _route(self, event: ObjectEvent) -> None:
        if not self._started:
            return
        resource = event.resource
        if resource in self._resources:
            obj = event.object()
            if resource == self.pod_kind.key:
                self._pod(obj, deleted=event.type == "DELETED")
            elif self.snapshots is not None and resource in self.snapshots.resources:
                self.snapshots.changed(event)
            elif self.policies is not None and resource in self.policies.resources:
                self.policies.object_changed(resource, obj, event.type == "DELETED")
            elif event.name == self.name and self.scheduler is not None:
                self.scheduler.observe_node(None if event.type == "DELETED" else obj)
            return
        if resource in self._inputs:
            if resource == self._claims and self.scheduler is not None:
                self.scheduler.observe_claim()
            if resource in self._dra_kinds and self.dra is not None:
                self.dra.observe(event)
                if self.scheduler is not None:
                    self.scheduler.observe_claim()
                if self.dra.claims is not None:
                    self.dra.claims.observe_claims()
            for worker in list(self.ctx.input_waiters):
                if worker.pod["metadata"].get("namespace") == event.namespace or not event.namespace:
                    worker.inputs_changed()
            if resource in self._files_inputs:  # running pods' configMap/secret volumes follow (kubelet's sync)
                for worker in list(self.workers.values()):
                    if worker.pod["metadata"].get("namespace") == event.namespace and any(
                            isinstance(v, dict) and ("configMap" in v or "secret" in v or "projected" in v)
                            for v in (worker.pod.get("spec") or {}).get("volumes") or []):
                        self._spawn(worker.refresh_volumes(), f"node-volumes {worker.key}")
        if event.type == "DELETED" and (resource, event.namespace, event.name) in self._owners:
            self._spawn(self._collect(), "node-kept-gc-owner")

    def _pod(self, pod: Obj, *, deleted: bool) -> None:
        md = pod["metadata"]
        if MIRROR_ANNOTATION in (md.get("annotations") or {}):
            return
        if self.policies is not None:  # its rules before its worker boots it
            self.policies.pod_changed(pod, deleted)
        if self.scheduler is not None:
            self.scheduler.observe(pod, deleted=deleted)
        if self.dra is not None and self.dra.claims is not None:
            self.dra.claims.observe_pod(pod, deleted=deleted)
        worker = self.workers.get(md["uid"])
        if deleted:
            if worker is not None:
                worker.removed(pod)
            elif (pod.get("spec") or {}).get("nodeName") == self.name:
                self._spawn(self._orphan(pod), f"node-orphan {md['name']}")
            return
        if (pod.get("spec") or {}).get("nodeName") != self.name:
            return
        if worker is None:
            if self._rejected(pod):
                return
            worker = self.workers[md["uid"]] = PodWorker(self.ctx, pod, on_done=self._worker_done)
            worker.start()
        else:
            worker.update(pod)

    def _rejected(self, pod: Obj) -> bool:
        """Whether the kubelet's admission rejects a Pod that came here without the scheduler (a Pod the node
        took once has ``status.startTime``): it fails, with the reason as status and a Warning event."""
        status = pod.get("status") or {}
        if self.scheduler is None or status.get("startTime") or status.get("phase") in ("Succeeded", "Failed"):
            return False
        rejected = self.scheduler.admission(pod)
        if rejected is None:
            return False
        reason, message = rejected
        self.ctx.events.record(pod, reason, message, warning=True)
        self.ctx.status.set(pod, {"phase": "Failed", "reason": reason, "message": f"Pod was rejected: {message}",
                                  "startTime": m.now()})
        return True

    def _worker_done(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
        kept = self.kept.get(worker.rid)
        if kept is not None:
            self._index_owner(kept)

    async def _orphan(self, pod: Obj) -> None:
        """A Pod bound here vanished before any worker saw it: its runtime state goes (unless it is kept)."""
        rid = runtime_id(pod)
        async with self.ctx.lock(rid):
            if self.kept.get(rid) is None and not any(w.rid == rid for w in self.workers.values()):
                with contextlib.suppress(RuntimeError_):
                    async with self.ctx.reaper.slot():
                        await self.runtime.remove_pod_sandbox(rid)
                    await self._release(rid)

    # ------------------------------------------------------------ the runtime's view

    async def _sweep(self) -> None:
        """At start: remove runtime sandboxes no Pod here names and no kept state holds."""
        wanted = {w.rid for w in self.workers.values()} | {k.id for k in self.kept.all()}
        try:
            ids = await self.runtime.list_pod_sandboxes()
        except RuntimeError_ as e:
            log.warning("node %s: listing pod sandboxes: %s", self.name, e)
            return
        for rid in ids:
            if rid not in wanted:
                log.info("removing pod sandbox %s: no Pod on node %s names it", rid, self.name)
                self._spawn(self._remove(rid), f"node-sweep {rid}")
        await self._collect()

    async def _remove(self, rid: str) -> None:
        async with self.ctx.lock(rid):
            if any(w.rid == rid for w in self.workers.values()) or self.kept.get(rid) is not None:
                return  # a Pod for it appeared meanwhile
            try:
                async with self.ctx.reaper.slot():
                    await self.runtime.remove_pod_sandbox(rid)
            except RuntimeError_ as e:
                log.warning("removing pod sandbox %s: %s", rid, e)
                return
            await self._release(rid)

    async def _release(self, rid: str) -> None:
        """What local storage kept for a removed pod sandbox (its bounded emptyDirs) goes too."""
        if self.storage is None:
            return
        try:
            await self.storage.release_pod(rid)
        except (OSError, ValueError) as e:
            log.warning("removing the emptyDirs of pod sandbox %s: %s", rid, e)

    async def _sync_volumes(self) -> None:
        """kubelet's periodic sync of volume contents: tokens near their expiry, downward API labels."""
        while True:
            await self.clock.sleep(VOLUME_SYNC_SECONDS)
            for worker in list(self.workers.values()):
                try:
                    await worker.refresh_volumes()
                except Exception:  # one pod's volumes never stop the others'
                    log.exception("pod %s: refreshing its volumes", worker.key)

    async def _relist(self) -> None:
        """The kubelet's PLEG: wake the workers whose sandboxes changed since they last looked. Where the
        runtime tells when sandbox processes end (``PodRuntime.exits``: the evented PLEG), those pods are
        looked at as it happens and every pod as often as ``_sweep_interval`` says; else every pod each
        ``relist_seconds``."""
        exits = self.runtime.exits
        if exits is None or not exits.available:
            while True:
                await self.clock.sleep(self.settings.relist_seconds)
                await self._look(list(self.workers.values()))
        ended: set[str] = set()
        told = asyncio.Event()

        def ended_now(rid: str) -> None:
            ended.add(rid)
            told.set()

        unsubscribe = exits.subscribe(ended_now, asyncio.get_running_loop())
        try:
            sweep = self.clock.now() + self.settings.relist_seconds  # soon: sandboxes adopted at start get watched
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(told.wait(), max(sweep - self.clock.now(), 0.0))
                told.clear()
                if self.clock.now() >= sweep:
                    workers = list(self.workers.values())
                    sweep = self.clock.now() + self._sweep_interval(len(workers))
                else:
                    workers = [w for w in self.workers.values() if w.rid in ended]
                ended.clear()
                await self._look(workers)
        finally:
            unsubscribe()

    def _sweep_interval(self, pods: int) -> float:
        """Seconds to the next look at every pod: ``relist_seconds`` while that costs under ``SWEEP_BUDGET`` of a
        core (a few dozen pods: what no process end shows, such as a disk turned read-only, is seen as soon as
        before), longer as the pods grow, up to ``sweep_seconds``."""
        return min(self.settings.sweep_seconds, max(self.settings.relist_seconds, pods * LOOK_SECONDS / SWEEP_BUDGET))

    async def _look(self, workers: list[PodWorker]) -> None:
        """Wake each watched worker whose sandbox's status changed since it last looked."""
        for i, worker in enumerate(w for w in workers if w.watched):
            if i and i % RELIST_BATCH == 0:
                await asyncio.sleep(0)
            try:
                status = await self.runtime.pod_sandbox_status(worker.rid)
            except RuntimeError_:
                continue
            if fingerprint(status) != worker.fingerprint:
                worker.wake()

    # ------------------------------------------------------------ kept state

    def _index_owner(self, kept: Kept) -> None:
        owner = kept.owner
        if not owner:
            return
        try:
            kind = self.client.kinds.by_kind(str(owner.get("apiVersion")), str(owner.get("kind")))
        except ApiError:
            return
        key = (kind.key, kept.namespace if kind.namespaced else "", str(owner.get("name")))
        self._owners.setdefault(key, set()).add(kept.id)

    async def _collect_loop(self) -> None:
        while True:
            await self.clock.sleep(GC_SECONDS)
            try:
                await self._collect()
            except ApiError as e:
                log.warning("node %s: collecting kept state: %s", self.name, e)

    async def _collect(self) -> None:
        """Remove kept state that no Pod and no owner keep any more."""
        for kept in self.kept.all():
            if self.ctx.busy(kept.id) or await self._kept_alive(kept):
                continue
            async with self.ctx.lock(kept.id):
                if self.kept.get(kept.id) is None or any(w.rid == kept.id for w in self.workers.values()):
                    continue
                log.info("removing kept pod sandbox %s (%s/%s): its owner and its Pods are gone", kept.id,
                         kept.namespace, kept.pod)
                try:
                    async with self.ctx.reaper.slot():
                        await self.runtime.remove_pod_sandbox(kept.id)
                except RuntimeError_ as e:
                    log.warning("removing kept pod sandbox %s: %s", kept.id, e)
                    continue
                await self._release(kept.id)
                self.kept.remove(kept.id)
                for ids in self._owners.values():
                    ids.discard(kept.id)

    async def _kept_alive(self, kept: Kept) -> bool:
        owner = kept.owner
        if owner:
            try:
                kind = self.client.kinds.by_kind(str(owner.get("apiVersion")), str(owner.get("kind")))
                obj = await self.client.try_get(kind, kept.namespace if kind.namespaced else "",
                                                str(owner.get("name")))
            except ApiError:
                obj = None
            if obj is not None and obj["metadata"].get("uid") == owner.get("uid"):
                return True
        for pod in await self.client.list(self.pod_kind, kept.namespace):
            if ((pod["metadata"].get("annotations") or {}).get(IDENTITY)) == kept.identity:
                return True
        return False
