"""SandboxWarmPool: keep ``replicas`` sandboxes of a template started and unclaimed.

Upstream semantics (``sandboxwarmpool_controller.go``): pool sandboxes are
named ``<pool>-xxxxx`` (generateName), labelled ``warm-pool-sandbox=NameHash(pool)``
plus the template hashes, owned by the pool as controller. A claim adopting
one moves its ownership to the claim, so it leaves the pool, which refills at
once. Excess sandboxes go unready-first, newest-first. ``updateStrategy:
Recreate`` replaces sandboxes built from an older template; ``OnReplenish``
(default) keeps them until claimed. Status: ``replicas`` (active),
``readyReplicas``, ``selector`` (for the scale subresource), ``observedGeneration``.

The store is synchronous, so a list always sees this controller's own creates:
upstream's expectations machinery is not needed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from turbok.api import meta as m
from turbok.api.kinds import Kind
from turbok.controllers import labels as lb
from turbok.controllers.base import DONE, Key, Reconciler, Result
from turbok.controllers.blueprint import sandbox_from_template, template_hashes
from turbok.controllers.client import Client, Obj

__all__ = ["WarmPoolReconciler"]


class WarmPoolReconciler(Reconciler):
    concurrency = 2
    # A pass lists every sandbox of the pool; at 20 claims/s one pass per 100 ms refills just as well.
    coalesce = 0.1

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxWarmPool")
        self.sandbox_kind = client.kinds.by_kind(lb.SANDBOX_API, "Sandbox")
        self.template_kind = client.kinds.by_kind(lb.EXTENSIONS_API, "SandboxTemplate")
        self._pool_of: dict[Key, Key] = {}  # sandbox -> the pool it was last seen in
        self._pools_by_template: dict[Key, set[Key]] = {}

    def related(self, kind: Kind, obj: Obj) -> Iterable[Key]:
        md = obj["metadata"]
        if kind is self.sandbox_kind:
            key = (md["namespace"], md["name"])
            owner = lb.controller_of(obj)
            if owner and owner.get("kind") == "SandboxWarmPool":
                pool = (md["namespace"], owner["name"])
                self._pool_of[key] = pool
                yield pool
            elif key in self._pool_of:  # adopted by a claim or deleted: its pool refills
                yield self._pool_of.pop(key)
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
        recreate = (spec.get("updateStrategy") or {}).get("type") == "Recreate"
        pod_hash, bp_hash = template_hashes(template) if template else ("", "")

        selector = m.LabelSelector.parse(f"{lb.WARM_POOL_SANDBOX}={lb.name_hash(name)}")
        active: list[Obj] = []
        terminating = 0
        for sb in await self.client.list(self.sandbox_kind, namespace, selector=selector):
            owner = lb.controller_of(sb)
            if not owner or owner.get("uid") != pool["metadata"]["uid"]:
                continue
            if sb["metadata"].get("deletionTimestamp"):
                terminating += 1
                continue
            labels = sb["metadata"].get("labels") or {}
            # A pool now pointing at another template never hands out the old one; a changed
            # template replaces old sandboxes only under Recreate.
            other_template = labels.get(lb.TEMPLATE_REF_HASH) != lb.name_hash(template_name)
            outdated = recreate and template is not None and labels.get(lb.TEMPLATE_HASH) != bp_hash
            if other_template or outdated:
                await self.client.delete(self.sandbox_kind, namespace, sb["metadata"]["name"])
                terminating += 1
                continue
            active.append(sb)

        if template is not None:
            for _ in range(max(desired - len(active) - terminating, 0)):
                active.append(await self.client.create(self.sandbox_kind, self._new_sandbox(
                    pool, template, pod_hash, bp_hash)))
        if len(active) > desired:
            # Unready first, then newest first.
            active.sort(key=lambda s: (m.is_true(s, "Ready"), s["metadata"]["creationTimestamp"]))
            excess, active = active[: len(active) - desired], active[len(active) - desired:]
            for sb in excess:
                await self.client.delete(self.sandbox_kind, namespace, sb["metadata"]["name"])

        status = {
            "replicas": len(active),
            "readyReplicas": sum(1 for s in active if m.is_true(s, "Ready")),
            "selector": f"{lb.WARM_POOL_SANDBOX}={lb.name_hash(name)}",
            "observedGeneration": pool["metadata"].get("generation", 1),
        }
        if status != pool.get("status"):
            fresh = copy.deepcopy(pool)
            fresh["status"] = status
            await self.client.update_status(self.kind, fresh)
        return DONE

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
