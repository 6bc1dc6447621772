"""Runs reconcilers: work queues, workers, backoff, and routing of changes to keys.

Semantics follow client-go's workqueue: a key is queued at most once; a key
that changes while being reconciled is reconciled again afterwards (never
twice at once); failures back off exponentially per key (50 ms doubling to
30 s) and success resets the backoff. Every committed change is routed
synchronously from the client's subscription, so a reconcile starts within
one event-loop turn of the write that caused it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from turbok.api.status import ApiError, Conflict, NotFound
from turbok.controllers.base import Key, PermanentError, Reconciler, RetryError, TemporaryError
from turbok.controllers.client import Client, ObjectEvent

__all__ = ["Manager"]

log = logging.getLogger(__name__)

_BACKOFF_BASE, _BACKOFF_MAX = 0.05, 30.0


class _Queue:
    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.ready: asyncio.Queue[Key] = asyncio.Queue()
        self.queued: set[Key] = set()
        self.active: set[Key] = set()
        self.dirty: set[Key] = set()
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.failures: dict[Key, int] = {}

    def add(self, key: Key) -> None:
        if key in self.active:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            self.ready.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        timer = self.timers.get(key)
        when = loop.time() + delay
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self.timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self.timers.pop(key, None)
        self.add(key)


class Manager:
    def __init__(self, client: Client, reconcilers: Sequence[Reconciler],
                 metrics: CollectorRegistry | None = None) -> None:
        self.client = client
        self.queues = [_Queue(r) for r in reconcilers]
        self._tasks: list[asyncio.Task[None]] = []
        self._by_kind = {q.reconciler.kind.key: q for q in self.queues}
        registry = metrics or CollectorRegistry()
        self._runs = Counter("turbok_controller_reconciles_total", "Reconciles by controller and result",
                             ["controller", "result"], registry=registry)
        self._seconds = Histogram("turbok_controller_reconcile_seconds", "Reconcile duration", ["controller"],
                                  registry=registry, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30))

    async def start(self) -> None:
        # Subscribe first: a change made while reconcilers start is routed, not lost.
        self.client.subscribe(self._route)
        for q in self.queues:
            q.reconciler.enqueue = (lambda queue: lambda key, after=0.0: (
                queue.add_after(key, after) if after > 0 else queue.add(key)))(q)
            await q.reconciler.start()
        for q in self.queues:
            for obj in await self.client.list(q.reconciler.kind):
                md = obj["metadata"]
                q.add((md.get("namespace", ""), md["name"]))
            for i in range(q.reconciler.concurrency):
                name = f"{type(q.reconciler).__name__}-{i}"
                self._tasks.append(asyncio.create_task(self._worker(q), name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for q in self.queues:
            for timer in q.timers.values():
                timer.cancel()
            await q.reconciler.stop()

    @staticmethod
    def _wake(q: _Queue, key: Key) -> None:
        delay = q.reconciler.coalesce
        if delay > 0:
            q.add_after(key, delay)
        else:
            q.add(key)

    def _route(self, event: ObjectEvent) -> None:
        own = self._by_kind.get(event.resource)
        if own is not None:
            self._wake(own, (event.namespace, event.name))
        kind = self.client.kinds.by_key(event.resource)
        if kind is None:
            return
        obj = None
        for q in self.queues:
            if q is own:
                continue
            if obj is None:
                obj = event.object()
            try:
                for key in q.reconciler.related(kind, obj, event.type == "DELETED"):
                    self._wake(q, key)
            except Exception:  # one reconciler's bug must not keep changes from the others
                log.exception("%s.related failed on %s %s/%s", type(q.reconciler).__name__, event.resource,
                              event.namespace, event.name)

    async def _worker(self, q: _Queue) -> None:
        name = type(q.reconciler).__name__
        while True:
            key = await q.ready.get()
            q.queued.discard(key)
            q.active.add(key)
            start = time.perf_counter()
            outcome = "ok"
            try:
                result = await q.reconciler.reconcile(*key)
                q.failures.pop(key, None)
                if result.requeue_after is not None:
                    q.add_after(key, result.requeue_after)
            except asyncio.CancelledError:
                raise
            except Conflict:
                outcome = "conflict"
                q.dirty.add(key)
            except NotFound as e:
                outcome = "notfound"
                log.debug("%s %s/%s: %s", name, *key, e)
                self._backoff(q, key)
            except TemporaryError as e:
                outcome = "retry"
                log.info("%s %s/%s: %s (retry in %.1fs)", name, key[0], key[1], e, e.delay)
                q.add_after(key, e.delay)
            except PermanentError as e:
                outcome = "permanent"
                log.warning("%s %s/%s: %s", name, key[0], key[1], e)
            except RetryError as e:
                outcome = "error"
                log.info("%s %s/%s: %s", name, key[0], key[1], e)
                self._backoff(q, key)
            except ApiError as e:
                outcome = "error"
                log.warning("%s %s/%s: API error: %s", name, key[0], key[1], e)
                self._backoff(q, key)
            except Exception:
                outcome = "error"
                log.exception("%s %s/%s: reconcile failed", name, *key)
                self._backoff(q, key)
            finally:
                q.active.discard(key)
                self._seconds.labels(name).observe(time.perf_counter() - start)
                self._runs.labels(name, outcome).inc()
                if key in q.dirty:
                    q.dirty.discard(key)
                    q.add(key)

    def _backoff(self, q: _Queue, key: Key) -> None:
        n = q.failures.get(key, 0)
        q.failures[key] = n + 1
        q.add_after(key, min(_BACKOFF_BASE * 2**n, _BACKOFF_MAX))
