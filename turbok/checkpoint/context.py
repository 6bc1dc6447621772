"""What every role of a node agent shares: its tiers, residency, metrics, events and peers.

The agent's roles (pipeline.py drains, replica.py receives, restoring.py
restores and heals, server.py speaks the wire protocol) each get one
``AgentContext`` rather than the whole agent, so none of them reaches back
into another's state. It also owns the memory tier's admission rules:

- ``reserve``: room for a part being saved or fetched, evicting only parts
  durable on disk and not busy, this job's own first. With
  ``job_memory_quota`` a job never holds more than its quota and never evicts
  another job's parts; without it, evicting another job's part is allowed but
  never silent (an ``Evicted`` event and ``turbok_checkpoint_evictions_total``).
- ``disk_room``: the disk quota (``disk_quota``), checked before each write.

Called only by the agent's roles; the agent builds it (agent.py).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from turbok.checkpoint.config import Settings
from turbok.checkpoint.errors import CapacityError, CheckpointError, StagingBusyError
from turbok.checkpoint.events import EventLog
from turbok.checkpoint.leases import Residency
from turbok.checkpoint.manifest import PartKey, align_up
from turbok.checkpoint.metrics import Metrics
from turbok.checkpoint.tiers.base import Tier
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier
from turbok.checkpoint.tiers.object import ObjectTier
from turbok.checkpoint.tiers.peer import PeerTier

__all__ = ["AgentContext", "QuotaError"]

log = logging.getLogger(__name__)


class QuotaError(CheckpointError):
    """A write would take a tier over its quota."""


class AgentContext:
    """The shared state of one node agent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.memory = MemoryTier(settings.memory_dir, capacity=settings.memory_size)
        self.disk = DiskTier(settings.disk_dir)
        self.object: ObjectTier | None = None
        if settings.storage_url:
            self.object = ObjectTier(
                settings.storage_url,
                options=settings.storage_options,
                retry_timeout=settings.object_retry_timeout_s,
                max_retries=settings.object_max_retries,
            )
        self.metrics = Metrics()
        self.events = EventLog(Path(settings.disk_dir) / ".events.jsonl")
        self.cond = threading.Condition(threading.RLock())
        self.residency = Residency(self.cond, lease_timeout=settings.lease_timeout_s)
        self._peers: dict[str, PeerTier] = {}

    # -- peers ------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.settings.self_address

    def peer_addresses(self) -> list[str]:
        """The other agents (static ``peers`` or discovered through the API), never this one."""
        with self.cond:
            return [p for p in self.settings.peers if p and p != self.settings.self_address]

    def set_peers(self, peers: list[str]) -> None:
        with self.cond:
            if sorted(peers) != sorted(self.settings.peers):
                log.info("checkpoint agent: peers are now %s", ", ".join(sorted(peers)) or "none")
            self.settings.peers = list(peers)

    def peer(self, address: str) -> PeerTier:
        with self.cond:
            if address not in self._peers:
                self._peers[address] = PeerTier(address, token=self.settings.token)
            return self._peers[address]

    def remote_tiers(self) -> list[Tier]:
        tiers: list[Tier] = [self.peer(p) for p in self.peer_addresses()]
        if self.object is not None:
            tiers.append(self.object)
        return tiers

    def all_tiers(self) -> list[Tier]:
        return [self.memory, self.disk, *self.remote_tiers()]

    def close(self) -> None:
        with self.cond:
            peers = list(self._peers.values())
        for p in peers:
            p.close()
        self.memory.close()

    # -- fault injection (tests) ------------------------------------------------------------------
    def fault(self, stage: str, key: PartKey | None = None) -> None:
        """Sleep at ``stage`` if the settings say so (``stage`` or ``stage@STEP``)."""
        delays = self.settings.fault_delays
        delay = delays.get(stage) or (delays.get(f"{stage}@{key.step}") if key is not None else None)
        if delay:
            log.warning("checkpoint agent: fault injection: sleeping %.1fs at %s (%s)", delay, stage, key)
            time.sleep(delay)

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    # -- memory admission -------------------------------------------------------------------------
    def evictable(self, job: str) -> tuple[list[PartKey], list[PartKey]]:
        """Memory parts that may be dropped for room: committed, durable on disk, not busy;
        (``job``'s own, other jobs'), oldest first."""
        busy = self.residency.busy()
        keys = [s.key for s in self.memory.list() if s.committed and s.key not in busy and self.disk.exists(s.key)]
        keys.sort(key=lambda k: (k.step, k.job, k.rank))
        return [k for k in keys if k.job == job], [k for k in keys if k.job != job]

    def reserve(self, key: PartKey, size: int, timeout: float) -> Path:
        """Room in the memory tier for ``key``, waiting for drains up to ``timeout``."""
        need = align_up(size)
        quota = self.settings.job_memory_quota
        if quota and need > quota:
            raise CapacityError(
                f"memory tier: {key} needs {need} bytes but job {key.job!r} may hold {quota} "
                "(jobMemoryQuota); raise the quota (the previous checkpoints are untouched)")
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                own, others = self.evictable(key.job)
                try:
                    if quota:
                        self._fit_quota(key, need, own)
                        own, others = self.evictable(key.job)
                        others = []  # with quotas, a job never evicts another's parts
                    path = self.memory.reserve(key, size, own + others, on_evict=lambda k: self._evicted(k, key))
                    self.metrics.memory_used.set(self.memory.used())
                    return path
                except StagingBusyError as e:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StagingBusyError(
                            f"memory tier: no room for {key} after {timeout:.0f}s ({e}); save less often, "
                            "raise inMemoryVolumeSize (or jobMemoryQuota), or speed up the disk"
                        ) from None
                    self.cond.wait(min(left, 0.2))

    def _fit_quota(self, key: PartKey, need: int, own: list[PartKey]) -> None:
        quota = self.settings.job_memory_quota
        mine = self.memory.used_by(key.job)
        current = self.memory.data_path(key)
        if current.exists():
            mine -= current.stat().st_size  # the part's own previous buffer is replaced
        victims = list(own)
        while mine + need > quota:
            if not victims:
                raise StagingBusyError(f"job {key.job!r} holds {mine} bytes of its {quota}-byte quota in parts not yet durable")
            victim = victims.pop(0)
            size = self.memory.data_path(victim).stat().st_size if self.memory.data_path(victim).exists() else 0
            self.memory.delete(victim)
            mine -= size

    def _evicted(self, victim: PartKey, by: PartKey) -> None:
        self.metrics.evictions.labels(victim.job).inc()
        if victim.job != by.job:
            self.events.record("Evicted", f"memory tier: {victim} (durable on disk) evicted for room for {by}; "
                               "set jobMemoryQuota to keep jobs apart", victim, tier="memory")

    # -- disk admission ---------------------------------------------------------------------------
    def disk_room(self, key: PartKey, size: int) -> None:
        """Raise QuotaError when writing ``size`` more bytes would exceed ``disk_quota``."""
        quota = self.settings.disk_quota
        if not quota:
            return
        growth = max(0, size - self.disk.largest_pooled())
        used = self.disk.used()
        if used + growth > quota:
            raise QuotaError(f"disk tier: {key} needs {growth} more bytes; {used} of the {quota}-byte diskQuota are in use")

    def abandon(self, key: PartKey, why: str) -> None:
        """Drop a part whose writer is gone (lease died): its bytes were never complete."""
        if self.memory.committed_manifest(key) is None:
            self.memory.delete(key)
        self.events.record("LeaseReleased", f"{key}: {why}; the half-written part was dropped", key, tier="memory")
        self.metrics.memory_used.set(self.memory.used())
        self.notify()
