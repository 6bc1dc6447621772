"""SandboxClaim: bind a claim to a sandbox, warm from its pool when it can, cold otherwise.

Upstream semantics (``sandboxclaim_controller.go``):

- A bound sandbox is found by ``status.sandbox.name``, then by the
  ``claim-uid`` label (an adoption interrupted by a crash), then by the claim's
  own name (a cold start), each only if the claim controls it.
- Warm adoption takes the oldest Ready sandbox of the pool (a starting one if
  none is Ready), strips the pool labels, makes the claim its only controller
  and forwards its Ready condition to the claim in one status write. Claims
  with ``env`` or ``volumeClaimTemplates`` always start cold.
- A cold start creates a Sandbox named like the claim from the pool's
  template, with ``env`` injected per ``envVarsInjectionPolicy``,
  volumeClaimTemplates merged per ``volumeClaimTemplatesPolicy`` and
  ``additionalPodMetadata`` on its pod template.
- ``lifecycle``: expiry at ``shutdownTime`` or ``ttlSecondsAfterFinished``
  after Finished; ``Delete``/``DeleteForeground`` delete the claim (the
  sandbox follows by garbage collection), ``Retain`` deletes only the sandbox.
- Ready reasons: forwarded from the sandbox, or ``WarmPoolNotFound``,
  ``TemplateNotFound``, ``EnvVarsInjectionRejected``, ``VolumeClaimTemplatesError``,
  ``InvalidMetadata``, ``ClaimExpired``, ``SandboxExpired``, ``SandboxNotReady``,
  ``ReconcilerError``, as the official client expects.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.api.status import Forbidden, Invalid
from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Key, Reconciler, Result, requeue
from turbok.controllers.blueprint import POOL_LABELS, sandbox_from_template
from turbok.controllers.client import Client, Obj
from turbok.controllers.events import EventRecorder
from turbok.controllers.injection import (
    DEFAULT_LABEL_DOMAINS,
    ClaimError,
    apply_env,
    merge_pod_metadata,
    merge_volume_claim_templates,
    validate_pod_metadata,
)

__all__ = ["ClaimReconciler"]

#: How soon to look again for a pool or template that does not exist yet (their creation also wakes us).
MISSING_RECHECK = 60.0
#: How often a claim refused by a quota tries again.
QUOTA_RECHECK = 10.0


class ClaimReconciler(Reconciler):
    concurrency = 8

    def __init__(self, client: Client, metrics: CollectorRegistry | None = None,
                 events: EventRecorder | None = None,
                 allowed_label_domains: tuple[str, ...] = DEFAULT_LABEL_DOMAINS) -> None:
        super().__init__(client)
        self.events = events or EventRecorder(client)
        #: Label domains a claim's ``additionalPodMetadata`` may use (upstream's allowed-label-domains).
        self.allowed_label_domains = allowed_label_domains
        self.kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxClaim")
        self.sandbox_kind = client.kinds.by_kind(lb.SANDBOX_API, "Sandbox")
        self.pool_kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxWarmPool")
        self.template_kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxTemplate")
        # Warm candidates per pool, oldest first: the O(1) path of adoption.
        self._candidates: dict[Key, dict[str, None]] = {}
        self._candidate_pool: dict[Key, Key] = {}
        self._waiting: dict[Key, set[Key]] = {}  # pool -> claims waiting for it or its template
        self._counted: set[Key] = set()  # claims whose first Ready the metrics have seen
        # claim -> (its uid, the sandbox this process bound it to; "" once looked up and found none).
        self._bindings: dict[Key, tuple[str, str]] = {}
        # creationTimestamp has whole seconds: a claim from the second before start counts as older.
        self._started_at = time.time() - 1.0
        registry = metrics or CollectorRegistry()
        self._created = Counter("agent_sandbox_claim_creation_total", "Claims that became Ready, by launch type",
                                ["namespace", "sandbox_template", "launch_type", "warmpool_name"], registry=registry)
        self._latency = Histogram("agent_sandbox_claim_controller_startup_latency_ms",
                                  "Claim creation to first Ready, in milliseconds", ["launch_type"],
                                  registry=registry, buckets=(5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000))

    # ------------------------------------------------------------ routing

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        md = obj["metadata"]
        ns = md.get("namespace", "")
        if kind is self.sandbox_kind:
            key = (ns, md["name"])
            owner = lb.controller_of(obj)
            adoptable = (owner is not None and owner.get("kind") == "SandboxWarmPool"
                         and not md.get("deletionTimestamp") and lb.WARM_POOL_SANDBOX in (md.get("labels") or {}))
            if adoptable:
                assert owner is not None
                pool = (ns, owner["name"])
                self._candidates.setdefault(pool, {})[md["name"]] = None
                self._candidate_pool[key] = pool
            elif key in self._candidate_pool:
                self._candidates.get(self._candidate_pool.pop(key), {}).pop(md["name"], None)
            if owner is not None and owner.get("kind") == "SandboxClaim":
                yield (ns, owner["name"])
        elif kind is self.pool_kind:
            yield from self._waiting.get((ns, md["name"]), ())
        elif kind is self.template_kind:
            for pool, claims in self._waiting.items():
                if pool[0] == ns:
                    yield from claims

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, namespace: str, name: str) -> Result:
        claim = await self.client.try_get(self.kind, namespace, name)
        if claim is None or claim["metadata"].get("deletionTimestamp"):
            for claims in self._waiting.values():
                claims.discard((namespace, name))
            self._bindings.pop((namespace, name), None)
            self._counted.discard((namespace, name))
            return DONE
        status = copy.deepcopy(claim.get("status") or {})
        gen = claim["metadata"].get("generation")
        expire_at = _expiry(claim)
        if expire_at is not None and dt.datetime.now(dt.UTC) >= expire_at:
            return await self._expire(claim, status)
        pool_key = (namespace, claim["spec"]["warmPoolRef"]["name"])
        result: Result = DONE
        news: tuple[str, str] | None = None  # an event to record once the status is written
        try:
            # Before anything else, as upstream: a bound claim with invalid metadata says so too.
            validate_pod_metadata(claim["spec"].get("additionalPodMetadata"), self.allowed_label_domains)
            sandbox = await self._bound(claim)
            if sandbox is None:
                sandbox, news = await self._provision(claim)
                self._bindings[(namespace, name)] = (claim["metadata"]["uid"], sandbox["metadata"]["name"])
            else:
                sandbox = await self._follow_metadata(claim, sandbox)
            self._waiting.get(pool_key, set()).discard((namespace, name))
            self._forward(claim, sandbox, status, gen)
        except ClaimError as e:
            m.set_condition(status, "Ready", False, e.reason, e.message, observed_generation=gen)
            # a change to the pool or the template may lift any refusal (an env policy too): wake on it
            self._waiting.setdefault(pool_key, set()).add((namespace, name))
            if e.retry_after is not None:
                result = requeue(e.retry_after)
        if expire_at is not None:
            left = (expire_at - dt.datetime.now(dt.UTC)).total_seconds()
            result = requeue(min(left, result.requeue_after or left))
        if status != (claim.get("status") or {}):
            fresh = copy.deepcopy(claim)
            fresh["status"] = status
            await self.client.update_status(self.kind, fresh)
        self._observe(claim, status)
        if news is not None:  # after the status write: recording must not delay Ready
            await self.events.record(claim, *news)
        return result

    def _forward(self, claim: Obj, sandbox: Obj, status: Obj, gen: int | None) -> None:
        sb_status = sandbox.get("status") or {}
        status["sandbox"] = {"name": sandbox["metadata"]["name"]}
        if sb_status.get("podIPs"):
            status["sandbox"]["podIPs"] = list(sb_status["podIPs"])
        ready = m.condition(sandbox, "Ready")
        if ready is None:
            m.set_condition(status, "Ready", False, "SandboxNotReady", "Sandbox is not ready", observed_generation=gen)
        elif ready.get("reason") == "SandboxExpired":
            m.set_condition(status, "Ready", False, "SandboxExpired",
                            "Underlying Sandbox resource has expired independently of the Claim.",
                            observed_generation=gen)
        else:
            m.set_condition(status, "Ready", ready["status"], ready.get("reason") or "Unknown",
                            ready.get("message", ""), observed_generation=gen)
        finished = m.condition(sandbox, "Finished")
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Finished"]
        if finished is not None:
            finished["observedGeneration"] = gen
            conditions.append(finished)
        status["conditions"] = conditions

    def _observe(self, claim: Obj, status: Obj) -> None:
        key = (claim["metadata"]["namespace"], claim["metadata"]["name"])
        if key in self._counted or not m.is_true({"status": status}, "Ready"):
            return
        self._counted.add(key)
        launch = "warm" if status.get("sandbox", {}).get("name") != claim["metadata"]["name"] else "cold"
        created = m.parse_time(claim["metadata"]["creationTimestamp"]).timestamp()
        self._latency.labels(launch).observe(max(time.time() - created, 0) * 1000)
        self._created.labels(claim["metadata"]["namespace"], "", launch,
                             claim["spec"]["warmPoolRef"]["name"]).inc()

    # ------------------------------------------------------------ finding and making the sandbox

    def _controls(self, claim: Obj, sandbox: Obj | None) -> bool:
        owner = lb.controller_of(sandbox) if sandbox else None
        return owner is not None and owner.get("uid") == claim["metadata"]["uid"]

    async def _bound(self, claim: Obj) -> Obj | None:
        md = claim["metadata"]
        ns = md["namespace"]
        key = (ns, md["name"])
        known = self._bindings.get(key)
        known_name = known[1] if known and known[0] == md["uid"] else None
        recorded = (claim.get("status") or {}).get("sandbox", {}).get("name") or known_name
        if recorded:
            sb = await self.client.try_get(self.sandbox_kind, ns, recorded)
            if self._controls(claim, sb):
                return sb
        if known_name is None and m.parse_time(md["creationTimestamp"]).timestamp() < self._started_at:
            # Older than this process: a binding made before a crash may not have reached the
            # claim's status. The claim-uid label finds it (a scan, so only once per claim).
            by_uid = m.LabelSelector.parse(f"{lb.CLAIM_UID}={md['uid']}")
            for sb in await self.client.list(self.sandbox_kind, ns, selector=by_uid):
                if self._controls(claim, sb):
                    self._bindings[key] = (md["uid"], sb["metadata"]["name"])
                    return sb
            self._bindings[key] = (md["uid"], "")
        same_name = await self.client.try_get(self.sandbox_kind, ns, md["name"])
        if same_name is not None:
            if self._controls(claim, same_name):
                return same_name
            raise ClaimError("ReconcilerError", f'Error seen: sandbox "{md["name"]}" is not controlled by claim '
                             f'"{md["name"]}". Please use a different claim name or delete the sandbox manually')
        return None

    async def _provision(self, claim: Obj) -> tuple[Obj, tuple[str, str]]:
        """A sandbox for an unbound claim, adopted or cold-started, and the event that says which."""
        md, spec = claim["metadata"], claim["spec"]
        ns, pool_name = md["namespace"], spec["warmPoolRef"]["name"]
        pool = await self.client.try_get(self.pool_kind, ns, pool_name)
        if pool is None:
            raise ClaimError("WarmPoolNotFound", f'SandboxWarmPool "{pool_name}" not found', retry_after=MISSING_RECHECK)
        if not spec.get("env") and not spec.get("volumeClaimTemplates"):
            warm = await self._take_candidate((ns, pool_name))
            if warm is not None:
                adopted = await self._adopt(claim, warm)
                return adopted, ("SandboxAdopted", f'Adopted warm pool Sandbox "{adopted["metadata"]["name"]}"')
        template_name = pool["spec"]["sandboxTemplateRef"]["name"]
        template = await self.client.try_get(self.template_kind, ns, template_name)
        if template is None:
            raise ClaimError("TemplateNotFound", f'SandboxTemplate "{template_name}" not found',
                             retry_after=MISSING_RECHECK)
        created = await self._cold_start(claim, template)
        return created, ("SandboxProvisioned", f'Created Sandbox "{created["metadata"]["name"]}"')

    async def _follow_metadata(self, claim: Obj, sandbox: Obj) -> Obj:
        """Upstream's fast path: a bound sandbox's pod template metadata is its template's, the claim's identity
        labels and the claim's ``additionalPodMetadata``, kept so as the claim changes (an annotation added,
        changed or removed reaches the Sandbox, and so its next Pod: the Pod Snapshot client restores so)."""
        ns = claim["metadata"]["namespace"]
        pool = await self.client.try_get(self.pool_kind, ns, claim["spec"]["warmPoolRef"]["name"])
        template = await self.client.try_get(self.template_kind, ns, pool["spec"]["sandboxTemplateRef"]["name"]) \
            if pool is not None else None
        if template is None:
            return sandbox
        wanted = copy.deepcopy(((template.get("spec") or {}).get("podTemplate") or {}).get("metadata") or {})
        labels = wanted.setdefault("labels", {})
        labels[lb.CLAIM_UID] = claim["metadata"]["uid"]
        labels[lb.TEMPLATE_REF_HASH] = lb.name_hash(template["metadata"]["name"])
        creator = (claim["metadata"].get("labels") or {}).get(lb.CREATED_BY)
        if creator:
            labels[lb.CREATED_BY] = creator
        annotations = wanted.get("annotations") or {}
        if (sandbox["metadata"].get("labels") or {}).get(lb.LAUNCH_TYPE) == "warm" and \
                annotations.get(lb.SAFE_TO_EVICT) == "true":  # as adoption leaves it
            annotations.pop(lb.SAFE_TO_EVICT)
        wanted = merge_pod_metadata(wanted, claim["spec"].get("additionalPodMetadata"), self.allowed_label_domains)
        wanted = {k: v for k, v in wanted.items() if v}
        current = (sandbox.get("spec") or {}).get("podTemplate", {}).get("metadata") or {}
        if wanted == {k: v for k, v in current.items() if v}:
            return sandbox
        fresh = copy.deepcopy(sandbox)
        fresh["spec"]["podTemplate"]["metadata"] = wanted
        return await self.client.update(self.sandbox_kind, fresh)

    async def _take_candidate(self, pool: Key) -> Obj | None:
        """The oldest Ready sandbox of the pool, else the oldest starting one; None when the pool is empty."""
        queue = self._candidates.get(pool, {})
        fallback: Obj | None = None
        for name in list(queue):
            sb = await self.client.try_get(self.sandbox_kind, pool[0], name)
            owner = lb.controller_of(sb) if sb else None
            if sb is None or owner is None or owner.get("kind") != "SandboxWarmPool" or owner.get("name") != pool[1] \
                    or sb["metadata"].get("deletionTimestamp"):
                queue.pop(name, None)
                continue
            if m.is_true(sb, "Ready"):
                queue.pop(name, None)
                return sb
            ready = m.condition(sb, "Ready")
            starting = ready is None or ready.get("reason") == "DependenciesNotReady"
            if fallback is None and starting:
                fallback = sb
        if fallback is not None:
            queue.pop(fallback["metadata"]["name"], None)
        return fallback

    async def _adopt(self, claim: Obj, sandbox: Obj) -> Obj:
        """Move a warm pool's Sandbox to the claim in one write, as upstream's completeAdoption does: the
        pool's labels go, the claim controls it, its pod template carries the claim's identity and
        metadata. The Sandbox controller then relabels the running Pod; nothing restarts."""
        cmd = claim["metadata"]
        sb = copy.deepcopy(sandbox)
        md = sb["metadata"]
        labels = md.setdefault("labels", {})
        for key in POOL_LABELS:
            labels.pop(key, None)
        labels[lb.LAUNCH_TYPE] = "warm"
        creator = (cmd.get("labels") or {}).get(lb.CREATED_BY)
        identity = {lb.CLAIM_UID: cmd["uid"]}
        if labels.get(lb.TEMPLATE_REF_HASH):
            identity[lb.TEMPLATE_REF_HASH] = labels[lb.TEMPLATE_REF_HASH]
        labels.update(identity)
        if creator:
            labels[lb.CREATED_BY] = creator
        else:
            labels.pop(lb.CREATED_BY, None)
        md["ownerReferences"] = [lb.owner_ref(claim)]
        md.setdefault("annotations", {})[lb.POD_NAME] = md["name"]
        pod_md = sb["spec"]["podTemplate"].setdefault("metadata", {})
        pod_labels = {k: v for k, v in (pod_md.get("labels") or {}).items() if k not in POOL_LABELS}
        pod_labels.update(identity)
        if creator:
            pod_labels[lb.CREATED_BY] = creator
        else:
            pod_labels.pop(lb.CREATED_BY, None)
        pod_md["labels"] = pod_labels
        annotations = pod_md.get("annotations") or {}
        if annotations.get(lb.SAFE_TO_EVICT) == "true":  # it hosts a user's state now: not to be evicted
            annotations.pop(lb.SAFE_TO_EVICT)
            if not annotations:
                pod_md.pop("annotations", None)
        sb["spec"]["podTemplate"]["metadata"] = merge_pod_metadata(pod_md, claim["spec"].get("additionalPodMetadata"),
                                                                   self.allowed_label_domains)
        return await self.client.update(self.sandbox_kind, sb)

    async def _cold_start(self, claim: Obj, template: Obj) -> Obj:
        cmd, spec = claim["metadata"], claim["spec"]
        tname = template["metadata"]["name"]
        labels = {lb.CLAIM_UID: cmd["uid"], lb.LAUNCH_TYPE: "cold", lb.TEMPLATE_REF_HASH: lb.name_hash(tname)}
        creator = (cmd.get("labels") or {}).get(lb.CREATED_BY)
        if creator:
            labels[lb.CREATED_BY] = creator
        sandbox = sandbox_from_template(template, name=cmd["name"], labels=labels,
                                        annotations={lb.TEMPLATE_REF: tname}, owner=claim,
                                        pod_labels={k: v for k, v in labels.items() if k != lb.LAUNCH_TYPE})
        tspec = template.get("spec") or {}
        pod = sandbox["spec"]["podTemplate"]
        apply_env(pod.setdefault("spec", {}), spec.get("env") or [], tspec.get("envVarsInjectionPolicy") or "Disallowed")
        vcts = merge_volume_claim_templates(tspec.get("volumeClaimTemplates") or [],
                                            spec.get("volumeClaimTemplates") or [],
                                            tspec.get("volumeClaimTemplatesPolicy") or "Disallowed")
        if vcts:
            sandbox["spec"]["volumeClaimTemplates"] = vcts
        pod["metadata"] = merge_pod_metadata(pod.get("metadata") or {}, spec.get("additionalPodMetadata"),
                                             self.allowed_label_domains)
        try:
            return await self.client.create(self.sandbox_kind, sandbox)
        except Forbidden as e:  # a ResourceQuota or LimitRange of the namespace: room may come back
            raise ClaimError("ReconcilerError", f"Error seen: {e}", retry_after=QUOTA_RECHECK) from e
        except Invalid as e:  # the template (with the claim's env) is invalid: wait for a change to it
            raise ClaimError("ReconcilerError", f"Error seen: {e}", retry_after=MISSING_RECHECK) from e

    # ------------------------------------------------------------ lifecycle

    async def _expire(self, claim: Obj, status: Obj) -> Result:
        md = claim["metadata"]
        gen = md.get("generation")
        policy = (claim["spec"].get("lifecycle") or {}).get("shutdownPolicy", "Retain")
        m.set_condition(status, "Ready", False, "ClaimExpired", "Claim expired. Sandbox cleanup initiated.",
                        observed_generation=gen)
        target = "its sandbox" if policy == "Retain" else "the claim"
        await self.events.record(claim, "ClaimExpired", f"Claim expired; deleting {target} (ShutdownPolicy={policy})")
        if policy in ("Delete", "DeleteForeground"):
            await self._write(claim, status)
            await self.client.delete(self.kind, md["namespace"], md["name"], uid=md["uid"],
                                     propagation="Foreground" if policy == "DeleteForeground" else "Background")
            return DONE
        bound = await self._bound_quietly(claim)
        if bound is not None:
            await self.client.delete(self.sandbox_kind, md["namespace"], bound["metadata"]["name"],
                                     uid=bound["metadata"]["uid"])
        status.pop("sandbox", None)
        await self._write(claim, status)
        return DONE

    async def _bound_quietly(self, claim: Obj) -> Obj | None:
        try:
            return await self._bound(claim)
        except ClaimError:
            return None

    async def _write(self, claim: Obj, status: Obj) -> None:
        if status != (claim.get("status") or {}):
            fresh = copy.deepcopy(claim)
            fresh["status"] = status
            await self.client.update_status(self.kind, fresh)


def _expiry(claim: Obj) -> dt.datetime | None:
    lifecycle: dict[str, Any] = claim["spec"].get("lifecycle") or {}
    times = []
    if lifecycle.get("shutdownTime"):
        times.append(m.parse_time(lifecycle["shutdownTime"]))
    ttl = lifecycle.get("ttlSecondsAfterFinished")
    finished = m.condition(claim, "Finished")
    if ttl is not None and finished and finished.get("status") == "True" and finished.get("lastTransitionTime"):
        times.append(m.parse_time(finished["lastTransitionTime"]) + dt.timedelta(seconds=ttl))
    return min(times) if times else None
