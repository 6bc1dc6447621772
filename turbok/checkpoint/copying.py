"""Bulk byte movement shared by the library and the agent: parallel copies and streaming hashes.

``parallel_copy(pairs)`` copies (destination, source) byte arrays on a few
threads. numpy's copy releases the GIL, and one core cannot saturate memory
here when the source is ordinary 4 KiB-paged memory (torch tensors): the page
walks, not the bandwidth, set the pace. Two threads copy 1 GiB of torch
tensors into a touched tmpfs mapping in 0.09 s on the development VM, against
0.15 s for one ``np.copyto`` per tensor. Used by ``save`` (the training
stall) and by ``restore`` (copy into the caller's tensors).

``copy_checked(pairs)`` copies like ``parallel_copy`` and returns the XXH3
check of every destination, hashing each 1 MiB right after copying it: a
restore from memory is verified in about the time of the copy.

``ShardHasher`` hashes a part's shards (BLAKE3 or the XXH3 checks, one
incremental hasher per shard) from a stream of contiguous chunks of the blob,
in order, on a worker thread of its own, so a receiver or a reader hashes
while the next chunk arrives instead of making a second pass once everything
is in. Used by the agent's replica receipt (agent.py) and by restores from
disk, peers and object storage (restore.py).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import blake3
import numpy as np
import xxhash

from turbok.checkpoint.manifest import Shard

__all__ = ["ShardHasher", "copy_checked", "copy_threads", "parallel_copy", "parallel_map"]

# Below this, one thread is faster than waking others.
_PARALLEL_MIN = 16 << 20
_TASK = 64 << 20
_CHECK_CHUNK = 1 << 20
_pool: ThreadPoolExecutor | None = None
T = TypeVar("T")
R = TypeVar("R")
_pool_lock = threading.Lock()


def copy_threads() -> int:
    """Threads used for a large copy: every core, at most 8 (memory stops scaling beyond that)."""
    return max(1, min(8, os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=copy_threads(), thread_name_prefix="checkpoint-copy")
        return _pool


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn`` over ``items`` on the copy threads (hashing shards in place), in ``items`` order."""
    return list(_executor().map(fn, items))


def parallel_copy(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy each ``src`` into its ``dst`` (uint8 arrays of equal size), split over threads.

    The total is cut into contiguous ranges of about equal size, so a state of
    one large tensor is spread as well as a state of many small ones.
    """
    total = sum(int(d.nbytes) for d, _ in pairs)
    threads = copy_threads()
    if total < _PARALLEL_MIN or threads == 1:
        for d, s in pairs:
            np.copyto(d, s)
        return
    ntasks = max(threads, -(-total // _TASK))
    per = -(-total // ntasks)
    tasks: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    room = per
    for d, s in pairs:
        pos, n = 0, int(d.nbytes)
        while pos < n:
            take = min(room, n - pos)
            tasks[-1].append((d[pos : pos + take], s[pos : pos + take]))
            pos += take
            room -= take
            if room == 0:
                tasks.append([])
                room = per

    def run(task: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for d, s in task:
            np.copyto(d, s)

    # The caller's thread takes a share too: with two cores, two workers plus an idle caller
    # would leave a core's worth of scheduling to chance.
    pool = _executor()
    futures = [pool.submit(run, t) for t in tasks[1:] if t]
    run(tasks[0])
    for f in futures:
        f.result()


def copy_checked(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """``parallel_copy`` that also returns the XXH3-128 of each destination, in ``pairs`` order.

    Each pair (a shard) is copied and hashed 1 MiB at a time, so the hash reads
    bytes the copy just left in cache: 1 GiB in eight shards took 0.19 s here
    against 0.16 s for the copy alone and 0.26 s for a copy beside a separate
    hash pass. Pairs are spread over the threads; with fewer pairs than threads
    the copy is split as in ``parallel_copy`` and the hash follows it.
    """
    threads = copy_threads()
    if len(pairs) < threads:
        parallel_copy(pairs)
        return [str(xxhash.xxh3_128_hexdigest(d.data)) for d, _ in pairs]

    def one(pair: tuple[np.ndarray, np.ndarray]) -> str:
        d, s = pair
        h = xxhash.xxh3_128()
        for off in range(0, int(d.nbytes), _CHECK_CHUNK):
            np.copyto(d[off : off + _CHECK_CHUNK], s[off : off + _CHECK_CHUNK])
            h.update(d[off : off + _CHECK_CHUNK].data)
        return str(h.hexdigest())

    # Largest first, so the last thread to finish is not left with the biggest shard.
    order = sorted(range(len(pairs)), key=lambda i: -int(pairs[i][0].nbytes))
    digests = dict(zip(order, _executor().map(one, [pairs[i] for i in order]), strict=True))
    return [digests[i] for i in range(len(pairs))]


class ShardHasher:
    """Per-shard digests (BLAKE3, or the XXH3 checks with ``checks=True``) over a blob
    that arrives in order, chunk by chunk.

    ``feed(offset, view)``: ``view`` holds the blob's bytes ``[offset, offset + len)``;
    it must stay valid and unchanged until ``digests()`` returns (callers pass
    views of the final destination), unless ``background=False``, where
    ``feed`` hashes before it returns. Chunks must be fed in increasing,
    contiguous order. ``digests()`` waits for the worker and returns the hex
    digests in shard order; ``bad()`` the shards whose digest differs from
    their recorded hash (or check).
    """

    def __init__(self, shards: Sequence[Shard], *, checks: bool = False, background: bool = True) -> None:
        self.shards = list(shards)
        self.checks = checks
        self._order = sorted(range(len(self.shards)), key=lambda i: self.shards[i].offset)
        self._hashers: list[Any] = [xxhash.xxh3_128() if checks else blake3.blake3() for _ in self.shards]
        self._next = 0  # index into _order of the first shard not fully hashed
        self._queue: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None
        if background:
            self._worker = threading.Thread(target=self._run, name="checkpoint-hash", daemon=True)
            self._worker.start()

    def feed(self, offset: int, view: memoryview) -> None:
        if self._worker is None:
            self._update(offset, view)  # ``background=False``: the caller may reuse ``view`` at once
        else:
            self._queue.put((offset, view))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._update(*item)
                except BaseException as e:  # reported by digests()
                    self._error = e

    def _update(self, offset: int, view: memoryview) -> None:
        end = offset + view.nbytes
        i = self._next
        while i < len(self._order):
            s = self.shards[self._order[i]]
            if s.offset >= end:
                break
            lo, hi = max(s.offset, offset), min(s.offset + s.size, end)
            if hi > lo:
                self._hashers[self._order[i]].update(view[lo - offset : hi - offset])
            if s.offset + s.size <= end:
                i += 1
                self._next = i
            else:
                break

    def digests(self) -> list[str]:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
        if self._error is not None:
            raise self._error
        return [h.hexdigest() for h in self._hashers]

    def bad(self) -> list[Shard]:
        digests = self.digests()
        return [s for s, d in zip(self.shards, digests, strict=True) if d != (s.check if self.checks else s.hash)]

    def close(self) -> None:
        """Stop the worker without waiting for results (an aborted transfer)."""
        self._error = self._error or RuntimeError("hashing abandoned")
        self._queue.put(None)
