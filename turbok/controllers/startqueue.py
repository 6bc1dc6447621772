"""How many sandboxes boot at once, and which go first.

Booting a gVisor sandbox is CPU-bound (about 150 ms of CPU here). Booting more
at once than there are cores only makes every boot slower, and a claim that
must start cold would wait behind a warm pool's refill. ``StartQueue`` admits
at most ``slots`` starts at a time and serves urgent ones (a claim, a user's
Sandbox) before refills, first come first served within a priority.
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


class StartQueue:
    def __init__(self, slots: int | None = None) -> None:
        self.slots = slots or max(os.cpu_count() or 1, 1)
        self._busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @asynccontextmanager
    async def slot(self, priority: int = URGENT) -> AsyncIterator[None]:
        if self._busy >= self.slots or self._waiting:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (priority, next(self._seq), future)
            heapq.heappush(self._waiting, entry)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # the slot was handed to us as we were cancelled: pass it on
                else:
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
