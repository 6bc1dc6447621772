"""The library in the training process: ``CheckpointManager``.

Saving, as users of Orbax and ``dcp.async_save`` expect it:

- ``save(step, state, metrics=...)`` returns a ``SaveFuture`` at once: the
  state is laid out (packing.py), small and unguarded leaves are copied, and
  the rest is copied into the memory tier by a background thread while
  training goes on; torch optimizers wait in ``step()`` until that copy is
  done (saving.py says how this stays exact). ``future.result()`` waits for
  the durable tier (``durable``, default "disk"); ``wait_until_finished()``
  for every save in flight. A save that failed raises from its future and,
  if nobody looked, from the next ``save()``.
- ``should_save(step)`` (every ``save_interval_steps``, or when preempted),
  ``install_preemption_handler()`` and ``reached_preemption(step)``: SIGTERM
  marks the job preempted; the next ``save()`` then waits for the durable
  tier before it returns, so the job can exit right after it.
- ``latest_step()``, ``all_steps()``, ``delete(step)``: over every tier, the
  object store included, through the node agent.
- ``retention=JobRetention(...)``: the job's own retention (count, period,
  time, best metric), applied after each durable save by rank
  ``retention_rank``.
- If the node agent is briefly gone, saves are buffered in this process and
  handed over when it is back, for up to ``agent_retry_s`` seconds.

Restoring: ``restore(step=None, into=None, verify=True)`` asks the agent for
the newest step complete for every rank (or ``step``); the agent brings this
rank's part into memory from the fastest copy; the library copies it out
(into ``into``'s tensors and arrays in place when given), checking a memory
copy in the same pass. If the newest step turns out corrupt on every tier,
the agent quarantines it and an unpinned restore falls back to the newest
good older step. ``read()`` fetches byte ranges of shards (resharding).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xxhash

from turbok.checkpoint.errors import (
    AgentUnavailableError,
    CheckpointError,
    IntegrityError,
    NotFoundError,
    error_from_wire,
)
from turbok.checkpoint.manifest import BLOCK, Manifest, PartKey, shard_matches
from turbok.checkpoint.packing import Unpacker, plan, unpack, unpack_checked
from turbok.checkpoint.retention import JobRetention, StepInfo, plan_job_deletions
from turbok.checkpoint.saving import (
    SaveFuture,
    SaveResult,
    Snapshot,
    StageJob,
    Stager,
    register_device,
    track,
    wait_copied,
    wait_staged,
)
from turbok.checkpoint.tiers.memory import MappingCache, private_view
from turbok.checkpoint.wire import Client, recv_body, recv_header, recv_into

__all__ = ["DEFAULT_AGENT", "CheckpointManager", "OpenPart", "Restored", "SaveFuture", "SaveResult", "StepStatus"]

log = logging.getLogger(__name__)

DEFAULT_AGENT = "127.0.0.1:7480"
_FALLBACKS = 8  # older steps an unpinned restore tries after finding the newest corrupt everywhere


@dataclass(frozen=True)
class Restored:
    step: int
    state: Any
    manifest: Manifest


class OpenPart:
    """A part mapped from the memory tier (``CheckpointManager.open_part``)."""

    def __init__(self, manifest: Manifest, view: memoryview, verified: bool) -> None:
        self.manifest, self.view, self.verified = manifest, view, verified
        self._good: set[str] = set()

    def bytes_of(self, name: str) -> np.ndarray:
        """The bytes of shard ``name`` as a read-only uint8 array over the mapping (no copy)."""
        shard = self.manifest.shard(name)
        return np.frombuffer(self.view, dtype=np.uint8, count=shard.size, offset=shard.offset)

    def check(self, name: str, data: Any) -> bool:
        """Whether ``data`` (the whole of shard ``name``, or a copy of it) matches the shard's check."""
        if name in self._good:
            return True
        shard = self.manifest.shard(name)
        ok = shard_matches(shard, data, checks=bool(shard.check))
        if ok:
            self._good.add(name)
        return ok


@dataclass(frozen=True)
class StepStatus:
    """One step of the job as the agents see it (``steps()``)."""

    step: int
    complete: bool
    world_size: int
    ranks: dict[int, list[str]]  # rank -> tiers holding a committed copy
    created: float
    metrics: dict[str, float]
    corrupt_ranks: list[int]


def _device_backend(device: Any) -> Any:
    if device is None or device is False:
        return None
    if device != "auto":
        return device
    torch = sys.modules.get("torch")  # never import torch for a job that does not use it
    if torch is not None and torch.cuda.is_available():
        from turbok.checkpoint.device import CudaBackend

        return CudaBackend()
    return None


class CheckpointManager:
    """Save and restore one rank's state through the node agent at ``agent``."""

    def __init__(
        self,
        job: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        agent: str | None = None,
        token: str = "",
        staging_timeout: float = 120.0,
        durable: str = "disk",
        agent_retry_s: float = 60.0,
        retention: JobRetention | None = None,
        retention_rank: int = 0,
        save_interval_steps: int = 1,
        copy: str = "auto",
        device: Any = "auto",
    ) -> None:
        PartKey(job, 0, rank)  # validates the job name
        if not 0 <= rank < world_size:
            raise CheckpointError(f"rank {rank} is outside world size {world_size}")
        if copy not in ("auto", "sync"):
            raise CheckpointError(f"copy={copy!r}: use 'auto' (copy after save() returns, guarded) or 'sync'")
        if durable not in ("memory", "disk", "peers", "object"):
            raise CheckpointError(f"durable={durable!r}: one of memory, disk, peers, object")
        self.job, self.rank, self.world_size = job, rank, world_size
        self.agent = agent or os.environ.get("TURBOK_CHECKPOINT_AGENT") or DEFAULT_AGENT
        self.token = token or os.environ.get("TURBOK_CHECKPOINT_TOKEN", "")
        self.staging_timeout = staging_timeout
        self.durable = durable
        self.agent_retry_s = agent_retry_s
        self.retention = retention
        self.retention_rank = retention_rank
        self.save_interval_steps = max(1, save_interval_steps)
        self.copy = copy
        self.session = uuid.uuid4().hex
        self.client = self._client()
        # Two buffers in use at a time (double buffering) plus slack for buffers the agent recycles.
        self._maps = MappingCache(max_entries=4)
        backend = _device_backend(device)
        self.device: Any = None
        if backend is not None:
            from turbok.checkpoint.device import DeviceStager

            self.device = DeviceStager(backend)
            register_device(self.device)
        self._futures: list[SaveFuture] = []
        self._lock = threading.Lock()
        self._stager: Stager | None = None
        self._waiter: threading.Thread | None = None
        self._durable_jobs: list[StageJob | None] = []
        self._durable_cond = threading.Condition()
        self._preempted = threading.Event()
        self._unreported: list[SaveFuture] = []
        self._closed = False

    def _client(self, timeout: float | None = None) -> Client:
        return Client(self.agent, token=self.token, timeout=timeout or max(self.staging_timeout + 30, 60))

    def _key(self, step: int) -> PartKey:
        return PartKey(self.job, step, self.rank)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, step: int, state: Any, *, metrics: dict[str, float] | None = None, copy: str | None = None,
             force: bool = False) -> SaveFuture:
        """Snapshot ``state`` and return; the copy into memory and the way down run in the background."""
        t0 = time.perf_counter()
        self._raise_unreported()
        key = self._key(step)
        packing = plan(state)
        mode = copy or self.copy
        manifest = packing.manifest(key, self.world_size)
        meta: dict[str, Any] = {"time": time.time()}
        if metrics:
            meta["metrics"] = {k: float(v) for k, v in metrics.items()}
        manifest = replace(manifest, meta=meta)
        future = SaveFuture(step, packing.data_size)
        track(future)
        fields: dict[str, Any] = {"job": key.job, "step": key.step, "rank": key.rank, "session": self.session}
        if mode == "sync":
            self._save_now(future, packing, fields, manifest)
        else:
            snap = Snapshot(step, packing, copy=mode, device=self.device)
            job = StageJob(future, snap, fields, manifest.to_dict())
            if snap.device_leaves:
                self._snapshot_device(job)
            self._stager_for().submit(job)
        future.seconds = time.perf_counter() - t0
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()] + [future]
        if self._preempted.is_set():
            future.result()  # preempted: the job is about to exit, so wait for the durable tier
        return future

    def _save_now(self, future: SaveFuture, packing: Any, fields: dict[str, Any], manifest: Manifest) -> None:
        """``copy="sync"``: acquire, copy and stage before returning (the copy is the stall)."""
        reply = self.client.call("acquire", size=packing.data_size, wait_s=self.staging_timeout, **fields)
        t1 = time.perf_counter()
        try:
            view = self._maps.view(reply["path"], packing.data_size)
            packing.copy_into(view)
            view.release()
        except BaseException:
            self.client.call("abort", **fields)
            raise
        self.client.call("staged", manifest=manifest.to_dict(), session=self.session)
        future.copy_seconds = time.perf_counter() - t1
        future.copied.set()
        self._queue_durable(StageJob(future, Snapshot(future.step, packing, copy="sync"), fields, manifest.to_dict()))

    def _snapshot_device(self, job: StageJob) -> None:
        """Device tensors: the buffer is taken now so the device-to-host copies can be queued now."""
        packing, snap = job.snapshot.packing, job.snapshot
        job.acquired = self.client.call("acquire", size=packing.data_size, wait_s=self.staging_timeout, **job.fields)
        view = self._maps.view(job.acquired["path"], packing.data_size)
        buffer = np.frombuffer(view, dtype=np.uint8)
        copies = [(packing.leaves[i], packing.shards[i].offset, packing.shards[i].size) for i in snap.device_leaves]
        job.device_snapshot = self.device.snapshot(buffer, copies)
        del buffer
        view.release()

    def _stager_for(self) -> Stager:
        with self._lock:
            if self._stager is None:
                self._stager = Stager(client_factory=self._client, maps=self._maps, agent_retry_s=self.agent_retry_s,
                                      staging_timeout=self.staging_timeout, on_staged=self._queue_durable)
            return self._stager

    def _queue_durable(self, job: StageJob) -> None:
        with self._durable_cond:
            if self._waiter is None:
                self._waiter = threading.Thread(target=self._wait_durable, name="checkpoint-durable", daemon=True)
                self._waiter.start()
            self._durable_jobs.append(job)
            self._durable_cond.notify_all()

    def _wait_durable(self) -> None:
        client = self._client(timeout=120)
        try:
            while True:
                with self._durable_cond:
                    while not self._durable_jobs:
                        self._durable_cond.wait()
                    job = self._durable_jobs.pop(0)
                if job is None:
                    return
                try:
                    result = self._durable(client, job)
                except BaseException as e:
                    job.future.set_exception(e)
                    with self._lock:
                        self._unreported.append(job.future)
                    continue
                job.future.set_result(result)
                if self.retention is not None and self.rank == self.retention_rank:
                    try:
                        self.apply_retention()
                    except CheckpointError as e:
                        log.warning("checkpoint: retention of %s failed: %s", self.job, e)
        finally:
            client.close()

    def _durable(self, client: Client, job: StageJob) -> SaveResult:
        f = job.future
        deadline = time.monotonic() + self.agent_retry_s
        while True:
            try:
                reply = client.call("wait", timeout=3600, wait_s=3000, tier=self.durable,
                                    **{k: v for k, v in job.fields.items() if k != "session"})
                break
            except AgentUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the agent restarts: it adopts the staged part, or says it was lost
        tiers = dict(reply.get("tiers") or {})
        f._set_tiers(tiers)
        return SaveResult(f.step, f.bytes, f.seconds, f.copy_seconds, time.perf_counter() - job.started, tiers)

    def _raise_unreported(self) -> None:
        with self._lock:
            failed = [f for f in self._unreported if not f._seen]
            self._unreported = []
        for f in failed:
            exc = f.exception()
            raise CheckpointError(f"the save of step {f.step} failed: {exc}") from exc

    def wait_copied(self, timeout: float | None = None) -> None:
        """Block until every pending snapshot is copied: call before modifying saved tensors in place
        outside ``optimizer.step()``."""
        wait_copied(timeout)

    def wait_until_finished(self, timeout: float | None = None) -> None:
        """Block until every save in flight is on the durable tier; raise the first failure."""
        with self._lock:
            futures = list(self._futures)
        for f in futures:
            f.result(timeout)
        with self._lock:
            self._unreported = [f for f in self._unreported if f not in futures]

    def is_saving_in_progress(self) -> bool:
        with self._lock:
            return any(not f.done() for f in self._futures)

    def wait(self, step: int, tier: str = "disk", timeout: float = 600.0) -> str:
        """Block until ``tier`` ("memory", "disk", "peers", "object") holds ``step``; returns the outcome."""
        key = self._key(step)
        with self._lock:
            pending = [f for f in self._futures if f.step == step]
        for f in pending:
            f.copied.wait(timeout)  # staged first, so the agent knows the step
            if f.done() and f.exception() is not None:
                raise CheckpointError(f"step {step} was not saved: {f.exception()}")
        reply = self.client.call("wait", job=key.job, step=key.step, rank=key.rank, tier=tier, wait_s=timeout, timeout=timeout + 30)
        return str(reply.get("outcome", "done"))

    # -- when to save ---------------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        """Every ``save_interval_steps`` steps, and at once when the job was preempted."""
        return self._preempted.is_set() or step % self.save_interval_steps == 0

    def install_preemption_handler(self, signals: Sequence[int] = (signal.SIGTERM,)) -> None:
        """Mark the job preempted on these signals (the handler only sets a flag: saving from a
        signal handler could catch the state half-way through an update)."""
        for sig in signals:
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                log.warning("checkpoint: signal %d: the next save waits for the %s tier", signum, self.durable)
                self._preempted.set()
                if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
                    previous(signum, frame)

            signal.signal(sig, handler)

    def reached_preemption(self, step: int) -> bool:
        """True once a preemption signal arrived (save, wait, exit)."""
        return self._preempted.is_set()

    # -- the job's steps ------------------------------------------------------------------------
    def steps(self) -> list[StepStatus]:
        """Every step of the job on any tier (this agent's, its peers', the object store's)."""
        wait_staged()  # saves of this process count as soon as they are made
        reply = self.client.call("steps", job=self.job)
        return [
            StepStatus(int(s["step"]), bool(s["complete"]), int(s["worldSize"]),
                       {int(r): list(t) for r, t in s["ranks"].items()}, float(s.get("created", 0.0)),
                       dict((s.get("meta") or {}).get("metrics") or {}), list(s.get("corrupt", [])))
            for s in reply["steps"]
        ]

    def all_steps(self) -> list[int]:
        """Steps complete for every rank, oldest first."""
        return [s.step for s in self.steps() if s.complete]

    def latest_step(self) -> int | None:
        """The newest step complete for every rank on any tier, object store included; None if none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def delete(self, step: int) -> None:
        """Delete ``step`` of every rank on every tier: this agent, its peers and the object store."""
        self.client.call("delete_step", job=self.job, step=step, everywhere=True, timeout=300)

    def apply_retention(self) -> list[int]:
        """Apply ``retention`` now; returns the steps deleted."""
        if self.retention is None:
            return []
        statuses = [s for s in self.steps() if s.complete]
        infos = [StepInfo(s.step, s.created, s.metrics) for s in statuses]
        newest = statuses[-1].step if statuses else None
        doomed = plan_job_deletions(infos, self.retention, newest_complete=newest)
        for step in doomed:
            self.delete(step)
        return doomed

    # -- restoring ------------------------------------------------------------------------------
    def restore(self, step: int | None = None, *, into: Any = None, rank: int | None = None, verify: bool = True) -> Restored:
        """Restore the newest step complete for every rank (or ``step``).

        ``rank``: another rank's part (resharding reads them); default this rank.
        ``verify``: check every shard (the default). When the agent's memory tier holds the
        step, this process checks each shard's XXH3 in the same pass as its copy, and on a
        mismatch asks the agent to verify the copy with BLAKE3 and repair it from another
        tier, then copies again. ``verify=False`` trusts a committed memory copy: the
        restore is then one memcpy. Copies fetched from disk, peers or the object store are
        verified by the agent as they land, whatever ``verify`` says. Without ``step``, a
        newest step that is corrupt on every tier is skipped for the newest good older one.
        """
        rank = self.rank if rank is None else rank
        wait_staged()  # a step saved just now counts
        corrupt: IntegrityError | None = None
        for attempt in range(_FALLBACKS + 1):
            try:
                return self._restore(step, into, rank, verify)
            except IntegrityError as e:
                if step is not None or attempt == _FALLBACKS:
                    raise
                corrupt = corrupt or e
                log.warning("checkpoint: %s; falling back to an older step", e)
            except NotFoundError:
                if corrupt is not None:  # no good older step: the corruption is the news
                    raise corrupt from None
                raise
        raise AssertionError("unreachable")

    def _restore(self, step: int | None, into: Any, rank: int, verify: bool) -> Restored:
        # A memory copy is not verified by the agent for us: we check it while copying (below).
        # A part the agent must fetch (disk, peer, object) streams: see _streamed.
        with self.client.lock:
            reply = self.client.request("restore", job=self.job, rank=rank, step=step, verify=False, stream=True)
            if reply.get("stream"):
                try:
                    restored = self._streamed(reply, into)
                except BaseException:
                    self.client.close()  # frames may be left unread: start afresh (and the pin goes with it)
                    raise
                self._release(int(reply["manifest"]["step"]), rank)
                return restored
            if reply.get("size"):
                recv_body(self.client.sock, int(reply["size"]))
        try:
            manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
            if verify and not reply.get("verified") and not manifest.checked:
                # No XXH3 checks to copy against: let the agent verify (BLAKE3) and repair first.
                reply = self.client.call("restore", job=self.job, rank=rank, step=manifest.key.step, verify=True)
                manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
            view = self._maps.view(reply["path"], manifest.data_size)
            state, bad = unpack_checked(view, manifest, into, check=verify and not reply.get("verified"), device=self.device)
            if bad:
                # A corrupt memory copy: the agent verifies it, repairs it from another tier, and we copy again.
                view.release()
                reply = self.client.call("restore", job=self.job, rank=rank, step=manifest.key.step, verify=True)
                manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
                view = self._maps.view(reply["path"], manifest.data_size)
                state = unpack(view, manifest, into, device=self.device)
            view.release()
        finally:
            self._release(int(reply["manifest"]["step"]), rank)
        return Restored(manifest.key.step, state, manifest)

    def _release(self, step: int, rank: int) -> None:
        with contextlib.suppress(AgentUnavailableError):
            self.client.call("release", job=self.job, step=step, rank=rank)

    def _streamed(self, reply: dict[str, Any], into: Any) -> Restored:
        """Copy shards out while the agent still reads the part: it reports how many bytes are in
        (``upto``), checks every shard as it lands, and ends with the shards it had to repair,
        which are copied again. Called with the client's lock held."""
        manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
        view = self._maps.view(reply["path"], manifest.data_size)
        unpacker = Unpacker(view, manifest, into, device=self.device)
        pending = sorted(range(len(manifest.shards)), key=lambda i: manifest.shards[i].offset + manifest.shards[i].size)
        while True:
            frame = recv_header(self.client.sock)
            if frame is None:
                raise AgentUnavailableError(f"checkpoint agent at {self.agent} closed the connection during a restore")
            if not frame.get("ok"):
                raise error_from_wire(str(frame.get("error", "")), str(frame.get("message", "agent error")))
            upto = manifest.data_size if frame.get("done") else int(frame.get("upto", 0))
            ready = 0
            while ready < len(pending) and manifest.shards[pending[ready]].offset + manifest.shards[pending[ready]].size <= upto:
                ready += 1
            if ready:
                unpacker.copy(pending[:ready])
                pending = pending[ready:]
            if frame.get("done"):
                unpacker.copy([int(i) for i in frame.get("repaired", [])])
                break
        state = unpacker.state()
        view.release()
        return Restored(manifest.key.step, state, manifest)

    @contextlib.contextmanager
    def open_part(self, step: int | None = None, *, rank: int | None = None, repair: bool = False,
                  lend: bool = False) -> Iterator[OpenPart]:
        """``rank``'s part of ``step`` (default: newest complete, with the corrupt-step fallback of
        ``restore``) mapped from the memory tier and pinned until the block ends.

        ``verified`` says whether the agent checked the bytes (it always does for a copy it
        fetched); if not, check the shards you use (``OpenPart.check``) and on a mismatch open
        it again with ``repair=True`` (the agent verifies and repairs the memory copy).

        ``lend``: the part is mapped privately (copy on write) and the agent never rewrites or reuses
        its file, so arrays over ``bytes_of`` may outlive the block as the job's own memory: a restore
        without a copy or any new memory to touch (the mapping goes when the last of them does).
        """
        rank = self.rank if rank is None else rank
        wait_staged()
        corrupt: IntegrityError | None = None
        for attempt in range(_FALLBACKS + 1):
            try:
                reply = self.client.call("restore", job=self.job, rank=rank, step=step, verify=repair, lend=lend)
                break
            except IntegrityError as e:
                if step is not None or attempt == _FALLBACKS:
                    raise
                corrupt = corrupt or e
            except NotFoundError:
                if corrupt is not None:
                    raise corrupt from None
                raise
        manifest = Manifest.from_dict(reply["manifest"], where="restored manifest")
        view = private_view(reply["path"], manifest.data_size) if lend else self._maps.view(reply["path"], manifest.data_size)
        try:
            yield OpenPart(manifest, view, bool(reply.get("verified")))
        finally:
            if not lend:  # a lent mapping stays while arrays over it do
                view.release()
            self._release(manifest.key.step, rank)

    def part_is_good(self, step: int, *, rank: int | None = None) -> bool:
        """Whether ``rank``'s part of ``step`` has a good copy: brought into memory and every shard
        checked (a memory copy the agent did not check is checked here). A part no copy of which
        is good is quarantined by the agent, so the next ``latest_step()`` is older. Raises
        ``NotFoundError`` when the part exists nowhere."""
        for repair in (False, True):
            try:
                with self.open_part(step, rank=rank, repair=repair) as part:
                    if part.verified or all(part.check(s.name, part.bytes_of(s.name)) for s in part.manifest.shards):
                        return True
            except IntegrityError:
                return False
        return False

    def read_shard(self, step: int, rank: int, name: str) -> bytes:
        """The whole of one shard of ``rank``'s part of ``step``, checked (e.g. DCP's metadata)."""
        with self.client.lock:
            reply = self.client.request("read", job=self.job, step=step, rank=rank, ranges=[[name, 0, -1]])
            manifest = Manifest.from_dict(reply["manifest"], where="read manifest")
            if not reply.get("local"):
                try:
                    return recv_body(self.client.sock, int(reply.get("size", 0)))
                except BaseException:
                    self.client.close()
                    raise
        size = manifest.shard(name).size
        out = bytearray(size)
        try:
            view = self._maps.view(reply["path"], manifest.data_size)
            ok = _copy_ranges(view, manifest, [(name, 0, size, memoryview(out))], True)
            view.release()
        finally:
            self._release(step, rank)
        if not ok:
            self.client.call("restore", job=self.job, rank=rank, step=step, verify=True)
            self._release(step, rank)
            return self.read_shard(step, rank, name)
        return bytes(out)

    def read(self, step: int, rank: int, requests: Sequence[tuple[str, int, int, memoryview]], *,
             verify: bool = True) -> Manifest:
        """Fill each ``dest`` with bytes ``[start, end)`` of shard ``name`` of ``rank``'s part of ``step``.

        Only the blocks covering the ranges are read (and checked); from a local memory copy
        this process reads them itself. Returns the part's manifest.
        """
        ranges = [[name, start, end] for name, start, end, _ in requests]
        for attempt in (0, 1):
            with self.client.lock:
                reply = self.client.request("read", job=self.job, step=step, rank=rank, ranges=ranges)
                manifest = Manifest.from_dict(reply["manifest"], where="read manifest")
                if not reply.get("local"):
                    try:
                        for _, start, end, dest in requests:
                            recv_into(self.client.sock, dest.cast("B")[: end - start])
                    except BaseException:
                        self.client.close()
                        raise
                    return manifest
            try:
                view = self._maps.view(reply["path"], manifest.data_size)
                ok = _copy_ranges(view, manifest, requests, verify)
                view.release()
            finally:
                self._release(step, rank)
            if ok:
                return manifest
            if attempt == 0:  # a corrupt memory copy: the agent verifies and repairs it, then again
                self.client.call("restore", job=self.job, rank=rank, step=step, verify=True)
                self._release(step, rank)
        raise IntegrityError(f"{PartKey(self.job, step, rank)}: the memory copy stays corrupt after a repair")

    # -- the rest -------------------------------------------------------------------------------
    def metrics(self) -> str:
        with self.client.lock:
            reply = self.client.request("metrics")
            return recv_body(self.client.sock, int(reply.get("size", 0))).decode()

    def events(self) -> list[dict[str, Any]]:
        """The agent's events about this job (leases released, repairs, quarantines, losses)."""
        return list(self.client.call("events", job=self.job)["events"])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            stager = self._stager
        if stager is not None:
            stager.close()
        with self._durable_cond:
            if self._waiter is not None:
                self._durable_jobs.append(None)
                self._durable_cond.notify_all()
        if self._waiter is not None:
            self._waiter.join(timeout=60)
        self.client.close()
        self._maps.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_ranges(view: memoryview, manifest: Manifest, requests: Sequence[tuple[str, int, int, memoryview]],
                 verify: bool) -> bool:
    """Copy ranges out of a local copy, checking the blocks (or shards) covering them; False if any fails."""
    blob = np.frombuffer(view, dtype=np.uint8)
    for name, start, end, dest in requests:
        shard = manifest.shard(name)
        if verify:
            if shard.blocks:
                lo, hi = shard.block_span(start, end)
                for off in range(lo, hi, BLOCK):
                    piece = view[shard.offset + off : shard.offset + min(off + BLOCK, shard.size)]
                    if xxhash.xxh3_64_hexdigest(piece) != shard.blocks[off // BLOCK]:
                        return False
            elif not shard_matches(shard, view[shard.offset : shard.offset + shard.size], checks=bool(shard.check)):
                return False
        out = np.frombuffer(dest.cast("B"), dtype=np.uint8)
        np.copyto(out[: end - start], blob[shard.offset + start : shard.offset + end])
    return True
