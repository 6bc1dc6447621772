"""How long the control plane's one event loop is kept from running, and why.

Every request, watch and reconcile of the embedded engine shares one asyncio
loop, so a stall there is a stall of everything. ``LoopWatch`` measures two
causes as Prometheus histograms: loop lag (a timer set ``interval`` ahead that
fires late) and the garbage collector's pauses per generation. Stalls longer
than ``warn_after`` are logged, naming the collector when it was the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

__all__ = ["LoopWatch"]

log = logging.getLogger(__name__)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopWatch:
    def __init__(self, registry: CollectorRegistry, *, interval: float = 0.05, warn_after: float = 0.25) -> None:
        self.interval = interval
        self.warn_after = warn_after
        self._lag = Histogram("turbok_event_loop_lag_seconds", "How late a timer on the control plane's event loop fired",
                              buckets=_BUCKETS, registry=registry)
        self._gc = Histogram("turbok_gc_pause_seconds", "Garbage collector pauses of the control plane process",
                             ["generation"], buckets=_BUCKETS, registry=registry)
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-watch")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - due)
            self._lag.observe(lag)
            if lag > self.warn_after:
                log.warning("event loop stalled for %.0f ms", lag * 1e3)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self._gc.labels(str(info["generation"])).observe(pause)
        if pause > self.warn_after:
            log.warning("garbage collection (generation %d, %d objects freed) took %.0f ms",
                        info["generation"], info["collected"], pause * 1e3)
