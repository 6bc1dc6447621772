"""How long the control plane's one event loop is kept from running, and why.

Every request, watch and reconcile of the embedded engine shares one asyncio
loop, so a stall there is a stall of everything. ``LoopWatch`` measures two
causes as Prometheus histograms: loop lag (a timer set ``interval`` ahead that
fires late) and the garbage collector's pauses per generation. Stalls longer
than ``warn_after`` are logged, naming the collector when it was the cause,
and where the loop's thread was while it stalled: a thread of its own looks
at the loop's stack when the loop is late (every ``warn_after / 2``, a few
microseconds each). That is how the causes in bench/RESULTS.md ("Claims") were
found: a fork waiting on the loop, a relist trip, a thread waiting for a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import time
import traceback
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

__all__ = ["LoopWatch"]

log = logging.getLogger(__name__)

#: Innermost frames of the loop's stack a stall's warning names.
STACK_FRAMES = 6
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
        self._due = 0.0  # when the loop's next tick is due
        self._where: tuple[float, str] | None = None  # (the tick it was late for, the loop's stack then)
        self._stopping = threading.Event()

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._due = time.perf_counter() + self.interval
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-watch")
        threading.Thread(target=self._sample, args=(threading.get_ident(),), daemon=True,
                         name="loop-watch-stack").start()

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            due = self._due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - due)
            self._lag.observe(lag)
            if lag > self.warn_after:
                where = self._where[1] if self._where is not None and self._where[0] == due else ""
                log.warning("event loop stalled for %.0f ms%s", lag * 1e3, f"; it was at: {where}" if where else "")

    def _sample(self, loop_thread: int) -> None:
        """Keep the loop thread's stack from once the loop is ``warn_after`` late, once per late tick."""
        while not self._stopping.wait(self.warn_after / 2):
            due = self._due
            if time.perf_counter() - due < self.warn_after or (self._where is not None and self._where[0] == due):
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is None:
                return  # the loop's thread has ended
            frames = traceback.extract_stack(frame)[-STACK_FRAMES:]
            self._where = (due, " < ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                                           for f in reversed(frames)))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self._gc.labels(str(info["generation"])).observe(pause)
        if pause > self.warn_after:
            log.warning("garbage collection (generation %d, %d objects freed) took %.0f ms",
                        info["generation"], info["collected"], pause * 1e3)
