"""Namespaces: Active until deleted; then every object in them goes, then the namespace.

A terminating namespace (``deletionTimestamp`` set, ``spec.finalizers``
holding ``kubernetes``) has its contents deleted with background propagation;
when nothing namespaced remains in it, the controller drops the
``kubernetes`` finalizer and the registry removes the namespace. Conditions
say what still remains, as kube-controller-manager's namespace controller does.
"""

from __future__ import annotations

from collections.abc import Iterable

from turbok.api.kinds import NAMESPACE, Kind
from turbok.api.meta import set_condition
from turbok.controllers.base import DONE, Key, Reconciler, Result, requeue
from turbok.controllers.client import Obj

__all__ = ["NamespaceReconciler"]

FINALIZER = "kubernetes"


class NamespaceReconciler(Reconciler):
    kind = NAMESPACE
    concurrency = 1

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._terminating: set[str] = set()

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        ns = obj.get("metadata", {}).get("namespace", "")
        if kind.namespaced and ns in self._terminating:
            yield ("", ns)

    async def reconcile(self, namespace: str, name: str) -> Result:
        ns = await self.client.try_get(NAMESPACE, "", name)
        if ns is None:
            self._terminating.discard(name)
            return DONE
        if not ns["metadata"].get("deletionTimestamp"):
            return DONE
        self._terminating.add(name)
        remaining: dict[str, int] = {}
        for kind in self.client.kinds:
            if not kind.namespaced:
                continue
            for obj in await self.client.list(kind, name):
                remaining[kind.qualified] = remaining.get(kind.qualified, 0) + 1
                if not obj["metadata"].get("deletionTimestamp"):
                    await self.client.delete(kind, name, obj["metadata"]["name"], propagation="Background")
        status = ns.setdefault("status", {})
        if remaining:
            listed = ", ".join(f"{k} has {n} resource instances" for k, n in sorted(remaining.items()))
            changed = set_condition(status, "NamespaceContentRemaining", True, "SomeResourcesRemain",
                                    f"Some resources are remaining: {listed}")
            if changed:
                await self.client.update_status(NAMESPACE, ns)
            return requeue(1.0)
        spec_finalizers = [f for f in (ns.get("spec") or {}).get("finalizers") or [] if f != FINALIZER]
        ns["spec"] = {"finalizers": spec_finalizers} if spec_finalizers else {}
        await self.client.update(NAMESPACE, ns)
        return DONE
