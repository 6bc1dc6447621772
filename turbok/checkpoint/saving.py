"""How ``save()`` returns before the copy: snapshots, guards, the stager, and ``SaveFuture``.

``save(step, state)`` lays the state out and returns a ``SaveFuture``; the
copy into the memory tier runs on the manager's stager thread. What keeps
the copy exact while training goes on (``Snapshot``):

- torch CPU tensors of at least ``DEFER_MIN`` bytes are copied later. Training
  modifies them in place only in the optimizer's ``step()``, and a global
  optimizer step pre-hook (``install_guards``) waits there until every pending
  snapshot is copied: forward and backward overlap the copy. Each deferred
  tensor's version counter is read at ``save()`` and again after its copy; if
  anything modified it in place meanwhile (a hand-written update outside
  ``optimizer.step()``), the save fails with StateChangedError instead of
  storing a torn tensor. Call ``wait_copied()`` before such an update, or
  save with ``copy="sync"``.
- smaller torch tensors (biases, norms, BatchNorm statistics that the
  forward pass updates), numpy arrays and bytearrays are copied in ``save()``
  into a small host snapshot: they are mutable and unguarded.
- JAX arrays (``packing.Deferred``) and bytes are immutable: only references
  are held, and the device-to-host transfer runs in the background.
- tensors on an accelerator go through device.py: the device-to-host copies
  are queued on a side stream in ``save()`` and the step hook fences the
  training stream behind them.

The stager (``Stager``) serves one save at a time, in order: ``acquire`` (it
may wait for the agent to drain an earlier step), copy, ``staged``. If the
node agent cannot be reached, the state is copied into a fallback host
buffer (one part, reused), the guards are released so training goes on, and
the hand-over is retried until ``agent_retry_s`` has passed; only then does
the save fail, visibly (its future raises, and so does the next ``save()``).

``SaveFuture`` (a ``concurrent.futures.Future``) resolves to a ``SaveResult``
once the manager's durable tier (default "disk") holds the step, with the
outcome of every tier so far; ``copied`` is set as soon as training may
modify the state again.

Called by manager.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turbok.checkpoint.errors import AgentUnavailableError, CheckpointError, StateChangedError
from turbok.checkpoint.packing import Deferred, Packing

__all__ = ["DEFER_MIN", "SaveFuture", "SaveResult", "Snapshot", "install_guards", "track", "wait_copied", "wait_staged"]

log = logging.getLogger(__name__)

#: torch CPU tensors at least this large are copied after ``save()`` returns (guarded)
DEFER_MIN = 1 << 20


@dataclass(frozen=True)
class SaveResult:
    """What one save did: ``seconds`` is what ``save()`` itself took (the stall)."""

    step: int
    bytes: int
    seconds: float
    copy_seconds: float = 0.0
    durable_seconds: float = 0.0
    tiers: dict[str, str] = field(default_factory=dict)


class SaveFuture(Future[SaveResult]):
    """A save in flight. ``result()`` waits for the durable tier; ``copied`` for the snapshot."""

    def __init__(self, step: int, nbytes: int) -> None:
        super().__init__()
        self.step = step
        self.bytes = nbytes
        self.seconds = 0.0  # the stall, set when save() returns
        self.copy_seconds = 0.0
        self.copied = threading.Event()
        self._tiers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._seen = False  # the caller looked at the outcome (else a failure is raised by the next save)

    def progress(self) -> dict[str, str]:
        """Each tier's outcome so far ("done", "failed: ...", "retrying: ...", "skipped: ...")."""
        with self._lock:
            return dict(self._tiers)

    def _set_tiers(self, tiers: dict[str, str]) -> None:
        with self._lock:
            self._tiers.update(tiers)

    def wait_copied(self, timeout: float | None = None) -> bool:
        return self.copied.wait(timeout)

    def result(self, timeout: float | None = None) -> SaveResult:
        self._seen = True
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._seen = True
        return super().exception(timeout)


# -- snapshots and guards ---------------------------------------------------------------------------
_pending: weakref.WeakSet[Snapshot] = weakref.WeakSet()
_pending_lock = threading.Lock()
_devices: weakref.WeakSet[Any] = weakref.WeakSet()  # DeviceStagers whose snapshots must be fenced
_unstaged: weakref.WeakSet[SaveFuture] = weakref.WeakSet()  # saves of this process not yet handed over
_installed = False


def wait_copied(timeout: float | None = None) -> None:
    """Block until every pending snapshot of this process is copied (host tensors) or fenced (device)."""
    with _pending_lock:
        pending = list(_pending)
        stagers = list(_devices)
    for stager in stagers:
        stager.fence()
    deadline = None if timeout is None else time.monotonic() + timeout
    for snap in pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not snap.copied.wait(left):
            raise CheckpointError(f"step {snap.step}: the snapshot is still being copied after {timeout}s")


def track(future: SaveFuture) -> None:
    with _pending_lock:
        _unstaged.add(future)


def wait_staged(timeout: float | None = None) -> None:
    """Block until every save of this process has reached its agent (so restores and listings see it)."""
    with _pending_lock:
        futures = list(_unstaged)
    for f in futures:
        f.copied.wait(timeout)


def install_guards() -> None:
    """Once per process: torch optimizers wait for pending snapshots before they modify anything."""
    global _installed
    if "torch" not in sys.modules:  # no torch tensor can be in a state before torch is imported
        return
    with _pending_lock:
        if _installed:
            return
        _installed = True
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        wait_copied()

    register_optimizer_step_pre_hook(before_step)


class Snapshot:
    """One save's leaves, split into copied-now and copied-later, with the versions to check."""

    def __init__(self, step: int, packing: Packing, *, copy: str, device: Any = None) -> None:
        self.step = step
        self.packing = packing
        self.copied = threading.Event()
        self.later: list[int] = []  # leaves copied by the stager, from the live objects
        self.device_leaves: list[int] = []  # leaves on an accelerator (device.py)
        self.versions: dict[int, int] = {}
        self.device = device
        for i, (shard, leaf) in enumerate(zip(packing.shards, packing.leaves, strict=True)):
            if device is not None and shard.kind == "tensor" and device.backend.is_device(leaf):
                self.device_leaves.append(i)
            elif copy == "sync":
                continue
            elif isinstance(leaf, Deferred) or isinstance(leaf, memoryview) and leaf.readonly:
                self.later.append(i)  # immutable
            elif shard.kind == "tensor" and shard.size >= DEFER_MIN and leaf.device.type == "cpu" and not leaf.is_inference():
                self.later.append(i)
                self.versions[i] = int(leaf._version)
            elif shard.kind == "ndarray" and not leaf.flags.writeable and shard.size >= DEFER_MIN:
                self.later.append(i)
            else:  # mutable and unguarded, or small: copy it now
                packing.leaves[i] = _host_copy(leaf, shard.kind)
        if copy != "sync" and self.later:  # host tensors the step hook must wait for
            with _pending_lock:
                _pending.add(self)
            install_guards()
        else:
            self.copied.set()
        if self.device_leaves:
            install_guards()  # the hook fences the device stream (no host wait)
        on_device = set(self.device_leaves)
        self.host_leaves = [i for i in range(len(packing.shards)) if i not in on_device]

    def check_versions(self) -> None:
        changed = [self.packing.shards[i].name for i, v in self.versions.items()
                   if int(self.packing.leaves[i]._version) != v]
        if changed:
            raise StateChangedError(
                f"step {self.step}: {', '.join(changed[:5])} changed in place while the save was copying it "
                "(outside optimizer.step()); call manager.wait_copied() before such updates, or save(copy='sync')")

    def done(self) -> None:
        self.copied.set()
        with _pending_lock:
            _pending.discard(self)


def _host_copy(leaf: Any, kind: str) -> Any:
    if kind == "tensor":
        return leaf.detach().clone()
    if kind == "ndarray":
        return np.array(leaf, copy=True)
    return bytes(leaf)


# -- the stager -------------------------------------------------------------------------------------
@dataclass
class StageJob:
    future: SaveFuture
    snapshot: Snapshot
    fields: dict[str, Any]
    manifest: dict[str, Any]
    acquired: dict[str, Any] | None = None  # acquired in save() (device snapshots): the reply
    device_snapshot: Any = None
    started: float = field(default_factory=time.perf_counter)


def _faults() -> dict[str, float]:
    """Fault injection for the failure drills: ``TURBOK_CHECKPOINT_FAULTS`` maps a stage
    (``stager.before_copy``, optionally ``@STEP``) to seconds slept there."""
    raw = os.environ.get("TURBOK_CHECKPOINT_FAULTS")
    if not raw:
        return {}
    try:
        return {str(k): float(v) for k, v in json.loads(raw).items()}
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"TURBOK_CHECKPOINT_FAULTS: {e}") from e


class Stager:
    """The manager's background thread: acquire, copy, staged; then hand the future to ``on_staged``."""

    def __init__(self, *, client_factory: Callable[[], Any], maps: Any, agent_retry_s: float,
                 staging_timeout: float, on_staged: Callable[[StageJob], None]) -> None:
        self.client = client_factory()
        self.maps = maps
        self.agent_retry_s = agent_retry_s
        self.staging_timeout = staging_timeout
        self.on_staged = on_staged
        self._jobs: queue.SimpleQueue[StageJob | None] = queue.SimpleQueue()
        self._fallback: mmap.mmap | None = None
        self._faults = _faults()
        self._thread = threading.Thread(target=self._run, name="checkpoint-stager", daemon=True)
        self._thread.start()

    def submit(self, job: StageJob) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=120)
        self.client.close()
        if self._fallback is not None:
            with contextlib.suppress(BufferError):
                self._fallback.close()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._stage(job)
            except BaseException as e:  # the future carries it; training is released
                if not isinstance(e, CheckpointError):
                    log.exception("checkpoint: staging step %d failed", job.future.step)
                self._released(job)
                if not job.future.done():
                    job.future.set_exception(e)
                continue
            self.on_staged(job)

    def _acquire(self, job: StageJob, wait_s: float) -> str:
        reply = self.client.call("acquire", size=job.snapshot.packing.data_size, wait_s=wait_s,
                                 timeout=wait_s + 30, **job.fields)
        return str(reply["path"])

    def _stage(self, job: StageJob) -> None:
        snap, packing = job.snapshot, job.snapshot.packing
        size = packing.data_size
        t0 = time.perf_counter()
        if job.acquired is not None:  # a device snapshot: the buffer was taken in save()
            path = str(job.acquired["path"])
        else:
            try:
                path = self._acquire(job, self.staging_timeout)
            except AgentUnavailableError as e:
                log.warning("checkpoint: step %d: the node agent is unreachable (%s); buffering the state and "
                            "retrying for up to %.0fs", job.future.step, e, self.agent_retry_s)
                self._stage_again(job, t0, None)
                return
        view = self.maps.view(path, size)
        for stage in ("stager.before_copy", f"stager.before_copy@{job.future.step}"):
            if self._faults.get(stage):
                log.warning("checkpoint: fault injection: sleeping %.1fs at %s", self._faults[stage], stage)
                time.sleep(self._faults[stage])
        try:
            try:
                if job.device_snapshot is not None:
                    job.device_snapshot.wait()
                packing.copy_into(view, snap.host_leaves)
                snap.check_versions()
            except BaseException:
                with contextlib.suppress(CheckpointError):
                    self.client.call("abort", **job.fields)
                raise
            try:
                self.client.call("staged", manifest=job.manifest, session=job.fields.get("session", ""), timeout=120)
            except AgentUnavailableError as e:
                log.warning("checkpoint: step %d: the node agent went away before 'staged' (%s); buffering",
                            job.future.step, e)
                self._stage_again(job, t0, view)
                return
        finally:
            view.release()
        job.future.copy_seconds = time.perf_counter() - t0
        self._released(job)

    def _stage_again(self, job: StageJob, t0: float, source: memoryview | None) -> None:
        """The agent is gone: keep the bytes in the fallback buffer, release training, retry the hand-over."""
        snap, packing = job.snapshot, job.snapshot.packing
        size = packing.data_size
        if self._fallback is None or len(self._fallback) < size:
            if self._fallback is not None:
                self._fallback.close()
            self._fallback = mmap.mmap(-1, size)
        view = memoryview(self._fallback)[:size]
        try:
            if source is not None:  # the copy was complete in the memory tier's buffer
                np.copyto(np.frombuffer(view, dtype=np.uint8), np.frombuffer(source, dtype=np.uint8))
            else:
                packing.copy_into(view)
                snap.check_versions()
            job.future.copy_seconds = time.perf_counter() - t0
            self._released(job)  # training may modify the state again: the bytes are in our buffer
            deadline = time.monotonic() + self.agent_retry_s
            last: Exception | None = None
            while time.monotonic() < deadline:
                try:
                    dest = self.maps.view(self._acquire(job, min(60.0, self.staging_timeout)), size)
                    try:
                        np.copyto(np.frombuffer(dest, dtype=np.uint8), np.frombuffer(view, dtype=np.uint8))
                    finally:
                        dest.release()
                    self.client.call("staged", manifest=job.manifest, session=job.fields.get("session", ""), timeout=120)
                    log.info("checkpoint: step %d handed to the node agent after it came back", job.future.step)
                    return
                except AgentUnavailableError as e:
                    last = e
                    time.sleep(0.5)
            raise AgentUnavailableError(
                f"step {job.future.step} was not saved: the node agent was unreachable for {self.agent_retry_s:.0f}s "
                f"(agent_retry_s); last error: {last}")
        finally:
            view.release()

    @staticmethod
    def _released(job: StageJob) -> None:
        job.snapshot.done()
        job.future.copied.set()


def register_device(stager: Any) -> None:
    with _pending_lock:
        _devices.add(stager)
