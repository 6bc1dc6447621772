"""SandboxSnapshot: a named snapshot (memory and filesystem) of a running Sandbox, and Sandboxes that start from one.

turbok's own kind (``agents.turbok.dev/v1alpha1``; docs/sandboxes.md,
"Snapshots and forks"), over the pod-level Pod Snapshot API
(``podsnapshot.gke.io/v1``) that a node serves: the controller never touches a
runtime. One pass:

1. Not yet asked: the Sandbox ``spec.sandboxRef.name`` must be Ready (else
   ``Ready=False``, ``SandboxNotFound`` / ``SandboxNotReady``, and the pass
   comes back when the Sandbox changes); the controller records its uid, its
   Pod and its ``spec.podTemplate`` (what a fork runs), then creates a
   ``PodSnapshotManualTrigger`` for the Pod, owned by the SandboxSnapshot.
2. The node answers on the trigger: ``Complete`` names the ``PodSnapshot``
   (owned by the SandboxSnapshot too, so deleting the SandboxSnapshot deletes
   the data, and the Sandbox can go without taking it along); its ``Ready``
   is mirrored (``SnapshotReady``, with sizes and node), a ``Failed`` trigger
   is ``Ready=False``/``Failed`` with the node's reason (delete and re-create
   the SandboxSnapshot to try again).

A snapshot is taken once: changing ``spec`` afterwards changes nothing.
Starting from one: a Sandbox whose pod template carries the annotation
``turbok.dev/snapshot: <name>`` (directly, or from its SandboxTemplate, so a
whole warm pool) gets a Pod annotated ``podsnapshot.gke.io/ps-name: <its
PodSnapshot>``; the node restores the Pod from it (``resolve_snapshot``, used by
the Sandbox controller).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.api.status import AlreadyExists, NotFound
from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Key, Reconciler, Result
from turbok.controllers.client import Client, Obj

__all__ = ["RESTORE", "RESTORE_FROM", "SNAPSHOT_ANNOTATION", "SnapshotNotUsable", "SandboxSnapshotReconciler", "resolve_snapshot",
           "trigger_name"]

API = "agents.turbok.dev/v1alpha1"
POD_SNAPSHOT_API = "podsnapshot.gke.io/v1"
#: On a Sandbox's pod template (or a SandboxTemplate's): start its Pod from this SandboxSnapshot.
SNAPSHOT_ANNOTATION = "turbok.dev/snapshot"
#: On a Pod: the PodSnapshot the node restores it from (the Pod Snapshot API's own annotation).
PS_NAME = "podsnapshot.gke.io/ps-name"
#: On a Sandbox: put it back to this SandboxSnapshot the next time its Pod is made (``turbok sandbox restore``);
#: consumed by that Pod, which carries ``RESTORE_FROM``: the node restores it whatever the sandbox kept.
RESTORE = "turbok.dev/restore-snapshot"
RESTORE_FROM = "turbok.dev/restore-from"


class SnapshotNotUsable(Exception):
    """A Sandbox names a SandboxSnapshot it cannot start from (yet): missing, not Ready, failed."""


def trigger_name(snapshot: Obj) -> str:
    """The PodSnapshotManualTrigger (and so PodSnapshot) of a SandboxSnapshot: its name and uid, fixed."""
    md = snapshot["metadata"]
    return f"{md['name'][:240]}-{md['uid'][:8]}"


def _kinds(client: Client) -> tuple[Kind, Kind, Kind]:
    return (client.kinds.by_kind(API, "SandboxSnapshot"),
            client.kinds.by_kind(POD_SNAPSHOT_API, "PodSnapshotManualTrigger"),
            client.kinds.by_kind(POD_SNAPSHOT_API, "PodSnapshot"))


async def resolve_snapshot(client: Client, namespace: str, name: str) -> str:
    """The PodSnapshot a Pod should start from for SandboxSnapshot ``namespace/name``, or ``SnapshotNotUsable``."""
    kind = client.kinds.by_kind(API, "SandboxSnapshot")
    snapshot = await client.try_get(kind, namespace, name)
    if snapshot is None:
        raise SnapshotNotUsable(f'SandboxSnapshot "{name}" not found')
    ready = m.condition(snapshot, "Ready") or {}
    target = (snapshot.get("status") or {}).get("podSnapshotName")
    if ready.get("status") != "True" or not target:
        why = ready.get("message") or "it is being taken"
        raise SnapshotNotUsable(f'SandboxSnapshot "{name}" is not ready: {why}')
    return str(target)


class SandboxSnapshotReconciler(Reconciler):
    concurrency = 4

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.kind, self.trigger_kind, self.pod_snapshot_kind = _kinds(client)
        self.sandbox_kind = client.kinds.by_kind(lb.SANDBOX_API, "Sandbox")
        #: SandboxSnapshots waiting for their Sandbox to exist or be Ready: (namespace, sandbox) -> their keys
        self._waiting: dict[Key, set[Key]] = {}

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        md = obj["metadata"]
        ns = md.get("namespace", "")
        if kind in (self.trigger_kind, self.pod_snapshot_kind):
            for ref in md.get("ownerReferences") or []:
                if ref.get("kind") == "SandboxSnapshot" and str(ref.get("apiVersion")) == API:
                    yield (ns, ref["name"])
        elif kind is self.sandbox_kind:
            yield from self._waiting.get((ns, md["name"]), ())

    def _wait_for(self, key: Key, sandbox: Key | None) -> None:
        for keys in self._waiting.values():
            keys.discard(key)
        if sandbox is not None:
            self._waiting.setdefault(sandbox, set()).add(key)

    async def reconcile(self, namespace: str, name: str) -> Result:
        snapshot = await self.client.try_get(self.kind, namespace, name)
        if snapshot is None or snapshot["metadata"].get("deletionTimestamp"):
            self._wait_for((namespace, name), None)
            return DONE  # its trigger and PodSnapshot go by garbage collection
        before = snapshot.get("status") or {}
        status = copy.deepcopy(before)
        gen = snapshot["metadata"].get("generation")
        trigger = await self.client.try_get(self.trigger_kind, namespace, trigger_name(snapshot))
        if trigger is None and not status.get("podSnapshotName"):
            await self._ask(snapshot, status, gen)
        else:
            self._wait_for((namespace, name), None)
            await self._follow(snapshot, trigger, status, gen)
        if status != before:
            fresh = copy.deepcopy(snapshot)
            fresh["status"] = status
            with contextlib.suppress(NotFound):  # deleted meanwhile
                await self.client.update_status(self.kind, fresh)
        return DONE

    async def _ask(self, snapshot: Obj, status: Obj, gen: int | None) -> None:
        md = snapshot["metadata"]
        ns = md["namespace"]
        sandbox_name = snapshot["spec"]["sandboxRef"]["name"]
        self._wait_for((ns, md["name"]), (ns, sandbox_name))
        sandbox = await self.client.try_get(self.sandbox_kind, ns, sandbox_name)
        if sandbox is None:
            m.set_condition(status, "Ready", False, "SandboxNotFound", f'Sandbox "{sandbox_name}" not found',
                            observed_generation=gen)
            return
        if not m.is_true(sandbox, "Ready"):
            ready = m.condition(sandbox, "Ready") or {}
            m.set_condition(status, "Ready", False, "SandboxNotReady",
                            f'Sandbox "{sandbox_name}" is not ready ({ready.get("reason") or "starting"}): a snapshot '
                            "is taken of a running sandbox", observed_generation=gen)
            return
        self._wait_for((ns, md["name"]), None)
        smd = sandbox["metadata"]
        pod = (smd.get("annotations") or {}).get(lb.POD_NAME) or smd["name"]
        body = {"apiVersion": POD_SNAPSHOT_API, "kind": "PodSnapshotManualTrigger",
                "metadata": {"name": trigger_name(snapshot), "namespace": ns,
                             "ownerReferences": [lb.owner_ref(snapshot)]},
                "spec": {"targetPod": pod}}
        with contextlib.suppress(AlreadyExists):  # made by a pass that did not get to write its status
            await self.client.create(self.trigger_kind, body)
        status.update(sandboxUID=smd["uid"], podName=pod,
                      podTemplate=copy.deepcopy((sandbox.get("spec") or {}).get("podTemplate") or {}))
        m.set_condition(status, "Ready", False, "Pending", f"taking a snapshot of pod {pod}", observed_generation=gen)

    async def _follow(self, snapshot: Obj, trigger: Obj | None, status: Obj, gen: int | None) -> None:
        ns = snapshot["metadata"]["namespace"]
        if not status.get("podSnapshotName") and trigger is not None:
            triggered = m.condition(trigger, "Triggered")
            if triggered is None:
                return  # the node has not answered yet
            if triggered.get("status") != "True":
                m.set_condition(status, "Ready", False, "Failed", triggered.get("message") or "the snapshot failed",
                                observed_generation=gen)
                return
            status["podSnapshotName"] = ((trigger.get("status") or {}).get("snapshotCreated") or {}).get("name")
        target = status.get("podSnapshotName")
        pod_snapshot = await self.client.try_get(self.pod_snapshot_kind, ns, target) if target else None
        if pod_snapshot is None:
            m.set_condition(status, "Ready", False, "SnapshotLost", f'PodSnapshot "{target}" is gone',
                            observed_generation=gen)
            return
        ready = m.condition(pod_snapshot, "Ready") or {}
        ps_status = pod_snapshot.get("status") or {}
        for field in ("nodeName", "memoryBytes", "diskBytes"):
            if field in ps_status:
                status[field] = ps_status[field]
        if ready.get("status") == "True":
            m.set_condition(status, "Ready", True, "SnapshotReady", ready.get("message") or "", observed_generation=gen)
        else:
            m.set_condition(status, "Ready", False, ready.get("reason") or "Pending", ready.get("message") or "",
                            observed_generation=gen)
