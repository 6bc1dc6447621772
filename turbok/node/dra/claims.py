"""kube-controller-manager's resourceclaim controller, for the embedded engine (a cluster has its own).

Fed every Pod and ResourceClaim change by the node (``observe_pod``,
``observe_claim``) and run as one task:

- a Pod (not finished, not being deleted) naming a ResourceClaimTemplate
  gets a ResourceClaim made from it: ``generateName: <pod>-<claim>-``, the
  annotation ``resource.kubernetes.io/pod-claim-name``, a controller
  ownerReference to the Pod (it goes with the Pod); the Pod's
  ``status.resourceClaimStatuses`` names it (the scheduler waits for that).
  A template that does not exist is a ``FailedResourceClaimCreation`` Event
  and a retry when templates change;
- a claim's ``reservedFor`` loses Pods that are finished or gone; a claim
  reserved for nobody is deallocated (``status.allocation`` removed), so its
  devices go back to the pool;
- a claim made for a Pod that is gone is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from turbok.api import dra as api_dra
from turbok.api.status import ApiError, Conflict, NotFound
from turbok.node.client import NodeClient, Obj
from turbok.node.events import EventRecorder

__all__ = ["POD_CLAIM_NAME", "ClaimController"]

log = logging.getLogger(__name__)

POD_CLAIM_NAME = "resource.kubernetes.io/pod-claim-name"


def _finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class ClaimController:
    def __init__(self, client: NodeClient, events: EventRecorder) -> None:
        self.client = client
        self.events = events
        self.pod_kind = client.kinds.by_kind("v1", "Pod")
        self.claim_kind = client.kinds.by_kind("resource.k8s.io/v1", "ResourceClaim")
        self.template_kind = client.kinds.by_kind("resource.k8s.io/v1", "ResourceClaimTemplate")
        #: Pods by uid as last seen (None: deleted)
        self._pods: dict[str, Obj] = {}
        self._dirty: set[str] = set()  # pod uids to look at
        self._claims_dirty = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dra-claim-controller")
        self._claims_dirty = True
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def observe_pod(self, pod: Obj, deleted: bool = False) -> None:
        uid = pod["metadata"]["uid"]
        spec = pod.get("spec") or {}
        if deleted:
            if self._pods.pop(uid, None) is not None or spec.get("resourceClaims"):
                self._claims_dirty = True
                self._wake.set()
            return
        if not spec.get("resourceClaims"):
            return
        self._pods[uid] = pod
        self._dirty.add(uid)
        if _finished(pod) or pod["metadata"].get("deletionTimestamp"):
            self._claims_dirty = True
        self._wake.set()

    def observe_claims(self) -> None:
        """A claim or template changed (a template that was missing may be there now)."""
        self._dirty.update(self._pods)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for uid in list(self._dirty):
                self._dirty.discard(uid)
                pod = self._pods.get(uid)
                if pod is None:
                    continue
                try:
                    await self._make_claims(pod)
                except ApiError as e:
                    log.warning("claims of pod %s/%s: %s", pod["metadata"].get("namespace"),
                                pod["metadata"]["name"], e)
            if self._claims_dirty:
                self._claims_dirty = False
                try:
                    await self.sweep()
                except ApiError as e:
                    log.warning("resource claims: %s", e)
                    self._claims_dirty = True

    async def _make_claims(self, pod: Obj) -> None:
        md, spec = pod["metadata"], pod.get("spec") or {}
        if _finished(pod) or md.get("deletionTimestamp"):
            return
        ns = md.get("namespace", "")
        statuses = {s.get("name"): s for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
        added: list[Obj] = []
        for c in spec.get("resourceClaims") or []:
            template_name = c.get("resourceClaimTemplateName")
            if not template_name or c.get("name") in statuses:
                continue
            existing = await self._owned_claim(pod, str(c["name"]))
            if existing is None:
                template = await self.client.try_get(self.template_kind, ns, template_name)
                if template is None:
                    self.events.record(pod, "FailedResourceClaimCreation", f"PodResourceClaim {c['name']}: "
                                       f'resourceclaimtemplate "{template_name}" not found', warning=True)
                    continue
                tmeta = (template.get("spec") or {}).get("metadata") or {}
                claim = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {
                    "generateName": f"{md['name']}-{c['name']}-"[:58], "namespace": ns,
                    "labels": dict(tmeta.get("labels") or {}),
                    "annotations": {**(tmeta.get("annotations") or {}), POD_CLAIM_NAME: str(c["name"])},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": md["name"], "uid": md["uid"],
                                         "controller": True, "blockOwnerDeletion": True}]},
                    "spec": api_dra.copy_claim_spec(template)}
                existing = await self.client.create(self.claim_kind, claim)
            added.append({"name": c["name"], "resourceClaimName": existing["metadata"]["name"]})
        if added:
            for _ in range(3):
                current = await self.client.try_get(self.pod_kind, ns, md["name"])
                if current is None or current["metadata"]["uid"] != md["uid"]:
                    return
                status = current.setdefault("status", {})
                have = {s.get("name") for s in status.get("resourceClaimStatuses") or []}
                status["resourceClaimStatuses"] = [*(status.get("resourceClaimStatuses") or []),
                                                   *(a for a in added if a["name"] not in have)]
                try:
                    await self.client.update_status(self.pod_kind, current)
                    return
                except Conflict:
                    continue

    async def _owned_claim(self, pod: Obj, pod_claim: str) -> Obj | None:
        md = pod["metadata"]
        for claim in await self.client.list(self.claim_kind, md.get("namespace", "")):
            cmd = claim["metadata"]
            if (cmd.get("annotations") or {}).get(POD_CLAIM_NAME) == pod_claim and any(
                    o.get("uid") == md["uid"] and o.get("controller") for o in cmd.get("ownerReferences") or []):
                return claim
        return None

    async def sweep(self) -> None:
        """Reservations of finished or gone Pods dropped, unreserved claims deallocated, orphans deleted."""
        pods = {p["metadata"]["uid"]: p for p in await self.client.list(self.pod_kind)}
        for claim in await self.client.list(self.claim_kind):
            cmd = claim["metadata"]
            status = claim.get("status") or {}
            owner = next((o for o in cmd.get("ownerReferences") or [] if o.get("controller")
                          and o.get("kind") == "Pod"), None)
            if owner is not None and owner.get("uid") not in pods and not cmd.get("deletionTimestamp"):
                with contextlib.suppress(NotFound, Conflict):
                    await self.client.delete(self.claim_kind, cmd.get("namespace", ""), cmd["name"], uid=cmd["uid"])
                continue
            reserved = status.get("reservedFor") or []
            keep = [r for r in reserved if r.get("resource") != "pods" or (
                r.get("uid") in pods and not _finished(pods[r["uid"]]))]
            if keep == reserved and (keep or not status.get("allocation")):
                continue
            status["reservedFor"] = keep
            if not keep:
                status.pop("reservedFor", None)
                status.pop("allocation", None)
                status.pop("devices", None)
            claim["status"] = status
            try:
                await self.client.update_status(self.claim_kind, claim)
            except (Conflict, NotFound):
                self._claims_dirty = True
