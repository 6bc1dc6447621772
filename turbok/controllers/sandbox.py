"""Sandbox: keep its Pod, PVCs and headless Service as the object asks, and report the Pod's state.

Upstream semantics (kubernetes-sigs/agent-sandbox ``sandbox_controller.go``);
the objects are built by ``sandboxpod`` and ``sandboxservice``, the status by
``sandboxstatus``. One pass:

1. ``shutdownTime`` passed: Ready=False/``SandboxExpired`` is written first;
   the next pass deletes the Pod and the Service it owns, then the Sandbox
   itself under ``shutdownPolicy: Delete``; under ``Retain`` the object stays
   with only its conditions (turbok keeps the Pod's disk: see below).
2. PVCs from ``volumeClaimTemplates`` (created, or adopted when unowned and
   labelled ``agents.x-k8s.io/adoptable: "true"`` or with the name hash).
3. The Pod: the one named by the annotation ``agents.x-k8s.io/pod-name``, else
   the Sandbox's name; the Pod the Sandbox controls wins over a stale
   annotation; two controlled Pods are ``MultiplePods`` (no choice, no create).
   ``operatingMode: Suspended`` deletes it; a Pod that exists has its labels
   and annotations brought in line (after a warm pool's Sandbox is adopted by a
   claim: the pool's labels go, the Pod itself stays running, so a warm claim
   costs no boot); none is created. The annotation records the Pod's name.
4. The headless Service when ``spec.service`` is true (deleted when false).
5. Status: ``podIPs`` and ``nodeName`` from the Pod the Sandbox owns,
   ``selector``, ``service``/``serviceFQDN``, conditions; written only when it
   changed, as a merge patch of the status subresource (a change of
   ``nodeName`` alone waits for the next change, unless the Sandbox is Ready).

turbok's additions (docs/architecture.md, "Controllers and the node"): the Pod
carries ``turbok.dev/sandbox-identity`` (the Sandbox's uid: the node keys the
Pod's runtime state by it); before deleting a Pod to suspend the Sandbox, the
controller annotates it ``turbok.dev/on-delete: hibernate`` (memory, processes
and disk kept; the node falls back to ``stop`` where it cannot), or ``stop``
(disk only) when the Sandbox has ``turbok.dev/suspend: disk``; an expired
Sandbox kept by ``Retain`` has its Pod deleted with ``stop``. A Pod deleted
without the annotation (the Sandbox deleted, the Pod deleted by hand) takes
its runtime state with it. Pods of a deleted Sandbox go by garbage collection
(ownerReferences), never by this controller.

Crashes and restarts are the node's: it restarts containers per
``restartPolicy`` with the kubelet's CrashLoopBackOff and keeps the Pod
not-Ready meanwhile, so a crash-looping sandbox stays Ready=False
(``DependenciesNotReady``) instead of flapping; ``kubectl get pod`` shows the
restart count and the last termination.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
from collections.abc import Iterable

from turbok.api import meta as m
from turbok.api.kinds import PERSISTENT_VOLUME_CLAIM, POD, SERVICE, Kind
from turbok.api.status import AlreadyExists, ApiError, NotFound
from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Key, Reconciler, Result, RetryError, requeue
from turbok.controllers.client import Client, Obj
from turbok.controllers.events import EventRecorder
from turbok.controllers.sandboxpod import desired_pod, desired_pvc, pvc_name, update_pod_metadata
from turbok.controllers.sandboxservice import desired_service, ports_equal, service_ports
from turbok.controllers.sandboxsnapshot import (
    PS_NAME,
    RESTORE,
    RESTORE_FROM,
    SNAPSHOT_ANNOTATION,
    SnapshotNotUsable,
    resolve_snapshot,
)
from turbok.controllers.sandboxstatus import MultiplePods, conditions, owned_by, pod_ips
from turbok.errors import TurbokError

__all__ = ["SandboxReconciler"]

log = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"
#: Requeue delay after marking a Sandbox expired, before tearing it down (upstream: 1 ms).
_IMMEDIATELY = 0.001


class ChildError(TurbokError):
    """A Pod, Service or PVC the Sandbox needs is in the way (owned by another controller, not adoptable)."""


def _key(obj: Obj) -> Key:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _describe_owner(ref: Obj) -> str:
    return f'{ref.get("kind")}/{ref.get("name")} (UID: {ref.get("uid")})'


def _adoptable(obj: Obj, name_hash: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return labels.get(lb.ADOPTABLE) == "true" or labels.get(lb.SANDBOX_NAME_HASH) == name_hash


def _metadata_patch(before: Obj, after: Obj) -> Obj:
    """A merge patch taking ``before``'s labels, annotations and ownerReferences to ``after``'s."""
    patch: Obj = {}
    for field in ("labels", "annotations"):
        old, new = before.get(field) or {}, after.get(field) or {}
        diff: Obj = {k: v for k, v in new.items() if old.get(k) != v}
        diff.update({k: None for k in old if k not in new})
        if diff:
            patch[field] = diff
    if (before.get("ownerReferences") or []) != (after.get("ownerReferences") or []):
        patch["ownerReferences"] = after.get("ownerReferences") or []
    return {"metadata": patch}


def _status_patch(before: Obj, after: Obj) -> Obj:
    patch: Obj = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch


def _remaining(sandbox: Obj) -> float | None:
    """Seconds until ``shutdownTime`` (<= 0: expired), None without one."""
    shutdown = (sandbox.get("spec") or {}).get("shutdownTime")
    if not shutdown:
        return None
    return (m.parse_time(shutdown) - dt.datetime.now(dt.UTC)).total_seconds()


def _set(status: Obj, cond: tuple[str, str, str, str], gen: int | None) -> None:
    type_, value, reason, message = cond
    m.set_condition(status, type_, value, reason, message, observed_generation=gen)


def _drop_condition(status: Obj, type_: str) -> None:
    kept = [c for c in status.get("conditions") or [] if c.get("type") != type_]
    if kept:
        status["conditions"] = kept
    else:
        status.pop("conditions", None)


class _Pass:
    """One reconcile's view of its Sandbox: the object as last written by this pass."""

    def __init__(self, sandbox: Obj) -> None:
        self.sandbox = sandbox
        md = sandbox["metadata"]
        self.namespace: str = md["namespace"]
        self.name: str = md["name"]
        self.uid: str = md["uid"]
        self.name_hash = lb.name_hash(self.name)

    @property
    def annotations(self) -> dict[str, str]:
        return self.sandbox["metadata"].get("annotations") or {}


class SandboxReconciler(Reconciler):
    concurrency = 16

    def __init__(self, client: Client, events: EventRecorder | None = None,
                 cluster_domain: str = CLUSTER_DOMAIN) -> None:
        super().__init__(client)
        self.events = events or EventRecorder(client)
        self.kind: Kind = client.kinds.by_kind(lb.SANDBOX_API, "Sandbox")
        self.cluster_domain = cluster_domain
        # The Pods each Sandbox controls (its uid -> Pod names), kept from the watched changes as
        # upstream's field index over its Pod cache: finding them costs no listing.
        self._owned: dict[str, set[str]] = {}
        self._owner_of: dict[Key, str] = {}
        # Sandboxes waiting for the SandboxSnapshot their pod template names: (namespace, snapshot) -> their keys.
        self._snapshot_waiting: dict[Key, set[Key]] = {}

    # ------------------------------------------------------------ watching Pods and Services

    async def start(self) -> None:
        for pod in await self.client.list(POD):
            self._observe_pod(pod, deleted=False)

    def _observe_pod(self, pod: Obj, *, deleted: bool) -> Key | None:
        """Index the Pod's controlling Sandbox; the Sandbox's key when it is one."""
        key = _key(pod)
        old = self._owner_of.pop(key, None)
        if old is not None:
            names = self._owned.get(old)
            if names is not None:
                names.discard(key[1])
                if not names:
                    del self._owned[old]
        ref = lb.controller_of(pod)
        if ref is None or ref.get("kind") != "Sandbox" or not str(ref.get("apiVersion", "")).startswith("agents.x-k8s.io/"):
            return None
        if not deleted and ref.get("uid"):
            self._owner_of[key] = ref["uid"]
            self._owned.setdefault(ref["uid"], set()).add(key[1])
        return (key[0], ref["name"])

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        if kind is POD:
            owner = self._observe_pod(obj, deleted=deleted)
            if owner is not None:
                yield owner
        elif kind is SERVICE:
            ref = lb.controller_of(obj)
            if ref is not None and ref.get("kind") == "Sandbox":
                yield (obj["metadata"].get("namespace", ""), ref["name"])
        elif kind.kind == "SandboxSnapshot":
            yield from self._snapshot_waiting.get((obj["metadata"].get("namespace", ""), obj["metadata"]["name"]), ())

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, namespace: str, name: str) -> Result:
        sandbox = await self.client.try_get(self.kind, namespace, name)
        if sandbox is None or sandbox["metadata"].get("deletionTimestamp"):
            return DONE  # its Pod, Service and PVCs go by garbage collection
        ctx = _Pass(sandbox)
        before = sandbox.get("status") or {}
        status = copy.deepcopy(before)
        gen = sandbox["metadata"].get("generation")
        remaining = _remaining(sandbox)
        if remaining is not None and remaining <= 0:
            return await self._expired(ctx, before, status, gen)

        errors, multiple, pod, pod_error = await self._children(ctx, status)
        service = None
        if multiple is None:
            try:
                service = await self._reconcile_service(ctx, status)
            except (ChildError, ApiError) as e:
                errors.append(e)
        else:
            await self._warn_multiple(ctx, before, multiple)
        report = [*errors, *([multiple] if multiple is not None else [])]
        wanted, remove = conditions(ctx.sandbox, pod=pod, pod_error=pod_error, errors=report, service=service)
        for cond in wanted:
            _set(status, cond, gen)
        for type_ in remove:
            _drop_condition(status, type_)
        result: Result = DONE
        remaining = _remaining(ctx.sandbox)
        if remaining is not None:
            if remaining <= 0:
                self._mark_expired(status, gen)
                result = requeue(_IMMEDIATELY)
            else:
                result = requeue(max(remaining, 0.05))
        await self._write_status(ctx, before, status)
        if errors:
            raise RetryError("; ".join(str(e) for e in errors))
        return result

    async def _children(self, ctx: _Pass, status: Obj) -> tuple[list[BaseException], MultiplePods | None,
                                                                 Obj | None, bool]:
        errors: list[BaseException] = []
        try:
            await self._reconcile_pvcs(ctx)
        except (ChildError, ApiError) as e:
            errors.append(e)
        multiple: MultiplePods | None = None
        pod: Obj | None = None
        pod_error = False
        try:
            pod = await self._reconcile_pod(ctx)
        except MultiplePods as e:
            multiple, pod_error = e, True
        except (ChildError, ApiError) as e:
            errors.append(e)
            pod_error = True
        if pod is None:
            status.pop("podIPs", None)
            status.pop("nodeName", None)
        else:
            status["selector"] = f"{lb.SANDBOX_NAME_HASH}={ctx.name_hash}"
            ips = pod_ips(pod) if owned_by(pod, ctx.sandbox) else []
            node = ((pod.get("spec") or {}).get("nodeName") or "") if owned_by(pod, ctx.sandbox) else ""
            if ips:
                status["podIPs"] = ips
            else:
                status.pop("podIPs", None)
            if node:
                status["nodeName"] = node
            else:
                status.pop("nodeName", None)
        return errors, multiple, pod, pod_error

    async def _warn_multiple(self, ctx: _Pass, before: Obj, error: MultiplePods) -> None:
        ready = m.condition({"status": before}, "Ready") or {}
        if ready.get("reason") != "MultiplePods":
            await self.events.record(ctx.sandbox, "MultiplePods", str(error), warning=True)

    # ------------------------------------------------------------ expiry

    @staticmethod
    def _mark_expired(status: Obj, gen: int | None) -> None:
        m.set_condition(status, "Ready", False, "SandboxExpired", "Sandbox has expired", observed_generation=gen)
        _drop_condition(status, "PodScheduled")  # Finished, by contrast, is kept across expiry

    async def _expired(self, ctx: _Pass, before: Obj, status: Obj, gen: int | None) -> Result:
        ready = m.condition({"status": status}, "Ready") or {}
        if ready.get("reason") != "SandboxExpired":
            self._mark_expired(status, gen)
            await self._write_status(ctx, before, status)
            return requeue(_IMMEDIATELY)
        errors: list[BaseException] = []
        policy = (ctx.sandbox.get("spec") or {}).get("shutdownPolicy") or "Retain"
        pod_name = ctx.annotations.get(lb.POD_NAME) or ctx.name
        try:
            pod = await self.client.try_get(POD, ctx.namespace, pod_name)
            if pod is not None and owned_by(pod, ctx.sandbox):
                # Retain keeps the object and, on turbok, the Pod's disk; Delete removes everything.
                await self._delete_pod(pod, lb.STOP if policy == "Retain" else None)
            service = await self.client.try_get(SERVICE, ctx.namespace, ctx.name)
            if service is not None and owned_by(service, ctx.sandbox):
                await self.client.delete(SERVICE, ctx.namespace, ctx.name, uid=service["metadata"]["uid"])
        except ApiError as e:
            errors.append(e)
        if policy == "Delete":
            log.info("sandbox %s/%s reached its shutdownTime: deleting it", ctx.namespace, ctx.name)
            await self.client.delete(self.kind, ctx.namespace, ctx.name, uid=ctx.uid)
            return DONE
        if not errors:
            status = {"conditions": status.get("conditions") or []}
            self._mark_expired(status, gen)
        await self._write_status(ctx, before, status)
        if errors:
            raise RetryError("; ".join(str(e) for e in errors))
        return DONE

    # ------------------------------------------------------------ PVCs

    async def _reconcile_pvcs(self, ctx: _Pass) -> None:
        for vct in (ctx.sandbox.get("spec") or {}).get("volumeClaimTemplates") or []:
            name = pvc_name(vct["metadata"]["name"], ctx.name)
            pvc = await self.client.try_get(PERSISTENT_VOLUME_CLAIM, ctx.namespace, name)
            if pvc is None:
                log.info("sandbox %s/%s: creating PVC %s", ctx.namespace, ctx.name, name)
                await self.client.create(PERSISTENT_VOLUME_CLAIM, desired_pvc(ctx.sandbox, vct))
                continue
            ref = lb.controller_of(pvc)
            if ref is not None and ref.get("uid") == ctx.uid:
                continue
            if ref is not None:
                raise ChildError(f'PVC "{name}" is owned by {_describe_owner(ref)}, not by sandbox "{ctx.name}"')
            if not _adoptable(pvc, ctx.name_hash):
                raise ChildError(f'cannot adopt unowned PVC "{name}": missing required pool authorization label '
                                 f'("{lb.ADOPTABLE}") or sandbox tracking label ("{lb.SANDBOX_NAME_HASH}")')
            refs = [*(pvc["metadata"].get("ownerReferences") or []), lb.owner_ref(ctx.sandbox)]
            await self.client.patch(PERSISTENT_VOLUME_CLAIM, ctx.namespace, name,
                                    {"metadata": {"ownerReferences": refs}})

    # ------------------------------------------------------------ the Pod

    async def _reconcile_pod(self, ctx: _Pass) -> Obj | None:
        pod_name = ctx.annotations.get(lb.POD_NAME) or ctx.name
        pod = await self.client.try_get(POD, ctx.namespace, pod_name)
        if pod is None and lb.POD_NAME in ctx.annotations:
            log.info("sandbox %s/%s: Pod %s of its annotation is gone", ctx.namespace, ctx.name, pod_name)
            await self._clear_pod_name(ctx)
        owned = set(self._owned.get(ctx.uid, ()))
        if pod is not None and owned_by(pod, ctx.sandbox):
            owned.add(pod["metadata"]["name"])
        if len(owned) > 1:
            raise MultiplePods(len(owned))
        if owned and (pod is None or pod["metadata"]["name"] not in owned):
            # The controller's ownership wins over a missing or stale annotation.
            if lb.POD_NAME in ctx.annotations:
                await self._clear_pod_name(ctx)
            pod = await self.client.try_get(POD, ctx.namespace, next(iter(owned)))
        if (ctx.sandbox.get("spec") or {}).get("operatingMode") == "Suspended":
            return await self._suspend(ctx, pod)
        if pod is not None:
            return await self._existing_pod(ctx, pod)
        log.info("sandbox %s/%s: creating its Pod", ctx.namespace, ctx.name)
        desired = desired_pod(ctx.sandbox)
        await self._from_snapshot(ctx, desired)
        try:
            pod = await self.client.create(POD, desired)
        except AlreadyExists:
            return await self._existing_pod(ctx, await self.client.get(POD, ctx.namespace, ctx.name))
        if RESTORE in ctx.annotations:  # asked once: this Pod carries it, the next ones resume their own state
            ctx.sandbox = await self.client.patch(self.kind, ctx.namespace, ctx.name,
                                                  {"metadata": {"annotations": {RESTORE: None}}})
        await self._ensure_pod_name(ctx, pod["metadata"]["name"])
        return pod

    async def _from_snapshot(self, ctx: _Pass, pod: Obj) -> None:
        """A pod template annotated ``turbok.dev/snapshot`` starts its Pod from that SandboxSnapshot: the Pod names
        its PodSnapshot for the node (``sandboxsnapshot``). Until the snapshot is Ready no Pod is made."""
        template = ((ctx.sandbox.get("spec") or {}).get("podTemplate") or {}).get("metadata") or {}
        for keys in self._snapshot_waiting.values():
            keys.discard((ctx.namespace, ctx.name))
        for wanted, annotation in ((ctx.annotations.get(RESTORE), RESTORE_FROM),
                                   ((template.get("annotations") or {}).get(SNAPSHOT_ANNOTATION), PS_NAME)):
            if not wanted:
                continue
            try:
                source = await resolve_snapshot(self.client, ctx.namespace, wanted)
            except SnapshotNotUsable as e:
                self._snapshot_waiting.setdefault((ctx.namespace, wanted), set()).add((ctx.namespace, ctx.name))
                raise ChildError(str(e)) from None
            pod["metadata"]["annotations"][annotation] = source

    async def _suspend(self, ctx: _Pass, pod: Obj | None) -> Obj | None:
        if pod is not None:
            ref = lb.controller_of(pod)
            if ref is not None and ref.get("uid") == ctx.uid:
                if not pod["metadata"].get("deletionTimestamp"):
                    log.info("sandbox %s/%s: deleting its Pod: operatingMode is Suspended", ctx.namespace, ctx.name)
                    keep = lb.STOP if ctx.annotations.get(lb.SUSPEND) == "disk" else lb.HIBERNATE
                    await self._delete_pod(pod, keep)
                return pod  # terminating: Suspended says so until the Pod is gone
            log.info("sandbox %s/%s: refusing to delete Pod %s: %s", ctx.namespace, ctx.name, pod["metadata"]["name"],
                     f"owned by {_describe_owner(ref)}" if ref else "it has no controller")
        await self._clear_pod_name(ctx)
        return pod

    async def _delete_pod(self, pod: Obj, keep: str | None) -> None:
        """Delete a Pod gracefully; with ``keep``, first tell the node what of its state to keep."""
        md = pod["metadata"]
        if keep is not None and (md.get("annotations") or {}).get(lb.ON_DELETE) != keep:
            await self.client.patch(POD, md["namespace"], md["name"],
                                    {"metadata": {"annotations": {lb.ON_DELETE: keep}}})
        await self.client.delete(POD, md["namespace"], md["name"], uid=md["uid"])

    async def _existing_pod(self, ctx: _Pass, pod: Obj) -> Obj:
        md = pod["metadata"]
        before = copy.deepcopy(md)
        ref = lb.controller_of(pod)
        adopting = False
        if ref is not None and ref.get("uid") != ctx.uid:
            await self._clear_pod_name(ctx)
            raise ChildError(f'pod "{md["name"]}" is owned by {_describe_owner(ref)}, not by sandbox "{ctx.name}"')
        if ref is None:
            if not _adoptable(pod, ctx.name_hash):
                raise ChildError(f'cannot adopt unowned pod "{md["name"]}": missing required pool authorization '
                                 f'label ("{lb.ADOPTABLE}") or sandbox tracking label ("{lb.SANDBOX_NAME_HASH}")')
            md["ownerReferences"] = [*(md.get("ownerReferences") or []), lb.owner_ref(ctx.sandbox)]
            adopting = True
        if update_pod_metadata(pod, ctx.sandbox) or adopting:
            pod = await self.client.patch(POD, md["namespace"], md["name"], _metadata_patch(before, md))
        await self._ensure_pod_name(ctx, pod["metadata"]["name"])
        return pod

    async def _ensure_pod_name(self, ctx: _Pass, pod_name: str) -> None:
        recorded = ctx.annotations.get(lb.POD_NAME, "")
        if recorded == pod_name:
            return
        if recorded:
            log.info("sandbox %s/%s tracks Pod %s, not %s", ctx.namespace, ctx.name, recorded, pod_name)
            return
        ctx.sandbox = await self.client.patch(self.kind, ctx.namespace, ctx.name,
                                              {"metadata": {"annotations": {lb.POD_NAME: pod_name}}})

    async def _clear_pod_name(self, ctx: _Pass) -> None:
        if lb.POD_NAME not in ctx.annotations:
            return
        ctx.sandbox = await self.client.patch(self.kind, ctx.namespace, ctx.name,
                                              {"metadata": {"annotations": {lb.POD_NAME: None}}})

    # ------------------------------------------------------------ the Service

    def _service_status(self, status: Obj, service: Obj | None) -> None:
        if service is None:
            status.pop("service", None)
            status.pop("serviceFQDN", None)
            return
        md = service["metadata"]
        status["service"] = md["name"]
        status["serviceFQDN"] = f"{md['name']}.{md['namespace']}.svc.{self.cluster_domain}"

    async def _reconcile_service(self, ctx: _Pass, status: Obj) -> Obj | None:
        wanted: bool | None = (ctx.sandbox.get("spec") or {}).get("service")
        service = await self.client.try_get(SERVICE, ctx.namespace, ctx.name)
        if service is None:
            if wanted:
                log.info("sandbox %s/%s: creating its headless Service", ctx.namespace, ctx.name)
                service = await self.client.create(SERVICE, desired_service(ctx.sandbox))
            self._service_status(status, service)
            return service
        ref = lb.controller_of(service)
        ours = ref is not None and ref.get("uid") == ctx.uid
        if wanted is False:
            if ours:
                await self.client.delete(SERVICE, ctx.namespace, ctx.name, uid=service["metadata"]["uid"])
            self._service_status(status, None)
            return None
        selector = {lb.SANDBOX_NAME_HASH: ctx.name_hash}
        ports = service_ports(ctx.sandbox)
        md, spec = service["metadata"], service.setdefault("spec", {})
        if ref is not None and not ours:
            raise ChildError(f'service "{ctx.name}" is owned by {_describe_owner(ref)}, not by sandbox "{ctx.name}"')
        if ref is None:
            if wanted is None:
                self._service_status(status, None)
                return None
            if not _adoptable(service, ctx.name_hash):
                raise ChildError(f'cannot adopt unowned service "{ctx.name}": missing required pool authorization '
                                 f'label ("{lb.ADOPTABLE}") or sandbox tracking label ("{lb.SANDBOX_NAME_HASH}")')
            if spec.get("clusterIP") not in (None, "", "None"):
                raise ChildError(f'cannot adopt service "{ctx.name}": ClusterIP is "{spec["clusterIP"]}" (expected '
                                 '"None", field is immutable)')
            md.setdefault("labels", {})[lb.SANDBOX_NAME_HASH] = ctx.name_hash
            spec["selector"] = selector
            if ports:
                spec["ports"] = ports
            else:
                spec.pop("ports", None)
            md["ownerReferences"] = [*(md.get("ownerReferences") or []), lb.owner_ref(ctx.sandbox)]
            service = await self.client.update(SERVICE, service)
        else:
            patch: Obj = {}
            if (md.get("labels") or {}).get(lb.SANDBOX_NAME_HASH) != ctx.name_hash:
                patch["metadata"] = {"labels": {lb.SANDBOX_NAME_HASH: ctx.name_hash}}
            spec_patch: Obj = {}
            if spec.get("selector") != selector:
                spec_patch["selector"] = {**{k: None for k in spec.get("selector") or {}}, **selector}
            if wanted and not ports_equal(spec.get("ports") or [], ports):
                spec_patch["ports"] = ports or None
            if spec_patch:
                patch["spec"] = spec_patch
            if patch:
                service = await self.client.patch(SERVICE, ctx.namespace, ctx.name, patch)
        self._service_status(status, service)
        return service

    # ------------------------------------------------------------ status

    async def _write_status(self, ctx: _Pass, before: Obj, status: Obj) -> None:
        if status == before:
            return
        # Binding alone changes only nodeName: it rides with the next change (normally Ready), as upstream.
        node_only = {k: v for k, v in status.items() if k != "nodeName"} == {
            k: v for k, v in before.items() if k != "nodeName"}
        if node_only and not m.is_true({"status": status}, "Ready"):
            return
        with contextlib.suppress(NotFound):  # deleted while we reconciled
            await self.client.patch(self.kind, ctx.namespace, ctx.name, {"status": _status_patch(before, status)},
                                    subresource="status")
