"""Everything a run creates is labelled, remembered, and deleted again.

``Tracker`` remembers each object a check creates (through
``CheckContext.create``) and deletes them newest first: after each check, at
the end of the run, and from the runner's ``finally`` when the user presses
Ctrl-C. ``sweep`` is ``turbok conformance run --cleanup``: it lists every
listable, deletable resource the server serves and deletes whatever carries
``app.kubernetes.io/managed-by=turbok-conformance``, so an interrupted or
killed run leaves nothing behind for long.

The labels are the contract: every created object carries ``MANAGED_BY``,
``RUN_LABEL`` (the run id) and ``CHECK_LABEL`` (the requirement id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turbok.conformance.errors import ClusterError
from turbok.conformance.kube import KubeClient

__all__ = ["CHECK_LABEL", "MANAGED_BY", "MANAGED_BY_SELECTOR", "RUN_LABEL", "Tracked", "Tracker", "sweep"]

log = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "turbok-conformance"}
MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=turbok-conformance"
RUN_LABEL = "conformance.turbok.dev/run"
CHECK_LABEL = "conformance.turbok.dev/check"


@dataclass(frozen=True)
class Tracked:
    api_version: str
    kind: str
    name: str
    namespace: str | None
    check: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


class Tracker:
    """The objects this run created and has not deleted yet, in creation order."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self._objects: list[Tracked] = []

    def add(self, obj: dict[str, Any], check: str) -> Tracked:
        meta = obj.get("metadata") or {}
        tracked = Tracked(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"), check)
        self._objects.append(tracked)
        return tracked

    def forget(self, tracked: Tracked) -> None:
        if tracked in self._objects:
            self._objects.remove(tracked)

    def pending(self, check: str | None = None) -> list[Tracked]:
        return [t for t in self._objects if check is None or t.check == check]

    def cleanup(self, check: str | None = None, *, on_delete: Callable[[Tracked], None] | None = None) -> tuple[int, list[str]]:
        """Delete (newest first) what ``check`` (or the whole run) created; (deleted, leftovers).

        A ``KeyboardInterrupt`` here propagates after the remaining objects were
        kept in the tracker, so a later call (or ``sweep``) can finish the job.
        """
        deleted, leftovers = 0, []
        for tracked in reversed(self.pending(check)):
            try:
                if self._client.delete(tracked.api_version, tracked.kind, tracked.name, tracked.namespace):
                    deleted += 1
                self._objects.remove(tracked)
                if on_delete is not None:
                    on_delete(tracked)
            except ClusterError as e:
                log.warning("could not delete %s: %s", tracked, e)
                leftovers.append(f"{tracked}: {e}")
        return deleted, leftovers


def sweep(client: KubeClient, *, on_delete: Callable[[str], None] | None = None) -> tuple[int, list[str]]:
    """Delete everything labelled by earlier runs, namespaces first; (deleted, errors)."""
    deleted, errors = 0, []
    resources = [
        r for r in client.discovery.all_resources()
        if {"list", "delete"} <= r.verbs and not (r.group == "" and r.name in ("events", "componentstatuses"))
        and not r.group.startswith("metrics.k8s.io") and not r.group.endswith("metrics.k8s.io")
    ]
    # Namespaces first: deleting one removes everything inside it in one call.
    resources.sort(key=lambda r: (r.group, r.name) != ("", "namespaces"))
    gone_namespaces: set[str] = set()
    for res in resources:
        try:
            items = client.list(res.api_version, res.kind, label_selector=MANAGED_BY_SELECTOR)
        except ClusterError as e:
            log.debug("cannot list %s: %s", res.name, e)
            continue
        for item in items:
            meta = item.get("metadata") or {}
            ns = meta.get("namespace")
            if ns in gone_namespaces or meta.get("deletionTimestamp"):
                continue
            name = f"{res.kind} {ns + '/' if ns else ''}{meta.get('name')}"
            try:
                if client.delete(res.api_version, res.kind, meta["name"], ns if res.namespaced else None):
                    deleted += 1
                    if on_delete is not None:
                        on_delete(name)
            except ClusterError as e:
                errors.append(f"{name}: {e}")
            if res.kind == "Namespace":
                gone_namespaces.add(meta["name"])
    return deleted, errors
