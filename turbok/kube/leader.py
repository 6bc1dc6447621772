"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` does it.

One Lease (``turbok-operator`` in the operator's namespace) names the holder. A candidate takes it when
it is free (no holder, or released) or expired: not renewed for ``leaseDurationSeconds`` as this process
measures it (since it last saw the Lease change; clocks of different machines are never compared). The
holder renews every ``retry_period`` seconds; if it cannot renew within ``renew_deadline`` it stops
leading (``lost`` is set: the operator exits rather than act beside a new leader). Every write carries
the resourceVersion it read, so two candidates never both win: one gets 409 Conflict. ``release``
(graceful shutdown) empties ``holderIdentity`` so a standby takes over at once instead of after the
lease duration.

Defaults are client-go's: lease 15 s, renew deadline 10 s, retry 2 s. A leader killed with SIGKILL is
replaced after at most lease + retry seconds; the controllers of the new leader start from a full list,
and their writes are idempotent (names derived from their owners, adoption of what exists), so a burst
cut in the middle is finished, not duplicated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from turbok.api import status as st
from turbok.api.kinds import LEASE
from turbok.client.api import AsyncApi
from turbok.client.errors import ConnectionFailed

__all__ = ["LeaderElector", "LeaseSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "turbok-operator"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: AsyncApi, identity: str, settings: LeaseSettings) -> None:
        self.api = api
        self.identity = identity
        self.settings = settings
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._seen: tuple[str, float] = ("", 0.0)  # (resourceVersion, when this process saw it change)
        self._lease: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.transitions = 0

    async def acquire(self) -> None:
        """Wait until this candidate leads; then keep renewing in the background."""
        while not await self._try():
            await asyncio.sleep(self.settings.retry_period)
        log.info("%s leads (Lease %s/%s)", self.identity, self.settings.namespace, self.settings.name)
        self.leading.set()
        self._task = asyncio.create_task(self._renew(), name="lease renewal")

    async def _renew(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.retry_period)
            if await self._try():
                last = time.monotonic()
            elif time.monotonic() - last > self.settings.renew_deadline or not self._holds():
                log.error("%s lost the Lease %s/%s", self.identity, self.settings.namespace, self.settings.name)
                self.leading.clear()
                self.lost.set()
                return

    def _holds(self) -> bool:
        spec = (self._lease or {}).get("spec") or {}
        return isinstance(spec, dict) and spec.get("holderIdentity") == self.identity

    async def _try(self) -> bool:
        s = self.settings
        try:
            lease = await self.api.get(LEASE, s.namespace, s.name)
        except st.NotFound:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": s.name, "namespace": s.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(s.lease_duration),
                             "acquireTime": _now(), "renewTime": _now(), "leaseTransitions": 0}}
            try:
                self._lease = await self.api.create(LEASE, body)
            except (st.AlreadyExists, st.Conflict):
                return False
            except (ConnectionFailed, st.ApiError) as e:
                log.warning("cannot create the Lease: %s", e)
                return False
            return True
        except (ConnectionFailed, st.ApiError) as e:
            log.warning("cannot read the Lease: %s", e)
            return False
        self._lease = lease
        spec = lease.setdefault("spec", {})
        rv = str(lease["metadata"].get("resourceVersion"))
        now = time.monotonic()
        if rv != self._seen[0]:
            self._seen = (rv, now)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        if holder and holder != self.identity and now - self._seen[1] < duration:
            return False  # someone else holds it and renewed it within the lease duration
        if holder != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = _now()
            self.transitions = spec["leaseTransitions"]
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(s.lease_duration)
        spec["renewTime"] = _now()
        try:
            self._lease = await self.api.replace(LEASE, lease)
        except st.Conflict:
            return False
        except (ConnectionFailed, st.ApiError) as e:
            log.warning("cannot renew the Lease: %s", e)
            return False
        self._seen = (str(self._lease["metadata"].get("resourceVersion")), time.monotonic())
        return True

    async def release(self) -> None:
        """Stop renewing and hand the Lease back (a standby takes it at its next try)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if not self.leading.is_set() or self._lease is None:
            return
        self.leading.clear()
        lease = dict(self._lease)
        spec = dict(lease.get("spec") or {})
        spec.update({"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _now()})
        lease["spec"] = spec
        try:
            await self.api.replace(LEASE, lease)
        except (ConnectionFailed, st.ApiError) as e:
            log.warning("could not release the Lease: %s", e)
