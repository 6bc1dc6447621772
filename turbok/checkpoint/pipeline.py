"""The agent's background work on a part: hash, disk, peers, object store, retention.

``submit(manifest)`` queues a part that is in the memory tier. ``_drain``
hashes its shards (BLAKE3, and the XXH3 checks of manifest.py) while the disk
tier writes the same mapping (two passes over tmpfs in parallel: hashing is
CPU-bound, O_DIRECT is DMA), commits in memory, then on disk once both the
write's fsync and the hashes are done, pushes replicas to the peers placement.py picks, queues the
backup, and applies retention. Each outcome is recorded per (part, tier) so
``wait`` (the library's ``CheckpointManager.wait``) can block until a given
tier holds the step, and ``errors()`` reports the last failure per tier.

Backups run on their own worker: an unreachable object store costs retries
with exponential backoff (obstore's within one attempt, ours between
attempts, capped at ``backup_retry_max_s``) and never delays saves, drains or
other tiers. Called only by agent.py.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.manifest import Manifest, PartKey, check_shards, hash_shards
from turbok.checkpoint.placement import choose_peers
from turbok.checkpoint.restore import Catalog
from turbok.checkpoint.retention import Retention, plan_deletions

if TYPE_CHECKING:
    from turbok.checkpoint.agent import Agent

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)
_DONE = "done"
_KEEP_PROGRESS = 4096


class Pipeline:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.drains = ThreadPoolExecutor(max_workers=4, thread_name_prefix="checkpoint-drain")
        self.io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="checkpoint-io")
        self.progress: OrderedDict[PartKey, dict[str, str]] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._backups: list[tuple[float, int, PartKey, int]] = []
        self._seq = 0
        self._last_backup: dict[str, float] = {}
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.unhashed: set[PartKey] = set()  # staged parts not yet committed in memory

    def start(self) -> None:
        self._worker = threading.Thread(target=self._backup_loop, name="checkpoint-backup", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self.agent.notify()
        self.drains.shutdown(wait=True, cancel_futures=True)
        self.io.shutdown(wait=True, cancel_futures=True)
        if self._worker is not None:
            self._worker.join(timeout=5)

    # -- progress -------------------------------------------------------------------------------
    def _mark(self, key: PartKey, tier: str, outcome: str) -> None:
        with self.agent.cond:
            if tier == "memory":
                self.unhashed.discard(key)
            self.progress.setdefault(key, {})[tier] = outcome
            self.progress.move_to_end(key)
            while len(self.progress) > _KEEP_PROGRESS:
                self.progress.popitem(last=False)
            if outcome == _DONE or outcome.startswith("skipped"):
                self._errors.pop(tier, None)
            else:
                self._errors[tier] = f"{key}: {outcome}"
            self.agent.cond.notify_all()

    def errors(self) -> dict[str, str]:
        with self.agent.cond:
            return dict(self._errors)

    def settle(self, job: str, timeout: float) -> None:
        """Wait until every staged part of ``job`` is committed in memory (or failed)."""
        deadline = time.monotonic() + timeout
        with self.agent.cond:
            while any(k.job == job for k in self.unhashed) and time.monotonic() < deadline:
                self.agent.cond.wait(0.1)

    def wait(self, key: PartKey, tier: str, timeout: float) -> dict[str, Any]:
        """Block until ``tier`` ("memory", "disk", "peers", "object") is done with ``key``."""
        deadline = time.monotonic() + timeout
        with self.agent.cond:
            while True:
                outcome = self.progress.get(key, {}).get(tier)
                if outcome is None and tier in ("memory", "disk"):
                    local = self.agent.memory if tier == "memory" else self.agent.disk
                    if local.exists(key):
                        outcome = _DONE
                if outcome is not None and not outcome.startswith("retrying"):
                    if outcome == _DONE or outcome.startswith("skipped"):
                        return {"tier": tier, "outcome": outcome}
                    raise CheckpointError(f"{key} on {tier}: {outcome}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckpointError(f"{key} not on {tier} after {timeout:.0f}s ({outcome or 'pending'})")
                self.agent.cond.wait(min(left, 0.5))

    # -- drain ----------------------------------------------------------------------------------
    def submit(self, manifest: Manifest, *, hashed: bool, replicate: bool = True, backup: bool = True) -> None:
        with self.agent.cond:
            self.agent.pinned[manifest.key] = time.monotonic() + 3600
            if not hashed:
                self.unhashed.add(manifest.key)
        self.drains.submit(self._drain, manifest, hashed, replicate, backup)

    def _drain(self, manifest: Manifest, hashed: bool, replicate: bool, backup: bool) -> None:
        a, key = self.agent, manifest.key
        try:
            view = a.memory.view(key, manifest.data_size)
            disk: Future[None] | None = None
            if not a.disk.exists(key):
                disk = self.io.submit(self._write_disk, key, view)
            if not hashed:
                a.fault("memory.before_commit")
                t0 = time.perf_counter()
                manifest = manifest.with_hashes(hash_shards(view, manifest.shards), check_shards(view, manifest.shards))
                a.memory.commit(manifest)
                a.metrics.moved("memory", "hash", manifest.data_size, time.perf_counter() - t0)
                a.metrics.committed("memory", key.job, key.step)
            self._mark(key, "memory", _DONE)
            if disk is not None:
                try:
                    disk.result()
                    a.fault("disk.before_commit")
                    a.disk.commit(manifest)
                    a.metrics.committed("disk", key.job, key.step)
                    self._mark(key, "disk", _DONE)
                except (OSError, CheckpointError) as e:
                    a.metrics.failed("disk", "write")
                    log.error("checkpoint agent: disk tier failed for %s: %s", key, e)
                    self._mark(key, "disk", f"failed: {e}")
            else:
                self._mark(key, "disk", _DONE)
            if replicate:
                self._replicate(manifest, view)
            a.unpin(key)
            if backup:
                if a.object is not None and self._should_backup(manifest):
                    self._queue_backup(key, 0, 0.0)
                else:
                    self._mark(key, "object", "skipped: not a backup step" if a.object is not None else "skipped: no object store")
            self._retention(key.job)
        except Exception as e:
            log.exception("checkpoint agent: draining %s failed", key)
            for tier in ("memory", "disk", "peers", "object"):
                if tier not in self.progress.get(key, {}):
                    self._mark(key, tier, f"failed: {e}")
        finally:
            a.unpin(key)
            a.metrics.memory_used.set(a.memory.used())

    def _write_disk(self, key: PartKey, view: memoryview) -> None:
        t0 = time.perf_counter()
        self.agent.disk.put(key, view)
        self.agent.metrics.moved("disk", "write", view.nbytes, time.perf_counter() - t0)

    def _replicate(self, manifest: Manifest, view: memoryview) -> None:
        a, key = self.agent, manifest.key
        targets = choose_peers(key.job, key.rank, a.settings.peers, a.settings.replication_factor, self_address=a.settings.self_address)
        if not targets:
            self._mark(key, "peers", "skipped: no peers" if a.settings.replication_factor else "skipped: replicationFactor is 0")
            return

        def push(address: str) -> str:
            peer = a.peer(address)
            t0 = time.perf_counter()
            try:
                peer.replicate(manifest, view)
            except CheckpointError as e:
                a.metrics.failed(peer.name, "replicate")
                log.warning("checkpoint agent: replicating %s to %s failed: %s", key, address, e)
                return f"{address}: {e}"
            a.metrics.moved(peer.name, "replicate", manifest.data_size, time.perf_counter() - t0)
            return ""

        failures = [f for f in self.io.map(push, targets) if f]
        self._mark(key, "peers", _DONE if not failures else "failed: " + "; ".join(failures))

    # -- backup ---------------------------------------------------------------------------------
    def _should_backup(self, manifest: Manifest) -> bool:
        s, key = self.agent.settings, manifest.key
        if not s.backup_every_steps and not s.backup_interval_s:
            return True
        if s.backup_every_steps and key.step % s.backup_every_steps == 0:
            self._last_backup[key.job] = time.monotonic()
            return True
        last = self._last_backup.get(key.job)
        if s.backup_interval_s and (last is None or time.monotonic() - last >= s.backup_interval_s):
            self._last_backup[key.job] = time.monotonic()
            return True
        return False

    def _queue_backup(self, key: PartKey, attempt: int, delay: float) -> None:
        with self.agent.cond:
            self._seq += 1
            heapq.heappush(self._backups, (time.monotonic() + delay, self._seq, key, attempt))
            self.agent.cond.notify_all()

    def _backup_loop(self) -> None:
        cond = self.agent.cond
        while not self._stop.is_set():
            with cond:
                if not self._backups or self._backups[0][0] > time.monotonic():
                    wait = self._backups[0][0] - time.monotonic() if self._backups else 1.0
                    cond.wait(max(0.01, min(wait, 1.0)))
                    continue
                _, _, key, attempt = heapq.heappop(self._backups)
            self._backup(key, attempt)

    def _backup(self, key: PartKey, attempt: int) -> None:
        a = self.agent
        assert a.object is not None
        source: memoryview | Path
        manifest = a.disk.committed_manifest(key)
        if manifest is not None:
            source = a.disk.data_path(key)
        else:
            manifest = a.memory.committed_manifest(key)
            if manifest is None:
                self._mark(key, "object", "failed: the step left the local tiers before it could be backed up")
                return
            source = a.memory.view(key, manifest.data_size)
        t0 = time.perf_counter()
        try:
            a.object.put(key, source)
            a.object.commit(manifest)
        except CheckpointError as e:
            a.metrics.failed("object", "backup")
            delay = min(2.0**attempt, a.settings.backup_retry_max_s)
            log.warning("checkpoint agent: backup of %s failed (attempt %d), retrying in %.0fs: %s", key, attempt + 1, delay, e)
            self._mark(key, "object", f"retrying: {e}")
            self._queue_backup(key, attempt + 1, delay)
            return
        a.metrics.moved("object", "backup", manifest.data_size, time.perf_counter() - t0)
        a.metrics.committed("object", key.job, key.step)
        self._mark(key, "object", _DONE)
        try:
            self._object_retention(key.job)
        except CheckpointError as e:
            log.warning("checkpoint agent: object-store retention for %s failed: %s", key.job, e)

    # -- retention ------------------------------------------------------------------------------
    def _retention(self, job: str) -> None:
        a = self.agent
        newest = Catalog(job, [a.memory, a.disk, *[a.peer(p) for p in a.settings.peers if p != a.settings.self_address]]).newest_complete()
        now = time.monotonic()
        with a.cond:
            busy = {k for k, t in a.pinned.items() if t > now} | a.filling | set(a.receiving)
        for tier, keep in ((a.memory, a.settings.keep_memory), (a.disk, a.settings.keep_disk)):
            committed = [s.key for s in tier.list(job) if s.committed]
            doomed = set(plan_deletions([k.step for k in committed], Retention(keep), newest_complete=newest))
            for k in committed:
                if k.step in doomed and k not in busy:
                    tier.delete(k)
        a.metrics.memory_used.set(a.memory.used())

    def _object_retention(self, job: str) -> None:
        obj = self.agent.object
        assert obj is not None
        catalog = Catalog(job, [obj])
        s = self.agent.settings
        policy = Retention(s.keep_object_last, s.keep_object_every)
        doomed = set(plan_deletions(list(catalog.steps()), policy, newest_complete=catalog.newest_complete()))
        for _, state in catalog.states:
            if state.key.step in doomed and state.committed:
                obj.delete(state.key)
