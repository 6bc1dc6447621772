"""Admission: what kube-apiserver's admission chain does to a write, after the schema and before the store.

The registry calls ``Admission.admit(kind, obj, old)`` on every create and
every update of a main resource (not ``/status``), once the object has passed
its schema and metadata checks, and commits nothing if it raises. In kube's
order:

1. Mutation. LimitRange objects get their defaults (``default`` from ``max``,
   ``defaultRequest`` from ``default``). A Sandbox's pod template gets
   LimitRanger's defaults from its namespace's LimitRanges, then turbok's
   built-in limits for what is still unset (``turbok.api.limitrange``);
   on update only when the pod template changed, as Pods are defaulted once.
2. Validation, 422 Invalid with field causes: pod templates of Sandboxes and
   SandboxTemplates (``turbok.api.podtemplate``, the validator the sandbox
   controller uses too), LimitRanges, ResourceQuotas. On update, a pod
   template that did not change is not checked again: an object stored
   before a rule existed can still get its finalizers removed.
3. LimitRanger's min/max/ratio per Container and Pod: 403 Forbidden.
4. ResourceQuota: every quota in the namespace that tracks what this write
   adds (an object; a Pod's ``pods`` and cpu/memory, a claim's storage, a
   Service's node ports: ``turbok.api.quota.usage``) must have room: 403
   Forbidden ``exceeded quota: ...``; a new Pod must specify what a compute
   quota tracks (``must specify limits.memory for: main``). Usage is counted from the store itself at the
   moment of the write, so it never drifts (a write admitted on a worker
   thread is checked again on the event loop just before its commit:
   ``recheck``); the quota controller copies it into ``status.used``.

Who calls: ``turbok.store.registry.ObjectRegistry`` only.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from turbok.api import dra, limitrange, podtemplate
from turbok.api import quota as q
from turbok.api.kinds import (
    LIMIT_RANGE,
    NAMESPACE,
    RESOURCE_CLAIM,
    RESOURCE_CLAIM_TEMPLATE,
    RESOURCE_QUOTA,
    Kind,
    KindRegistry,
)
from turbok.api.status import Forbidden, Invalid
from turbok.store.sqlite import SqliteStore

__all__ = ["Admission"]

Obj = dict[str, Any]

#: Where a kind keeps a pod template that admission checks.
_POD_TEMPLATES = {("agents.x-k8s.io", "Sandbox"): "spec.podTemplate",
                  ("extensions.agents.x-k8s.io", "SandboxTemplate"): "spec.podTemplate"}


def _pod_template(obj: Obj) -> Any:
    return (obj.get("spec") or {}).get("podTemplate")


class Admission:
    def __init__(self, db: SqliteStore, kinds: KindRegistry) -> None:
        self.db = db
        self.kinds = kinds
        self._pod = next((k for k in kinds if not k.group and k.kind == "Pod"), None)

    def _objects(self, kind: Kind, namespace: str) -> list[Obj]:
        return [row.object() for _, _, row in self.db.rows(kind.key, namespace)]

    def admit(self, kind: Kind, obj: Obj, old: Obj | None) -> None:
        name = obj["metadata"].get("name", "")
        namespace = obj["metadata"].get("namespace", "")
        if kind is LIMIT_RANGE:
            limitrange.set_defaults(obj)
            self._invalid(kind, name, limitrange.validate(obj))
        elif kind is RESOURCE_QUOTA:
            self._invalid(kind, name, q.validate(obj))
        elif kind in (RESOURCE_CLAIM, RESOURCE_CLAIM_TEMPLATE) and old is None:
            row = self.db.get(NAMESPACE.key, "", namespace)
            labels = (row.object()["metadata"].get("labels") or {}) if row is not None else {}
            self._invalid(kind, name, dra.admin_access_causes(obj, labels))
        path = _POD_TEMPLATES.get((kind.group, kind.kind))
        if path is None:
            self._quota(kind, obj, old, namespace, name)
            return
        changed = old is None or _pod_template(old) != _pod_template(obj)
        sandbox = q.is_sandbox(kind)
        ranges = self._objects(LIMIT_RANGE, namespace) if sandbox and changed else []
        if sandbox and changed and isinstance(_pod_template(obj), dict):
            pod_spec = _pod_template(obj).get("spec")
            if isinstance(pod_spec, dict):
                limitrange.apply_defaults(pod_spec, ranges)
                limitrange.apply_builtin_defaults(pod_spec)
        if changed:
            spec = obj.get("spec") or {}
            # A template's claims may bring volume claim templates of their own, when its policy allows.
            more = not sandbox and spec.get("volumeClaimTemplatesPolicy", "Disallowed") != "Disallowed"
            self._invalid(kind, name, podtemplate.validate_pod_template(
                _pod_template(obj), path, claim_volumes=podtemplate.claim_volume_names(spec), more_volumes=more))
        if sandbox and changed:
            refused = limitrange.violations(_pod_template(obj).get("spec") or {}, ranges)
            if refused:
                listed = refused[0] if len(refused) == 1 else "[" + ", ".join(refused) + "]"
                raise self._forbidden(kind, name, listed)
        self._quota(kind, obj, old, namespace, name)

    def recheck(self, kind: Kind, obj: Obj, old: Obj | None) -> None:
        """The quota check again, just before the commit of a write admitted on a worker thread."""
        md = obj["metadata"]
        self._quota(kind, obj, old, md.get("namespace", ""), md.get("name", ""))

    def _invalid(self, kind: Kind, name: str, causes: list[Any]) -> None:
        if causes:
            raise Invalid.of(kind=kind.kind, group=kind.group, name=name, causes=causes)

    @staticmethod
    def _forbidden(kind: Kind, name: str, why: str) -> Forbidden:
        return Forbidden(f'{kind.qualified} "{name}" is forbidden: {why}', kind=kind.plural, group=kind.group,
                         name=name)

    def _quota(self, kind: Kind, obj: Obj, old: Obj | None, namespace: str, name: str) -> None:
        if not kind.namespaced or not self.db.count(RESOURCE_QUOTA.key, namespace):
            return
        grown: dict[str, Decimal] = {}
        after = q.usage(kind, obj)
        if after:
            before = q.usage(kind, old) if old is not None else {}
            for resource, amount in after.items():
                if amount > before.get(resource, Decimal(0)):
                    grown[resource] = amount - before.get(resource, Decimal(0))
        if old is not None and not grown:
            return  # an update that adds nothing a quota counts
        for quota in self._objects(RESOURCE_QUOTA, namespace):
            hard = q.hard_of(quota)
            what = q.tracked(hard, self.kinds)
            asked = {r: Decimal(1) for r, counted in what.counts.items() if counted is kind and old is None}
            asked.update({r: v for r, v in grown.items() if what.usage.get(r) is kind})
            if kind is self._pod and what.compute and (old is None or old.get("spec") != obj.get("spec")):
                missing = q.unspecified(obj, what.compute)
                if missing:
                    raise self._forbidden(kind, name, f"failed quota: {quota['metadata']['name']}: must specify "
                                                      f"{missing}")
            if not asked:
                continue
            why = q.exceeded(quota["metadata"]["name"], hard, self._used(what, namespace, asked), asked)
            if why:
                raise self._forbidden(kind, name, why)

    def _used(self, what: q.Tracked, namespace: str, asked: dict[str, Decimal]) -> dict[str, Decimal]:
        used: dict[str, Decimal] = {}
        for resource, counted_kind in what.counts.items():
            if resource in asked:
                used[resource] = Decimal(self.db.count(counted_kind.key, namespace))
        for summed in {what.usage[r] for r in asked if r in what.usage}:
            for obj in self._objects(summed, namespace):
                for resource, amount in q.usage(summed, obj).items():
                    used[resource] = used.get(resource, Decimal(0)) + amount
        return used
