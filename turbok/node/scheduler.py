"""Binding Pods to this node: kube-scheduler's job, embedded only (a cluster has its own scheduler).

A Pod with no ``spec.nodeName`` whose ``schedulerName`` is unset or
``default-scheduler`` is bound here through ``pods/binding`` when it fits:

- its requests (``api.podtemplate.pod_resources``: containers summed, the
  largest init container where that is more, ``spec.overhead`` added;
  requests default to limits) fit the Node's ``status.allocatable`` less what
  the Pods bound here and not finished request (cpu, memory,
  ephemeral-storage, and one of ``pods``);
- the Node is not cordoned (``spec.unschedulable``), its labels match
  ``nodeSelector`` and required node affinity, its taints are tolerated;
- its PersistentVolumeClaims exist and are Bound (a Pending claim is
  annotated ``volume.kubernetes.io/selected-node`` so a WaitForFirstConsumer
  provisioner makes its volume, and the Pod waits).

- the host has room for one more idle sandbox now (``hostroom.HostRoom``:
  memory less a reserve, tasks under 90% of ``pid_max``, the home's disk
  above a floor), counting the Pods bound here and not yet Running.

Otherwise the Pod gets ``PodScheduled=False``, reason ``Unschedulable`` and
kube-scheduler's message (``0/1 nodes are available: 1 Insufficient cpu.``),
and a Warning ``FailedScheduling`` Event; it is tried again when Pods bound
here finish or go, when the Node or a claim changes, or when its spec does.
A Pod refused only for the host's room waits apart: a reading of the host
(every ``hostroom.RETRY_SECONDS`` while such Pods wait, not otherwise) queues
again as many as it holds, highest priority first, so neither a deletion nor
room for one retries hundreds of Pods the host cannot take yet.
A bound Pod gets a ``Scheduled`` Event (``Successfully assigned ns/p to node``).

Accounting is incremental (``observe`` is fed every Pod, Node and claim
change): nothing lists all Pods per decision. Higher ``spec.priority`` first,
then first come first served.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from decimal import Decimal
from typing import Any

from turbok.api.podtemplate import pod_resources
from turbok.api.quantity import QuantityError, parse_quantity
from turbok.api.status import ApiError, Conflict, NotFound
from turbok.node.client import NodeClient, Obj
from turbok.node.dra.scheduling import DraScheduling
from turbok.node.events import EventRecorder
from turbok.node.hostroom import RETRY_SECONDS, HostRoom
from turbok.node.status import set_condition

__all__ = ["DEFAULT_SCHEDULER", "Scheduler", "pod_requests"]

log = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "default-scheduler"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def pod_requests(pod: Obj) -> dict[str, Decimal]:
    """What ``pod`` takes from a node's allocatable: cpu (cores), memory and ephemeral-storage (bytes), pods."""
    spec = pod.get("spec") or {}
    req = {k: v for k, v in pod_resources(spec).requests.items() if k in _RESOURCES}
    for name, value in (spec.get("overhead") or {}).items():
        if name in _RESOURCES:
            with contextlib.suppress(QuantityError, TypeError):
                req[name] = req.get(name, Decimal(0)) + parse_quantity(value)
    req["pods"] = Decimal(1)
    return req


def _terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _ours(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    return not spec.get("nodeName") and spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER


class Scheduler:
    def __init__(self, client: NodeClient, node_name: str, events: EventRecorder,
                 room: HostRoom | None = None) -> None:
        self.client = client
        self.node_name = node_name
        self.events = events
        #: what the host has left (None: requests only, as kube-scheduler)
        self.room = room
        self.pod_kind = client.kinds.by_kind("v1", "Pod")
        self.pvc_kind = client.kinds.by_kind("v1", "PersistentVolumeClaim")
        self.node: Obj | None = None
        #: requests of Pods bound here and not finished, by uid
        self.bound: dict[str, dict[str, Decimal]] = {}
        self._used: dict[str, Decimal] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._queued: dict[str, Obj] = {}
        #: unschedulable Pods by uid, with the generation that was tried
        self._waiting: dict[str, tuple[Obj, Any]] = {}
        #: Pods refused only for the host's room, by uid (tried again by ``_host_retry``)
        self._host_waiting: dict[str, tuple[Obj, Any]] = {}
        #: Pods bound here and not yet Running: booting sandboxes the host's figures do not show yet
        self._starting: set[str] = set()
        self._host_task: asyncio.Task[None] | None = None
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: kube-scheduler's DRA plugin (``turbok.node.dra.scheduling``), when the node serves DRA
        self.dra: DraScheduling | None = None

    # ------------------------------------------------------------ what it hears

    def observe_node(self, node: Obj | None) -> None:
        self.node = node
        self.retry_waiting()

    def observe_claim(self) -> None:
        """A PersistentVolumeClaim changed: Pods waiting for one may fit now."""
        if self._waiting:
            self.retry_waiting()

    def observe(self, pod: Obj, deleted: bool = False) -> None:
        md = pod["metadata"]
        uid = md["uid"]
        spec = pod.get("spec") or {}
        if deleted or md.get("deletionTimestamp") or _terminal(pod) or (
                spec.get("nodeName") and spec["nodeName"] != self.node_name):
            self._forget(uid)
            self._starting.discard(uid)
            if deleted or _terminal(pod):
                self._release(uid)
            return
        if spec.get("nodeName"):  # bound here
            self._forget(uid)
            if uid not in self.bound:
                self._account(uid, pod_requests(pod))
            if (pod.get("status") or {}).get("phase") == "Running":
                self._starting.discard(uid)
            else:
                self._starting.add(uid)
            return
        if not _ours(pod):
            return
        for waiting_in in (self._waiting, self._host_waiting):
            waiting = waiting_in.get(uid)
            if waiting is None:
                continue
            if waiting[1] == md.get("generation"):
                waiting_in[uid] = (pod, waiting[1])  # only its status changed (ours, likely): keep waiting
                return
            del waiting_in[uid]
        self._enqueue(pod)

    def _forget(self, uid: str) -> None:
        self._queued.pop(uid, None)
        self._waiting.pop(uid, None)
        self._host_waiting.pop(uid, None)

    def retry_waiting(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for pod, _ in waiting.values():
            self._enqueue(pod)

    def _enqueue(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        fresh = uid not in self._queued
        self._queued[uid] = pod
        if fresh:
            priority = (pod.get("spec") or {}).get("priority") or 0
            heapq.heappush(self._heap, (-int(priority), next(self._seq), uid))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    def _account(self, uid: str, requests: dict[str, Decimal]) -> None:
        self._release(uid)
        self.bound[uid] = requests
        for k, v in requests.items():
            self._used[k] = self._used.get(k, Decimal(0)) + v

    def _release(self, uid: str) -> None:
        self._starting.discard(uid)
        requests = self.bound.pop(uid, None)
        if requests is None:
            return
        for k, v in requests.items():
            self._used[k] = self._used.get(k, Decimal(0)) - v
        if self._waiting:
            self.retry_waiting()

    # ------------------------------------------------------------ deciding

    async def stop(self) -> None:
        for task in (self._task, self._host_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _wait_for_room(self, pod: Obj) -> None:
        md = pod["metadata"]
        self._host_waiting[md["uid"]] = (pod, md.get("generation"))
        if self._host_task is None or self._host_task.done():
            self._host_task = asyncio.get_running_loop().create_task(self._host_retry(), name="scheduler-room")

    async def _host_retry(self) -> None:
        """While Pods wait for the host's room: read the host every ``RETRY_SECONDS``; queue again as many as
        it holds now, highest priority first (one that still does not fit comes back here). Trying only those
        keeps a pool of hundreds waiting from writing hundreds of Events each time one sandbox's room appears.
        No reading while none waits."""
        assert self.room is not None
        while self._host_waiting:
            await self.room.clock.sleep(RETRY_SECONDS)
            room = self.room.fits(len(self._starting), fresh=True) if self._host_waiting else 0
            if room <= 0:
                continue
            ordered = sorted(self._host_waiting, key=lambda uid: -int(
                (self._host_waiting[uid][0].get("spec") or {}).get("priority") or 0))  # stable: then first come
            for uid in ordered[:room]:
                pod, _ = self._host_waiting.pop(uid)
                self._enqueue(pod)

    async def _run(self) -> None:
        while True:
            if self.room is not None and self._heap:
                self.room.expire()  # one reading of the host per pass, shared by the Pods queued together
            while self._heap:
                _, _, uid = heapq.heappop(self._heap)
                pod = self._queued.pop(uid, None)
                if pod is None:
                    continue
                try:
                    await self._schedule(pod)
                except Exception:
                    log.exception("scheduling pod %s/%s", pod["metadata"].get("namespace"), pod["metadata"]["name"])
            self._wake.clear()
            await self._wake.wait()

    def allocatable(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for k, v in ((self.node or {}).get("status") or {}).get("allocatable", {}).items():
            try:
                out[k] = parse_quantity(v)
            except (QuantityError, TypeError):
                continue
        return out

    def unfit(self, pod: Obj) -> list[str]:
        """Why ``pod`` does not fit this node, in kube-scheduler's words (empty: it fits)."""
        if self.node is None:
            return ["no nodes available to schedule pods"]
        reasons: list[str] = []
        node_spec = self.node.get("spec") or {}
        spec = pod.get("spec") or {}
        if node_spec.get("unschedulable") and not _tolerates(spec, {"key": "node.kubernetes.io/unschedulable",
                                                                    "effect": "NoSchedule"}):
            reasons.append("node(s) were unschedulable")
        labels = self.node["metadata"].get("labels") or {}
        if not _selects(spec, labels):
            reasons.append("node(s) didn't match Pod's node affinity/selector")
        for taint in node_spec.get("taints") or []:
            if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(spec, taint):
                reasons.append(f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}")
                break
        allocatable = self.allocatable()
        for name, want in sorted(pod_requests(pod).items()):
            if want <= 0:
                continue
            have = allocatable.get(name, Decimal(0)) - self._used.get(name, Decimal(0))
            if want > have:
                reasons.append("Too many pods" if name == "pods" else f"Insufficient {name}")
        return reasons

    def admission(self, pod: Obj) -> tuple[str, str] | None:
        """The kubelet's admission of a Pod bound here without the scheduler (``spec.nodeName`` set when it
        was made): ``(reason, message)`` when it is rejected, in the kubelet's words, else None. Its requests
        against the Node's allocatable less what the other Pods bound here request; then its node selector."""
        uid = pod["metadata"]["uid"]
        mine = self.bound.get(uid, {})
        allocatable = self.allocatable()
        for name, want in sorted(pod_requests(pod).items()):
            if want <= 0 or name not in allocatable:
                continue
            used = self._used.get(name, Decimal(0)) - mine.get(name, Decimal(0))
            if used + want > allocatable[name]:
                scale = 1000 if name == "cpu" else 1  # the kubelet says cpu in millicores
                return (f"OutOf{name}", f"Node didn't have enough resource: {name}, requested: {int(want * scale)}, "
                                        f"used: {int(used * scale)}, capacity: {int(allocatable[name] * scale)}")
        if self.node is not None and not _selects(pod.get("spec") or {}, self.node["metadata"].get("labels") or {}):
            return "NodeAffinity", "Predicate NodeAffinity failed"
        return None

    async def _claims(self, pod: Obj) -> str | None:
        """Why the Pod's claims keep it from being scheduled, or None when they are all Bound."""
        md = pod["metadata"]
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            pvc = await self.client.try_get(self.pvc_kind, md.get("namespace", ""), claim)
            if pvc is None:
                return f'persistentvolumeclaim "{claim}" not found'
            if pvc["metadata"].get("deletionTimestamp"):
                return f'persistentvolumeclaim "{claim}" is being deleted'
            if (pvc.get("status") or {}).get("phase") != "Bound":
                annotations = pvc["metadata"].get("annotations") or {}
                if annotations.get(SELECTED_NODE) != self.node_name:
                    try:
                        await self.client.patch(self.pvc_kind, md.get("namespace", ""), claim,
                                                {"metadata": {"annotations": {SELECTED_NODE: self.node_name}}})
                    except ApiError as e:
                        log.debug("annotating claim %s: %s", claim, e)
                return "pod has unbound immediate PersistentVolumeClaims"
        return None

    async def _schedule(self, pod: Obj) -> None:
        md = pod["metadata"]
        ns, name, uid = md.get("namespace", ""), md["name"], md["uid"]
        reasons = self.unfit(pod)
        host = self.room.short(len(self._starting)) if self.room is not None else []
        claims = None if reasons or host else await self._claims(pod)
        if not reasons and not host and not claims and self.dra is not None:
            claims = await self.dra.schedule(pod, self.node)  # its ResourceClaims allocated and reserved
        if reasons or host or claims:
            message = f"0/1 nodes are available: {claims}." if claims else \
                "0/1 nodes are available: " + ", ".join(f"1 {r}" for r in sorted({*reasons, *host})) + "."
            if reasons or claims:
                self._waiting[uid] = (pod, md.get("generation"))
            else:
                self._wait_for_room(pod)
            await self._unschedulable(pod, message)
            return
        self._account(uid, pod_requests(pod))  # assume it: the next Pod sees the space taken
        self._starting.add(uid)
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            await self.client.create_subresource(self.pod_kind, ns, name, "binding", body)
        except (Conflict, NotFound) as e:
            self._release(uid)  # bound by someone else, being deleted, or gone: its own event says which
            log.debug("binding pod %s/%s: %s", ns, name, e)
            return
        except ApiError as e:
            self._release(uid)
            log.warning("binding pod %s/%s: %s", ns, name, e)
            self._waiting[uid] = (pod, md.get("generation"))
            return
        self.events.record(pod, "Scheduled", f"Successfully assigned {ns}/{name} to {self.node_name}")

    async def _unschedulable(self, pod: Obj, message: str) -> None:
        md = pod["metadata"]
        self.events.record(pod, "FailedScheduling", message, warning=True)
        for _ in range(3):
            current = await self.client.try_get(self.pod_kind, md.get("namespace", ""), md["name"])
            if current is None or current["metadata"].get("uid") != md["uid"] or \
                    (current.get("spec") or {}).get("nodeName"):
                return
            status = current.setdefault("status", {})
            previous = status.get("conditions") or []
            scheduled: list[Obj] = []
            set_condition(scheduled, previous, "PodScheduled", False, "Unschedulable", message)
            old = next((c for c in previous if c.get("type") == "PodScheduled"), None)
            if old is not None and {k: old.get(k) for k in ("status", "reason", "message")} == \
                    {k: scheduled[0].get(k) for k in ("status", "reason", "message")}:
                return
            status["conditions"] = [c for c in previous if c.get("type") != "PodScheduled"] + scheduled
            try:
                await self.client.update_status(self.pod_kind, current)
                return
            except Conflict:
                continue
            except NotFound:
                return


def _selects(spec: Obj, labels: dict[str, str]) -> bool:
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    return any(_term(t, labels) for t in terms)


def _term(term: Obj, labels: dict[str, str]) -> bool:
    exprs = term.get("matchExpressions") or []
    if not exprs and not term.get("matchFields"):
        return False  # an empty term selects nothing
    for e in exprs:
        key, op, values = e.get("key", ""), e.get("operator", ""), e.get("values") or []
        have = labels.get(key)
        if op == "In" and have not in values:
            return False
        if op == "NotIn" and have in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op in ("Gt", "Lt"):
            try:
                ok = int(have or "") > int(values[0]) if op == "Gt" else int(have or "") < int(values[0])
            except (ValueError, IndexError):
                return False
            if not ok:
                return False
    return all(f.get("key") != "metadata.name" or (
        (f.get("operator") == "In") == (labels.get("kubernetes.io/hostname") in (f.get("values") or [])))
        for f in term.get("matchFields") or [])


def _tolerates(spec: Obj, taint: Obj) -> bool:
    for t in spec.get("tolerations") or []:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False
