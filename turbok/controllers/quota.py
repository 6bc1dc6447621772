"""ResourceQuota: keep ``status.hard`` and ``status.used`` true, as kube-controller-manager's quota controller does.

Admission (``turbok.store.admission``) refuses what would exceed a quota,
counting from the store at the moment of the write; this reconciler only
reports. A quota is recounted when it changes and when an object it tracks
in its namespace is created, changed or deleted (``related``), after a short
pause so that a burst (a warm pool filling) costs one count.
"""

from __future__ import annotations

from decimal import Decimal

from turbok.api import quota as q
from turbok.api.kinds import Kind
from turbok.controllers.base import DONE, Key, Reconciler, Result
from turbok.controllers.client import Client, Obj

__all__ = ["QuotaReconciler"]


class QuotaReconciler(Reconciler):
    concurrency = 1
    coalesce = 0.05

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.kind = client.kinds.by_kind("v1", "ResourceQuota")
        #: namespace -> quota name -> what it tracks (filled as quotas are reconciled)
        self._tracked: dict[str, dict[str, q.Tracked]] = {}

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> list[Key]:
        namespace = obj.get("metadata", {}).get("namespace", "")
        return [(namespace, name) for name, what in self._tracked.get(namespace, {}).items()
                if kind in what.counts.values() or kind in what.usage.values()]

    async def reconcile(self, namespace: str, name: str) -> Result:
        quota = await self.client.try_get(self.kind, namespace, name)
        if quota is None:
            self._tracked.get(namespace, {}).pop(name, None)
            return DONE
        hard = q.hard_of(quota)
        what = q.tracked(hard, self.client.kinds)
        self._tracked.setdefault(namespace, {})[name] = what
        used: dict[str, Decimal] = {r: Decimal(0) for r in (*what.zero, *what.usage)}
        for resource, counted in what.counts.items():
            used[resource] = Decimal(len(await self.client.list(counted, namespace)))
        for summed in set(what.usage.values()):
            for obj in await self.client.list(summed, namespace):
                for resource, amount in q.usage(summed, obj).items():
                    if what.usage.get(resource) is summed:
                        used[resource] += amount
        status = {"hard": q.format_usage(hard), "used": q.format_usage(used)}
        if quota.get("status") != status:
            quota["status"] = status
            await self.client.update_status(self.kind, quota)
        return DONE
