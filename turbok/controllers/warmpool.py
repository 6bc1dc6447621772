"""SandboxWarmPool: keep ``replicas`` sandboxes of a template started and unclaimed.

Upstream semantics (``sandboxwarmpool_controller.go``): pool sandboxes are
named ``<pool>-xxxxx`` (generateName), labelled ``warm-pool-sandbox=NameHash(pool)``
plus the template hashes, owned by the pool as controller. A claim adopting
one moves its ownership to the claim, so it leaves the pool, which refills at
once. Excess sandboxes go unready-first, newest-first. ``updateStrategy:
Recreate`` replaces sandboxes built from an older template; ``OnReplenish``
(default) keeps them until claimed. Status: ``replicas`` (active),
``readyReplicas``, ``selector`` (for the scale subresource), ``observedGeneration``.

turbok's addition (docs/dra.md): a template whose Pods name ResourceClaims
(accelerators) would have its warm sandboxes hold devices nobody uses, so its
pools keep none (claims start cold and take devices then; a
``WarmPoolHoldsNoDevices`` Event on the pool says so) unless the template is
annotated ``turbok.dev/warm-pool-devices: hold``.

The pool keeps an index of its sandboxes from the changes it watches (upstream
uses an informer cache the same way), so a pass costs no listing or parsing;
changes arrive synchronously with each commit, so the index always includes
this controller's own creates: upstream's expectations machinery is not needed.

turbok's other addition (``max_starting``, the embedded engine's): a pool keeps at
most that many sandboxes starting at once and makes the next ones as those become
Ready. One machine boots a few sandboxes at a time (the node's start slots): a
pool emptied by a burst of claims would otherwise make hundreds of Sandboxes and
Pods at once, whose writes, watches and status updates take the control plane
from the claims still arriving, only to wait for a slot. A claim that finds the
pool empty starts a sandbox of its own, which boots before the refills. A
cluster's kubelets boot in parallel on many nodes: the operator keeps no bound.

And (``burst_quiet``, the embedded engine's too): a pool that claims are adopting
from refills once no claim has taken one for that long, or ``burst_max_wait``
after the first adoption at the latest, and only while its Ready stock outlasts
that wait at the rate the claims have come so far. On one machine a refill's
boots share the control plane's process and cores with the claims still arriving
(100 claims at 300/s: Ready p50 1.04 s with the refill under way, 0.80 s with it
paused; one run each of bench/kube_burst.py, bench/RESULTS.md); but a pool that
would run dry before the wait ends refills at once: its next claims would start
cold, the same boots on the claims' own path (a steady 4 claims/s from a pool of
20 emptied it and most claims waited for a boot: bench/soak.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Key, Reconciler, Result, requeue
from turbok.controllers.blueprint import sandbox_from_template, template_hashes
from turbok.controllers.client import Client, Obj
from turbok.controllers.events import EventRecorder

__all__ = ["WarmPoolReconciler", "holds_devices_warm"]


def _names_claims(template: Obj) -> bool:
    spec = (((template.get("spec") or {}).get("podTemplate") or {}).get("spec")) or {}
    return bool(spec.get("resourceClaims"))


def holds_devices_warm(template: Obj) -> bool:
    """Whether warm sandboxes of ``template`` may exist: always, unless its Pods name ResourceClaims and the
    template does not say ``turbok.dev/warm-pool-devices: hold``."""
    annotations = template["metadata"].get("annotations") or {}
    return not _names_claims(template) or annotations.get(lb.WARM_POOL_DEVICES) == "hold"


@dataclass(frozen=True)
class _Member:
    """What a pool needs to know of one of its sandboxes, kept from the changes it watches."""

    pool_uid: str
    deleting: bool
    ready: bool
    created: str
    template_ref_hash: str
    template_hash: str


class WarmPoolReconciler(Reconciler):
    concurrency = 2
    # One pass per 100 ms at most: at 20 claims/s, a burst of adoptions costs one pass.
    coalesce = 0.1

    def __init__(self, client: Client, events: EventRecorder | None = None, *, max_starting: int | None = None,
                 burst_quiet: float = 0.0, burst_max_wait: float = 5.0) -> None:
        """``max_starting``: at most this many of a pool's sandboxes not Ready yet (None: no bound, upstream's);
        ``burst_quiet``: refill once no claim adopted a sandbox for this long (0: at once, upstream's), or
        ``burst_max_wait`` after the burst's first adoption, or at once when the Ready stock would not last that
        long at the burst's rate."""
        super().__init__(client)
        self.events = events
        self.max_starting = max_starting
        self.burst_quiet = burst_quiet
        self.burst_max_wait = burst_max_wait
        self._adopted: dict[Key, tuple[float, float, int]] = {}  # pool -> its burst's first and last adoption, count
        #: (pool uid, template uid and resourceVersion) told that the pool keeps no devices: told once
        self._told: set[tuple[str, str, str]] = set()
        self.kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxWarmPool")
        self.sandbox_kind = client.kinds.by_kind(lb.SANDBOX_API, "Sandbox")
        self.template_kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxTemplate")
        # The pool's sandboxes, indexed from the watched changes (an informer's cache, in
        # summaries): a pass costs what the pool's size costs in dict lookups, not in parsing.
        self._members: dict[Key, dict[str, _Member]] = {}
        self._pool_of: dict[Key, Key] = {}  # sandbox -> its pool
        self._pools_by_template: dict[Key, set[Key]] = {}

    async def start(self) -> None:
        for sb in await self.client.list(self.sandbox_kind):
            self._observe(sb, deleted=False)

    def _observe(self, sb: Obj, *, deleted: bool) -> set[Key]:
        """Update the index with one sandbox's change; the pools it concerns."""
        md = sb["metadata"]
        key = (md["namespace"], md["name"])
        touched = set()
        old = self._pool_of.pop(key, None)
        if old is not None:
            self._members.get(old, {}).pop(md["name"], None)
            touched.add(old)
            if not deleted and lb.WARM_POOL_SANDBOX not in (md.get("labels") or {}):  # a claim took it
                now = time.monotonic()
                first, _, count = self._adopted.get(old, (now, now, 0))
                self._adopted[old] = (first, now, count + 1)
        owner = lb.controller_of(sb)
        labels = md.get("labels") or {}
        if not deleted and owner and owner.get("kind") == "SandboxWarmPool" and lb.WARM_POOL_SANDBOX in labels:
            pool = (md["namespace"], owner["name"])
            self._pool_of[key] = pool
            self._members.setdefault(pool, {})[md["name"]] = _Member(
                pool_uid=owner.get("uid", ""), deleting=bool(md.get("deletionTimestamp")),
                ready=m.is_true(sb, "Ready"), created=md.get("creationTimestamp", ""),
                template_ref_hash=labels.get(lb.TEMPLATE_REF_HASH, ""),
                template_hash=labels.get(lb.TEMPLATE_HASH, ""))
            touched.add(pool)
        return touched

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        md = obj["metadata"]
        if kind is self.sandbox_kind:
            yield from self._observe(obj, deleted=deleted)
        elif kind is self.template_kind:
            yield from self._pools_by_template.get((md["namespace"], md["name"]), ())

    async def reconcile(self, namespace: str, name: str) -> Result:
        pool = await self.client.try_get(self.kind, namespace, name)
        if pool is None or pool["metadata"].get("deletionTimestamp"):
            return DONE  # its sandboxes go by garbage collection
        spec = pool.get("spec") or {}
        template_name = spec["sandboxTemplateRef"]["name"]
        self._pools_by_template.setdefault((namespace, template_name), set()).add((namespace, name))
        template = await self.client.try_get(self.template_kind, namespace, template_name)
        desired = spec.get("replicas", 1)
        if template is not None and desired and not holds_devices_warm(template):
            desired = 0
            await self._tell_no_devices(pool, template)
        recreate = (spec.get("updateStrategy") or {}).get("type") == "Recreate"
        pod_hash, bp_hash = template_hashes(template) if template else ("", "")

        active: list[tuple[str, _Member]] = []
        terminating = 0
        pool_uid, template_ref_hash = pool["metadata"]["uid"], lb.name_hash(template_name)
        for sb_name, member in list(self._members.get((namespace, name), {}).items()):
            if member.pool_uid != pool_uid:
                continue
            if member.deleting:
                terminating += 1
                continue
            # A pool now pointing at another template never hands out the old one; a changed
            # template replaces old sandboxes only under Recreate.
            other_template = member.template_ref_hash != template_ref_hash
            outdated = recreate and template is not None and member.template_hash != bp_hash
            if other_template or outdated:
                await self.client.delete(self.sandbox_kind, namespace, sb_name)
                terminating += 1
                continue
            active.append((sb_name, member))

        created = 0
        result = DONE
        if template is not None:
            missing = max(desired - len(active) - terminating, 0)
            stock = sum(1 for _, member in active if member.ready)
            quiet_in = self._burst_left((namespace, name))
            if self.max_starting is not None:
                bound = self.max_starting
                if quiet_in > 0:
                    # While claims keep taking sandboxes, one starts at a time (the claims need the other cores)
                    # and the pool looks again when they pause.
                    bound, result = 1, requeue(quiet_in)
                missing = min(missing, max(bound - (len(active) - stock), 0))
            if missing and (wait := self._burst_wait((namespace, name), stock, quiet_in)) > 0:
                missing, result = 0, requeue(wait)
            for _ in range(missing):
                await self.client.create(self.sandbox_kind, self._new_sandbox(pool, template, pod_hash, bp_hash))
                created += 1
        if len(active) + created > desired:
            # Unready first, then newest first.
            active.sort(key=lambda item: item[1].created, reverse=True)
            active.sort(key=lambda item: item[1].ready)
            excess = len(active) + created - desired
            for sb_name, _ in active[:excess]:
                await self.client.delete(self.sandbox_kind, namespace, sb_name)
            active = active[excess:]

        status = {
            "replicas": len(active) + created,
            "readyReplicas": sum(1 for _, member in active if member.ready),
            "selector": f"{lb.WARM_POOL_SANDBOX}={lb.name_hash(name)}",
            "observedGeneration": pool["metadata"].get("generation", 1),
        }
        if status != pool.get("status"):
            fresh = copy.deepcopy(pool)
            fresh["status"] = status
            await self.client.update_status(self.kind, fresh)
        return result

    def _burst_left(self, pool: Key) -> float:
        """Seconds until claims adopting from ``pool`` count as paused (``burst_quiet`` after the last; 0: no
        burst, and one that has ended is forgotten)."""
        if pool not in self._adopted:
            return 0.0
        left = self._adopted[pool][1] + self.burst_quiet - time.monotonic()
        if left <= 0:
            del self._adopted[pool]
        return max(left, 0.0)

    def _burst_wait(self, pool: Key, stock: int, quiet_in: float) -> float:
        """Seconds the pool's refill waits for the claims adopting from it to pause (0: refill now), given its
        ``stock`` of Ready sandboxes and ``quiet_in``, what ``_burst_left`` said."""
        if not self.burst_quiet or not quiet_in:
            return 0.0
        first, last, count = self._adopted[pool]
        now = time.monotonic()
        wait = min(last + self.burst_quiet - now, first + self.burst_max_wait - now)
        if wait <= 0:
            return 0.0  # the burst goes on past the longest wait: refill while it lasts (one at a time)
        # While claims keep coming the wait goes on to the burst's end: the stock must last until then.
        rate = count / max(now - first, self.burst_quiet)
        return wait if stock > rate * (first + self.burst_max_wait - now) else 0.0

    async def _tell_no_devices(self, pool: Obj, template: Obj) -> None:
        tmd = template["metadata"]
        told = (pool["metadata"]["uid"], tmd.get("uid", ""), tmd.get("resourceVersion", ""))
        if self.events is None or told in self._told:
            return
        self._told.add(told)
        await self.events.record(pool, "WarmPoolHoldsNoDevices",
                                 f'SandboxTemplate "{tmd["name"]}" names resource claims: warm sandboxes would hold '
                                 f"their devices unused, so this pool keeps none and claims start cold; annotate the "
                                 f"template {lb.WARM_POOL_DEVICES}=hold to keep them warm with their devices")

    def _new_sandbox(self, pool: Obj, template: Obj, pod_hash: str, bp_hash: str) -> Obj:
        name, tname = pool["metadata"]["name"], template["metadata"]["name"]
        pool_labels = {
            lb.WARM_POOL_SANDBOX: lb.name_hash(name),
            lb.TEMPLATE_REF_HASH: lb.name_hash(tname),
            lb.POD_TEMPLATE_HASH: pod_hash,
            lb.TEMPLATE_HASH: bp_hash,
        }
        return sandbox_from_template(
            template,
            generate_name=f"{name}-",
            labels={**pool_labels, lb.LAUNCH_TYPE: "warm", lb.CREATED_BY: "controller"},
            annotations={lb.TEMPLATE_REF: tname},
            owner=pool,
            pod_labels=pool_labels,
        )
