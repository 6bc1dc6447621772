"""Pod snapshots on this node: the GKE Pod Snapshot API (``podsnapshot.gke.io/v1``), done by a kubelet's hands.

What the node reads and writes (docs/sandboxes.md, "Snapshots and forks"):

1. A ``PodSnapshotManualTrigger`` (``spec.targetPod``) naming a Pod bound here:
   the node makes a ``PodSnapshot`` named like the trigger (labelled with the
   Pod's ``agents.x-k8s.io/sandbox-name-hash``, annotated
   ``podsnapshot.gke.io/origin-pod``; owned by what owns the trigger, else by
   the Pod's controller, so snapshots go with their Sandbox unless a
   ``SandboxSnapshot`` keeps them), takes it with
   ``PodRuntime.snapshot_pod_sandbox`` (memory and disk; the Pod runs on), then
   writes the PodSnapshot ``Ready`` and the trigger ``Triggered=True``/``Complete``
   with ``status.snapshotCreated.name``. What cannot be saved is
   ``Triggered=False``/``Failed`` with the reason (an open TCP connection is
   retried a few times first: a request may be in flight).
2. A Pod that starts (``restore_plan``, called by its worker before its first
   boot) from a snapshot: the PodSnapshot its annotation
   ``turbok.dev/restore-from`` names (a restore asked once), else the one
   ``podsnapshot.gke.io/ps-name`` names (a fork, or a restore asked by the
   client), unless the Pod resumes a sandbox whose state already came from that
   same snapshot; else, for a resume of a sandbox that has PodSnapshots of its
   own made through this API (not kept by a ``SandboxSnapshot``), the newest
   Ready one, as GKE resumes. The worker then writes the Pod condition
   ``PodRestored`` (True: "restored from snapshot NAME"; False with why).
3. A PodSnapshot deleted: its data goes (``remove_snapshot``); at start, data no
   PodSnapshot names any more goes too.

Snapshot data is keyed by the PodSnapshot's uid (``sandbox_id(uid)``), so a
PodSnapshot deleted and made again under the same name never finds old data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.api.status import AlreadyExists, ApiError, NotFound
from turbok.node.client import NodeClient, Obj, ObjectEvent
from turbok.node.suspend import IDENTITY, PS_NAME, Kept, identity, runtime_id
from turbok.runtime.cri import PodRuntime, PodSandboxState
from turbok.runtime.errors import RuntimeError_, SandboxNotRunning, SnapshotUnsupported
from turbok.runtime.ids import sandbox_id

__all__ = ["GROUP", "ORIGIN_POD", "PS_NAME", "RESTORED", "RESTORE_FROM", "NodeSnapshots", "RestorePlan", "snapshot_spec_hash"]

log = logging.getLogger(__name__)

GROUP = "podsnapshot.gke.io"
API = f"{GROUP}/v1"
#: On a PodSnapshot: the Pod it was taken of (what the official client lists as ``source_pod``).
ORIGIN_POD = "podsnapshot.gke.io/origin-pod"
#: On a Pod: start it from this PodSnapshot whatever its sandbox kept (a restore asked for once, by turbok's
#: controller for ``turbok sandbox restore``; only the one Pod made for that request carries it).
RESTORE_FROM = "turbok.dev/restore-from"
#: The Pod condition that says whether (and from what) a Pod was restored.
RESTORED = "PodRestored"
NAME_HASH = "agents.x-k8s.io/sandbox-name-hash"
#: On a PodSnapshot: the pod spec it was taken with (``snapshot_spec_hash``), the sandbox identity, the node.
SPEC_HASH = "turbok.dev/spec-hash"
NODE = "turbok.dev/node"
#: A SandboxSnapshot keeps the PodSnapshots it owns out of GKE's "resume from the newest" rule.
SANDBOX_SNAPSHOT = "SandboxSnapshot"
#: Tries of a snapshot refused for an open TCP connection (a request in flight), this many seconds apart.
CONNECTION_TRIES, CONNECTION_WAIT = 5, 2.0


def snapshot_spec_hash(pod: Obj) -> str:
    """What a Pod must share with the Pod a snapshot was taken of to start from it: its spec, less what the
    node and binding add and less the names of its claims (a fork has its own)."""
    spec = {k: v for k, v in (pod.get("spec") or {}).items()
            if k not in ("nodeName", "tolerations", "hostname", "subdomain")}
    volumes = []
    for v in spec.get("volumes") or []:
        if isinstance(v, dict) and isinstance(v.get("persistentVolumeClaim"), dict):
            v = {**v, "persistentVolumeClaim": {**v["persistentVolumeClaim"], "claimName": ""}}
        volumes.append(v)
    if volumes:
        spec["volumes"] = volumes
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RestorePlan:
    """What a Pod about to boot should start from: ``snapshot_id`` (the runtime's) of PodSnapshot ``name``, or
    nothing (``snapshot_id`` None) with ``reason``/``message`` saying why a snapshot it asked for is not used."""

    name: str
    snapshot_id: str | None
    reason: str = ""
    message: str = ""


def _condition(obj: Obj, type_: str) -> Obj | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def _ready(obj: Obj) -> bool:
    c = _condition(obj, "Ready")
    return c is not None and c.get("status") == "True"


class NodeSnapshots:
    """The node's side of the Pod Snapshot API (see the module docstring)."""

    def __init__(self, client: NodeClient, runtime: PodRuntime, *, node_name: str, pod_kind: Kind,
                 record: Callable[..., None] | None = None) -> None:
        self.client = client
        self.runtime = runtime
        self.node_name = node_name
        self.pod_kind = pod_kind
        self.trigger_kind = client.kinds.by_kind(API, "PodSnapshotManualTrigger")
        self.snapshot_kind = client.kinds.by_kind(API, "PodSnapshot")
        self.resources = {self.trigger_kind.key, self.snapshot_kind.key}
        self._record = record
        self._active: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    # ------------------------------------------------------------ lifecycle and routing

    async def start(self) -> None:
        self._started = True
        for trigger in await self.client.list(self.trigger_kind):
            self._trigger(trigger)
        await self._sweep()

    async def stop(self) -> None:
        self._started = False
        tasks = [*self._active.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._active.clear()

    def changed(self, event: ObjectEvent) -> None:
        """A trigger or a PodSnapshot changed (routed by the node, synchronously)."""
        if not self._started:
            return
        if event.resource == self.trigger_kind.key:
            if event.type != "DELETED":
                self._trigger(event.object())
        elif event.type == "DELETED":
            obj = event.object()
            if (obj.get("status") or {}).get("nodeName") in (None, self.node_name):
                self._spawn(self.runtime.remove_snapshot(sandbox_id(obj["metadata"]["uid"])))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _trigger(self, trigger: Obj) -> None:
        if _condition(trigger, "Triggered") is not None:
            return  # done (or failed) once: a trigger is never taken again
        md = trigger["metadata"]
        key = (md.get("namespace", ""), md["name"])
        running = self._active.get(key)
        if running is not None and not running.done():
            return
        self._active[key] = asyncio.ensure_future(self._take(key))

    async def _sweep(self) -> None:
        """Snapshot data no PodSnapshot names any more (deleted while the node was down) goes."""
        try:
            kept = {sandbox_id(s["metadata"]["uid"]) for s in await self.client.list(self.snapshot_kind)}
            for id in await self.runtime.list_snapshots():
                if id not in kept:
                    log.info("removing snapshot data %s: no PodSnapshot names it", id)
                    await self.runtime.remove_snapshot(id)
        except (ApiError, RuntimeError_) as e:
            log.warning("node %s: sweeping snapshot data: %s", self.node_name, e)

    # ------------------------------------------------------------ taking a snapshot

    async def _take(self, key: tuple[str, str]) -> None:
        try:
            await self._take_once(*key)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never leave a trigger unanswered: its client would wait for good
            log.exception("snapshot trigger %s/%s failed", *key)
            with contextlib.suppress(Exception):
                trigger = await self.client.try_get(self.trigger_kind, *key)
                if trigger is not None and _condition(trigger, "Triggered") is None:
                    await self._trigger_failed(trigger, f"the node could not take the snapshot: {e}")
        finally:
            self._active.pop(key, None)

    async def _take_once(self, namespace: str, name: str) -> None:
        trigger = await self.client.try_get(self.trigger_kind, namespace, name)
        if trigger is None or _condition(trigger, "Triggered") is not None:
            return
        target = trigger["spec"]["targetPod"]
        pod = await self.client.try_get(self.pod_kind, namespace, target)
        if pod is None:
            await self._trigger_failed(trigger, f'pod "{target}" not found')
            return
        if (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return  # another node's Pod (or not scheduled yet): that node answers
        if pod["metadata"].get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
            await self._trigger_failed(trigger, f'pod "{target}" is not running')
            return
        snapshot = await self._podsnapshot(trigger, pod)
        if _ready(snapshot):  # made before a restart of the control plane, and done
            await self._trigger_done(trigger, snapshot)
            return
        rid = runtime_id(pod)
        sid = sandbox_id(snapshot["metadata"]["uid"])
        info = None
        error = ""
        for attempt in range(CONNECTION_TRIES):
            try:
                status = await self.runtime.pod_sandbox_status(rid)
                if status.state is not PodSandboxState.READY:
                    raise SandboxNotRunning(f'pod "{target}" is not running')
                info = await self.runtime.snapshot_pod_sandbox(rid, sid)
                break
            except SnapshotUnsupported as e:
                error = str(e)
                if "TCP connections open" not in error or attempt == CONNECTION_TRIES - 1:
                    break
                await asyncio.sleep(CONNECTION_WAIT)
            except RuntimeError_ as e:
                error = str(e)
                break
        if info is None:
            log.warning("snapshot %s/%s of pod %s failed: %s", namespace, name, target, error)
            await self._write_status(self.snapshot_kind, snapshot, {
                "conditions": [self._cond(snapshot, "Ready", False, "Failed", error)], "nodeName": self.node_name})
            await self._trigger_failed(trigger, error)
            if self._record is not None:
                self._record(pod, "SnapshotFailed", f"snapshot {snapshot['metadata']['name']}: {error}", warning=True)
            return
        snapshot = await self._write_status(self.snapshot_kind, snapshot, {
            "conditions": [self._cond(snapshot, "Ready", True, "SnapshotReady",
                                      f"memory and disk of pod {target} saved on node {self.node_name}")],
            "nodeName": self.node_name, "memoryBytes": info.memory_bytes, "diskBytes": info.disk_bytes})
        await self._trigger_done(trigger, snapshot)
        if self._record is not None:
            self._record(pod, "Snapshotted", f"memory and disk saved as PodSnapshot {snapshot['metadata']['name']} "
                         f"({info.memory_bytes / 2**20:.1f} MiB of memory)")

    async def _podsnapshot(self, trigger: Obj, pod: Obj) -> Obj:
        """The trigger's PodSnapshot, made if new (named like the trigger)."""
        md, pmd = trigger["metadata"], pod["metadata"]
        owners = [dict(r, controller=False, blockOwnerDeletion=False) for r in md.get("ownerReferences") or []]
        if not owners:
            ref = next((r for r in pmd.get("ownerReferences") or [] if r.get("controller")), None)
            if ref is not None:
                owners = [dict(ref, controller=False, blockOwnerDeletion=False)]
        labels = {k: v for k, v in (pmd.get("labels") or {}).items() if k == NAME_HASH}
        body: Obj = {
            "apiVersion": API, "kind": "PodSnapshot",
            "metadata": {"name": md["name"], "namespace": md["namespace"], "labels": labels,
                         "annotations": {ORIGIN_POD: pmd["name"], IDENTITY: identity(pod),
                                         SPEC_HASH: snapshot_spec_hash(pod), NODE: self.node_name},
                         **({"ownerReferences": owners} if owners else {})},
            "spec": {"sourcePod": pmd["name"], "triggerName": md["name"]},
        }
        try:
            created = await self.client.create(self.snapshot_kind, body)
        except AlreadyExists:
            return await self.client.get(self.snapshot_kind, md["namespace"], md["name"])
        return await self._write_status(self.snapshot_kind, created, {
            "conditions": [self._cond(created, "Ready", False, "Pending", "taking the snapshot")],
            "nodeName": self.node_name})

    @staticmethod
    def _cond(obj: Obj, type_: str, value: bool, reason: str, message: str) -> Obj:
        status = {"conditions": list((obj.get("status") or {}).get("conditions") or [])}
        m.set_condition(status, type_, value, reason, message)
        return next(c for c in status["conditions"] if c["type"] == type_)

    async def _write_status(self, kind: Kind, obj: Obj, status: Obj) -> Obj:
        md = obj["metadata"]
        return await self.client.patch(kind, md["namespace"], md["name"], {"status": status}, subresource="status")

    async def _trigger_done(self, trigger: Obj, snapshot: Obj) -> None:
        with contextlib.suppress(NotFound):  # the client may delete its trigger as soon as it saw Complete
            await self._write_status(self.trigger_kind, trigger, {
                "conditions": [self._cond(trigger, "Triggered", True, "Complete",
                                          f"PodSnapshot {snapshot['metadata']['name']} is ready")],
                "snapshotCreated": {"name": snapshot["metadata"]["name"]}})

    async def _trigger_failed(self, trigger: Obj, message: str) -> None:
        with contextlib.suppress(NotFound):
            await self._write_status(self.trigger_kind, trigger, {
                "conditions": [self._cond(trigger, "Triggered", False, "Failed", message)]})

    # ------------------------------------------------------------ starting a Pod from one

    async def restore_plan(self, pod: Obj, kept: Kept | None) -> RestorePlan | None:
        """What the Pod should start from (see the module docstring, 2); None: its own state, as usual."""
        md = pod["metadata"]
        namespace = md.get("namespace", "")
        annotations = md.get("annotations") or {}
        name = annotations.get(RESTORE_FROM) or annotations.get(PS_NAME) or ""
        if name and RESTORE_FROM not in annotations and kept is not None and kept.snapshot == name:
            return None  # its sandbox's state already came from that snapshot: it resumes as it was
        snapshot: Obj | None = None
        if not name and kept is not None:
            snapshot = await self._newest_of(pod)
            if snapshot is None:
                return None
            name = snapshot["metadata"]["name"]
        if not name:
            return None
        if snapshot is None:
            snapshot = await self.client.try_get(self.snapshot_kind, namespace, name)
        if snapshot is None:
            return RestorePlan(name, None, "SnapshotNotFound", f'PodSnapshot "{name}" not found')
        if not _ready(snapshot):
            return RestorePlan(name, None, "SnapshotNotReady", f'PodSnapshot "{name}" is not ready')
        where = (snapshot.get("status") or {}).get("nodeName")
        if where and where != self.node_name:
            return RestorePlan(name, None, "SnapshotOnAnotherNode",
                               f'PodSnapshot "{name}" is held by node {where}, not {self.node_name}')
        wanted = (snapshot["metadata"].get("annotations") or {}).get(SPEC_HASH)
        if wanted and wanted != snapshot_spec_hash(pod):
            return RestorePlan(name, None, "SpecMismatch",
                               f'the pod spec differs from that of the pod PodSnapshot "{name}" was taken of')
        sid = sandbox_id(snapshot["metadata"]["uid"])
        if self.runtime.snapshot_info(sid) is None:
            return RestorePlan(name, None, "SnapshotDataMissing", f'the data of PodSnapshot "{name}" is not on node '
                               f"{self.node_name}")
        return RestorePlan(name, sid)

    async def _newest_of(self, pod: Obj) -> Obj | None:
        """The newest Ready PodSnapshot of this Pod's sandbox made through the API directly (GKE's resume)."""
        hash_ = (pod["metadata"].get("labels") or {}).get(NAME_HASH)
        if not hash_:
            return None
        selector = m.LabelSelector.parse(f"{NAME_HASH}={hash_}")
        mine = identity(pod)
        found = [s for s in await self.client.list(self.snapshot_kind, pod["metadata"].get("namespace", ""),
                                                   selector=selector)
                 if _ready(s) and (s["metadata"].get("annotations") or {}).get(IDENTITY) == mine
                 and not any(r.get("kind") == SANDBOX_SNAPSHOT for r in s["metadata"].get("ownerReferences") or [])]
        if not found:
            return None
        return max(found, key=lambda s: (s["metadata"].get("creationTimestamp") or "",
                                         int(s["metadata"].get("resourceVersion") or 0)))
