"""kube-scheduler's DRA plugin, for the embedded scheduler: a Pod's claims allocated before it binds.

``DraScheduling.schedule(pod)`` (``turbok.node.scheduler``, after the Pod fits
the node otherwise) returns None when every claim of the Pod is allocated and
reserved for it, else why not, in kube-scheduler's words, and the Pod stays
Pending (``PodScheduled=False``, ``Unschedulable``, a ``FailedScheduling``
Event) until a claim, slice or class changes:

1. each claim named by the Pod must exist (a template's is made by
   ``claims.ClaimController`` and named in the Pod's status first) and not be
   being deleted;
2. claims not allocated yet are allocated together (``allocator.Allocator``
   over the ResourceSlices, DeviceClasses and every allocated claim);
3. each claim is written once: its ``status.allocation`` (when new) and this
   Pod added to ``status.reservedFor`` (at most 256 consumers); a conflict
   makes the round start again.

With ``cache=True`` (the node's: it routes every ResourceSlice, DeviceClass and
ResourceClaim change to ``observe``) the allocator of one round is kept for the
next, holding this scheduler's own allocations; any other change (a slice, a
class, a claim deallocated, deleted or allocated by someone else, a write that
failed) drops it, and the next round lists the slices, classes and claims again.
Without it every round lists them (no informer cache). bench/dra.py measures both.
"""

from __future__ import annotations

import logging

from turbok.api import meta as m
from turbok.api.status import ApiError, Conflict, NotFound
from turbok.node.client import NodeClient, Obj, ObjectEvent
from turbok.node.dra.allocator import Allocator, Unallocatable
from turbok.node.dra.manager import pod_claim_names

__all__ = ["MAX_RESERVED_FOR", "DraScheduling"]

log = logging.getLogger(__name__)

MAX_RESERVED_FOR = 256


class DraScheduling:
    def __init__(self, client: NodeClient, node_name: str, *, cache: bool = False) -> None:
        self.client = client
        self.node_name = node_name
        self.claim_kind = client.kinds.by_kind("resource.k8s.io/v1", "ResourceClaim")
        self.slice_kind = client.kinds.by_kind("resource.k8s.io/v1", "ResourceSlice")
        self.class_kind = client.kinds.by_kind("resource.k8s.io/v1", "DeviceClass")
        #: the last allocation problem of each Pod (by uid), for tests and events
        self.last: dict[str, str] = {}
        self.cache = cache
        #: the kept allocator (None: list again), and the allocation of each claim it holds, by uid
        self._allocator: Allocator | None = None
        self._holds: dict[str, Obj] = {}

    def _drop(self) -> None:
        self._allocator = None
        self._holds = {}

    def observe(self, event: ObjectEvent) -> None:
        """A DRA object changed: the kept allocator stays only when it already holds the change."""
        if self._allocator is None:
            return
        if event.resource == self.claim_kind.key:
            obj = event.object()
            allocation = None if event.type == "DELETED" else (obj.get("status") or {}).get("allocation")
            if allocation == self._holds.get(obj["metadata"]["uid"]):
                return  # its own allocation coming back, or a claim neither allocated nor held
            self._drop()
        elif event.resource in (self.slice_kind.key, self.class_kind.key):
            self._drop()

    async def _allocator_now(self) -> Allocator:
        if self._allocator is not None:
            return self._allocator
        slices = await self.client.list(self.slice_kind)
        classes = {c["metadata"]["name"]: c for c in await self.client.list(self.class_kind)}
        allocated = [c for c in await self.client.list(self.claim_kind) if (c.get("status") or {}).get("allocation")]
        allocator = Allocator(slices, classes, claims=allocated)
        if self.cache:
            self._allocator = allocator
            self._holds = {c["metadata"]["uid"]: c["status"]["allocation"] for c in allocated}
        return allocator

    async def schedule(self, pod: Obj, node: Obj | None) -> str | None:
        """None when the Pod's claims are allocated and reserved for it; else why (a scheduler message)."""
        md = pod["metadata"]
        names = pod_claim_names(pod)
        if not names:
            return None
        ns = md.get("namespace", "")
        claims: list[Obj] = []
        for pod_claim, name in names.items():
            if name is None:
                return f'waiting for resource claim "{md["name"]}-{pod_claim}" to be created'
            claim = await self.client.try_get(self.claim_kind, ns, name)
            if claim is None:
                return f'resourceclaim "{name}" not found'
            if claim["metadata"].get("deletionTimestamp"):
                return f'resourceclaim "{name}" is being deleted'
            reserved = (claim.get("status") or {}).get("reservedFor") or []
            if len(reserved) >= MAX_RESERVED_FOR and not any(r.get("uid") == md["uid"] for r in reserved):
                return f'resourceclaim "{name}" is in use by {MAX_RESERVED_FOR} consumers'
            claims.append(claim)
        pending = [c for c in claims if not (c.get("status") or {}).get("allocation")]
        allocations: dict[str, Obj] = {}
        if pending:
            allocator = await self._allocator_now()
            labels = ((node or {}).get("metadata") or {}).get("labels") or {}
            for claim in pending:
                try:
                    allocation = allocator.allocate(claim, self.node_name, labels)
                except Unallocatable as e:
                    if allocations:  # the kept allocator holds this round's earlier picks, never written
                        self._drop()
                    self.last[md["uid"]] = str(e)
                    return f"1 {e}"  # one node (this one), as kube-scheduler counts them
                allocation["allocationTimestamp"] = m.now()
                allocator.reserve(allocation)
                allocations[claim["metadata"]["uid"]] = allocation
                if self._allocator is allocator:
                    self._holds[claim["metadata"]["uid"]] = allocation
        consumer = {"resource": "pods", "name": md["name"], "uid": md["uid"]}
        for claim in claims:
            status = claim.setdefault("status", {})
            new = allocations.get(claim["metadata"]["uid"])
            reserved = status.get("reservedFor") or []
            if new is None and any(r.get("uid") == md["uid"] for r in reserved):
                continue
            if new is not None:
                status["allocation"] = new
            status["reservedFor"] = [*reserved, consumer]
            try:
                await self.client.update_status(self.claim_kind, claim)
            except (Conflict, NotFound) as e:
                self._drop()  # it may hold allocations that were not written
                return f'resourceclaim "{claim["metadata"]["name"]}" changed, trying again ({type(e).__name__})'
            except ApiError as e:
                self._drop()
                log.warning("reserving claim %s/%s: %s", ns, claim["metadata"]["name"], e)
                return f'reserving resourceclaim "{claim["metadata"]["name"]}": {e}'
        self.last.pop(md["uid"], None)
        return None
