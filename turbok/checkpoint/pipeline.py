"""The agent's background work on a part: hash, disk, peers, object store, retention.

``submit(manifest)`` queues a part that is in the memory tier. ``_drain``
hashes its shards (BLAKE3, the XXH3 checks and block checks of manifest.py)
while the disk tier writes the same mapping (two passes over tmpfs in
parallel: hashing is CPU-bound, O_DIRECT is DMA), commits in memory, then on
disk once both the write's fsync and the hashes are done, pushes replicas to
the peers placement.py picks, queues the backup, and applies retention. A
disk write that fails is retried (``_DISK_ATTEMPTS`` times, with a short
pause) before the disk tier is marked failed for that part; every failure is
an event and a ``failures_total`` count. Each outcome is recorded per (part,
tier) so ``wait`` (the library's ``SaveFuture`` and ``CheckpointManager.wait``)
can block until a tier holds the step, and ``errors()`` reports the last
failure per tier.

A part the pipeline never heard of and no tier holds is answered "lost" by
``wait`` (with the reason from the event log when the agent recorded one),
never waited on: that is how a library learns that the agent restarted
between ``staged`` and the memory commit and the bytes were gone.

Backups run on their own worker: an unreachable object store costs retries
with exponential backoff (obstore's within one attempt, ours between
attempts, capped at ``backup_retry_max_s``) and never delays saves, drains or
other tiers. Fault injection stages: ``memory.before_commit``,
``disk.before_commit``, ``object.before_commit``. Called by the agent's roles.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from turbok.checkpoint.context import AgentContext, QuotaError
from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.leases import Pin
from turbok.checkpoint.manifest import Manifest, PartKey, checks_and_blocks, hash_shards
from turbok.checkpoint.placement import choose_peers
from turbok.checkpoint.restore import Catalog
from turbok.checkpoint.retention import Retention, plan_deletions

__all__ = ["TIERS", "Pipeline"]

log = logging.getLogger(__name__)
_DONE = "done"
_KEEP_PROGRESS = 4096
_DISK_ATTEMPTS = 3
#: the tiers a part goes through, in order
TIERS = ("memory", "disk", "peers", "object")


class Pipeline:
    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
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
        self.draining: Counter[PartKey] = Counter()  # drains submitted and not yet ended

    def start(self) -> None:
        self._worker = threading.Thread(target=self._backup_loop, name="checkpoint-backup", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self.ctx.notify()
        self.drains.shutdown(wait=True, cancel_futures=True)
        self.io.shutdown(wait=True, cancel_futures=True)
        if self._worker is not None:
            self._worker.join(timeout=5)

    # -- progress -------------------------------------------------------------------------------
    def _mark(self, key: PartKey, tier: str, outcome: str) -> None:
        cond = self.ctx.cond
        with cond:
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
            cond.notify_all()

    def errors(self) -> dict[str, str]:
        with self.ctx.cond:
            return dict(self._errors)

    def status(self, key: PartKey) -> dict[str, str]:
        """Every tier's outcome for ``key`` so far ("done", "failed: ...", "retrying: ...", "skipped: ...")."""
        with self.ctx.cond:
            out = dict(self.progress.get(key, {}))
        for tier, local in (("memory", self.ctx.memory), ("disk", self.ctx.disk)):
            if tier not in out and local.exists(key):
                out[tier] = _DONE
        return out

    def settle(self, job: str, timeout: float) -> None:
        """Wait until every staged part of ``job`` is committed in memory (or failed)."""
        deadline = time.monotonic() + timeout
        with self.ctx.cond:
            while any(k.job == job for k in self.unhashed) and time.monotonic() < deadline:
                self.ctx.cond.wait(0.1)

    def quiesce(self, key: PartKey, timeout: float) -> None:
        """Wait until no drain of ``key`` is queued or running: one still writing would put back a copy just deleted."""
        deadline = time.monotonic() + timeout
        with self.ctx.cond:
            while self.draining[key] > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckpointError(f"{key} is still being drained after {timeout:.0f}s; try again")
                self.ctx.cond.wait(min(left, 0.5))

    def _known(self, key: PartKey) -> bool:
        with self.ctx.cond:
            if key in self.progress or key in self.unhashed:
                return True
        c = self.ctx
        return (c.residency.leased(key) or c.residency.receiving(key) is not None or c.memory.exists(key)
                or c.disk.exists(key) or c.memory.staged_manifest(key) is not None)

    def wait(self, key: PartKey, tier: str, timeout: float) -> dict[str, Any]:
        """Block until ``tier`` ("memory", "disk", "peers", "object") is done with ``key``."""
        if tier not in TIERS:
            raise CheckpointError(f"unknown tier {tier!r} (one of {', '.join(TIERS)})")
        if not self._known(key):
            lost = self.ctx.events.about(key, ("Lost", "LeaseReleased", "Interrupted"))
            why = lost["message"] if lost else "this agent has no record of it (it restarted, and the memory tier was emptied?)"
            raise CheckpointError(f"{key} was lost: {why}")
        deadline = time.monotonic() + timeout
        with self.ctx.cond:
            while True:
                outcome = self.status(key).get(tier)
                if outcome is not None and not outcome.startswith("retrying"):
                    if outcome == _DONE or outcome.startswith("skipped"):
                        return {"tier": tier, "outcome": outcome, "tiers": self.status(key)}
                    raise CheckpointError(f"{key} on {tier}: {outcome}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckpointError(f"{key} not on {tier} after {timeout:.0f}s ({outcome or 'pending'})")
                self.ctx.cond.wait(min(left, 0.5))

    # -- drain ----------------------------------------------------------------------------------
    def submit(self, manifest: Manifest, *, hashed: bool, replicate: bool = True, backup: bool = True) -> None:
        key = manifest.key
        pin = self.ctx.residency.pin(key)
        fresh = not hashed  # a newly staged part supersedes any older copy of the same key
        redo = [t for t, again in (("memory", fresh), ("disk", fresh or not self.ctx.disk.exists(key)),
                                   ("peers", replicate), ("object", backup)) if again]
        with self.ctx.cond:
            if not hashed:
                self.unhashed.add(key)
            for tier in redo:  # a part drained again (healed, overwritten) reports afresh
                self.progress.get(key, {}).pop(tier, None)
            self.draining[key] += 1
        self.drains.submit(self._drain, manifest, pin, hashed, replicate, backup)

    def _drain(self, manifest: Manifest, pin: Pin, hashed: bool, replicate: bool, backup: bool) -> None:
        c, key = self.ctx, manifest.key
        try:
            view = c.memory.view(key, manifest.data_size)
            disk: Future[None] | None = None
            if not hashed or not c.disk.exists(key):  # a new save of an existing step overwrites it
                disk = self.io.submit(self._write_disk, key, view)
            if not hashed:
                c.fault("memory.before_commit", key)
                t0 = time.perf_counter()
                checks, blocks = checks_and_blocks(view, manifest.shards)
                manifest = manifest.with_hashes(hash_shards(view, manifest.shards), checks, blocks)
                c.memory.commit(manifest)
                c.metrics.moved("memory", "hash", manifest.data_size, time.perf_counter() - t0)
                c.metrics.committed("memory", key.job, key.step)
            self._mark(key, "memory", _DONE)
            if disk is not None:
                try:
                    disk.result()
                    c.fault("disk.before_commit", key)
                    c.disk.commit(manifest)
                    c.metrics.committed("disk", key.job, key.step)
                    self._mark(key, "disk", _DONE)
                except QuotaError as e:
                    c.metrics.failed("disk", "quota")
                    c.events.record("DiskQuota", f"{key} not written to disk: {e}", key, tier="disk")
                    self._mark(key, "disk", f"failed: {e}")
                except (OSError, CheckpointError) as e:
                    c.metrics.failed("disk", "write")
                    c.events.record("DiskWriteFailed", f"{key}: {e}", key, tier="disk")
                    self._mark(key, "disk", f"failed: {e}")
            else:
                self._mark(key, "disk", _DONE)
            if replicate:
                self._replicate(manifest, view)
            if backup:
                if c.object is not None and self._should_backup(manifest):
                    self._queue_backup(key, 0, 0.0)
                else:
                    self._mark(key, "object", "skipped: not a backup step" if c.object is not None else "skipped: no object store")
            pin.release()
            self._retention(key.job)
        except Exception as e:
            log.exception("checkpoint agent: draining %s failed", key)
            c.events.record("DrainFailed", f"{key}: {e}", key)
            for tier in TIERS:
                if tier not in self.progress.get(key, {}):
                    self._mark(key, tier, f"failed: {e}")
        finally:
            pin.release()
            with c.cond:
                self.unhashed.discard(key)
                self.draining[key] -= 1
                if self.draining[key] <= 0:
                    del self.draining[key]
                c.cond.notify_all()
            c.metrics.memory_used.set(c.memory.used())

    def _write_disk(self, key: PartKey, view: memoryview) -> None:
        self.ctx.fault("disk.before_write", key)
        self.ctx.disk_room(key, view.nbytes)
        for attempt in range(_DISK_ATTEMPTS):
            t0 = time.perf_counter()
            try:
                self.ctx.disk.put(key, view)
            except OSError as e:
                if attempt + 1 == _DISK_ATTEMPTS:
                    raise
                log.warning("checkpoint agent: disk write of %s failed (attempt %d), retrying: %s", key, attempt + 1, e)
                self.ctx.metrics.failed("disk", "write")
                time.sleep(0.1 * 2**attempt)
                continue
            self.ctx.metrics.moved("disk", "write", view.nbytes, time.perf_counter() - t0)
            return

    def _replicate(self, manifest: Manifest, view: memoryview) -> None:
        c, key = self.ctx, manifest.key
        targets = choose_peers(key.job, key.rank, c.peer_addresses(), c.settings.replication_factor, self_address=c.address)
        if not targets:
            self._mark(key, "peers", "skipped: no peers" if c.settings.replication_factor else "skipped: replicationFactor is 0")
            return

        def push(address: str) -> str:
            peer = c.peer(address)
            t0 = time.perf_counter()
            try:
                peer.replicate(manifest, view)
            except CheckpointError as e:
                c.metrics.failed(peer.name, "replicate")
                log.warning("checkpoint agent: replicating %s to %s failed: %s", key, address, e)
                return f"{address}: {e}"
            c.metrics.moved(peer.name, "replicate", manifest.data_size, time.perf_counter() - t0)
            return ""

        failures = [f for f in self.io.map(push, targets) if f]
        self._mark(key, "peers", _DONE if not failures else "failed: " + "; ".join(failures))

    # -- backup ---------------------------------------------------------------------------------
    def _should_backup(self, manifest: Manifest) -> bool:
        s, key = self.ctx.settings, manifest.key
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
        with self.ctx.cond:
            self._seq += 1
            heapq.heappush(self._backups, (time.monotonic() + delay, self._seq, key, attempt))
            self.ctx.cond.notify_all()

    def _backup_loop(self) -> None:
        cond = self.ctx.cond
        while not self._stop.is_set():
            with cond:
                if not self._backups or self._backups[0][0] > time.monotonic():
                    wait = self._backups[0][0] - time.monotonic() if self._backups else 1.0
                    cond.wait(max(0.01, min(wait, 1.0)))
                    continue
                _, _, key, attempt = heapq.heappop(self._backups)
            try:
                self._backup(key, attempt)
            except Exception as e:  # a bug must not end the worker
                log.exception("checkpoint agent: backup of %s failed", key)
                self._mark(key, "object", f"failed: {e}")

    def _backup(self, key: PartKey, attempt: int) -> None:
        c = self.ctx
        assert c.object is not None
        with c.residency.pin(key):
            source: memoryview | Any
            manifest = c.disk.committed_manifest(key)
            if manifest is not None:
                source = c.disk.data_path(key)
            else:
                manifest = c.memory.committed_manifest(key)
                if manifest is None:
                    self._mark(key, "object", "failed: the step left the local tiers before it could be backed up")
                    return
                source = c.memory.view(key, manifest.data_size)
            t0 = time.perf_counter()
            try:
                c.object.put(key, source)
                c.fault("object.before_commit", key)
                c.object.commit(manifest)
            except CheckpointError as e:
                c.metrics.failed("object", "backup")
                delay = min(2.0**attempt, c.settings.backup_retry_max_s)
                log.warning("checkpoint agent: backup of %s failed (attempt %d), retrying in %.0fs: %s", key, attempt + 1, delay, e)
                self._mark(key, "object", f"retrying: {e}")
                self._queue_backup(key, attempt + 1, delay)
                return
        c.metrics.moved("object", "backup", manifest.data_size, time.perf_counter() - t0)
        c.metrics.committed("object", key.job, key.step)
        self._mark(key, "object", _DONE)
        try:
            self._object_retention(key.job)
        except CheckpointError as e:
            log.warning("checkpoint agent: object-store retention for %s failed: %s", key.job, e)

    # -- retention ------------------------------------------------------------------------------
    def _retention(self, job: str) -> None:
        c = self.ctx
        newest = Catalog(job, [c.memory, c.disk, *[c.peer(p) for p in c.peer_addresses()]]).newest_complete()
        busy = c.residency.busy()
        for tier, keep in ((c.memory, c.settings.keep_memory), (c.disk, c.settings.keep_disk)):
            committed = [s.key for s in tier.list(job) if s.committed]
            doomed = set(plan_deletions([k.step for k in committed], Retention(keep), newest_complete=newest))
            for k in committed:
                if k.step in doomed and k not in busy:
                    tier.delete(k)
        c.metrics.memory_used.set(c.memory.used())

    def _object_retention(self, job: str) -> None:
        obj = self.ctx.object
        assert obj is not None
        catalog = Catalog(job, [obj])
        s = self.ctx.settings
        policy = Retention(s.keep_object_last, s.keep_object_every)
        doomed = set(plan_deletions(list(catalog.steps()), policy, newest_complete=catalog.newest_complete()))
        for _, state in catalog.states:
            if state.key.step in doomed and state.committed:
                obj.delete(state.key)
