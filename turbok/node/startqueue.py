"""How many pod sandboxes boot at once, and which go first (moved here from ``turbok.controllers``).

Booting a gVisor sandbox is CPU-bound (about 150 ms of CPU here): booting
more at once than there are cores only makes every boot slower, and a Pod a
user waits for would boot behind a warm pool's refill. ``StartQueue`` admits
at most ``slots`` boots at a time (a pod sandbox's, and each container's start,
which is a ``runsc run`` of its own where one container runs at a time) (default: the CPUs this process may use;
``TURBOK_NODE_START_SLOTS``) and serves urgent ones before refills, first come
first served within a priority. A boot whose Pod is deleted while it waits
leaves the queue (its task is cancelled) without ever starting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["REFILL", "URGENT", "StartQueue"]

URGENT, REFILL = 0, 1


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class StartQueue:
    def __init__(self, slots: int | None = None) -> None:
        self.slots = max(slots or _cpus(), 1)
        self._busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def full(self) -> bool:
        """True when a new boot would have to wait."""
        return self._busy >= self.slots or bool(self._waiting)

    @asynccontextmanager
    async def slot(self, priority: int = URGENT) -> AsyncIterator[None]:
        if self.full:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (priority, next(self._seq), future)
            heapq.heappush(self._waiting, entry)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # the slot was handed to us as we were cancelled: pass it on
                elif entry in self._waiting:  # else a release already dropped it, as a cancelled waiter
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                raise
        else:
            self._busy += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes straight to the next waiter
                return
        self._busy -= 1

    @property
    def waiting(self) -> int:
        return len(self._waiting)
