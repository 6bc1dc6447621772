"""A node's teardowns: bounded, off every boot's path, and finished even when the Pod is long gone.

A deleted Pod's worker kills its containers within their grace period, then
stops its pod sandbox in a teardown slot (``slot``: the runtime no longer runs
it), writes the final status and deletes the Pod: the API is done with it. What
is left (local storage's emptyDirs, the pod network's namespace and address, the
directory and disk image) is removed by ``remove`` in the background, in a slot
too. At most ``slots`` teardowns run at once (``NodeSettings.teardowns``,
``TURBOK_NODE_TEARDOWNS``, default ``DEFAULT_SLOTS``): each holds at most one
runsc process and one of the runtime's teardown threads
(``turbok.runtime.teardown``), so a burst of deletions neither forks hundreds of
runsc processes nor queues behind the boots' threads; boots never wait for a
slot, they have their own (``StartQueue``).

Order for one runtime id: ``NodeContext.lock`` waits for its pending removal
(``removed``) before it is granted, so a new Pod of the same
``turbok.dev/sandbox-identity`` boots on a clean slate, never into a removal.
A removal that fails is retried with back-off (``TRIES``); one cut short (the
control plane stops, crashes) is found again at the next start: the runtime
still lists the pod sandbox (``LocalPodRuntime.remove_pod_sandbox`` keeps it
listed until its last step) and no Pod names it, so the node's sweep removes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

__all__ = ["DEFAULT_SLOTS", "TRIES", "Reaper"]

log = logging.getLogger(__name__)

#: Teardowns at once. Most of one is waiting (runsc's commands, the kernel's unmounts), about 50 ms of CPU:
#: 16 sustain well over 10 a second on 2 cores while boots keep their CPUs.
DEFAULT_SLOTS = 16
#: Tries of a background removal (1 s, 2 s, 4 s... between them); after the last, the next start's sweep.
TRIES = 5


class Reaper:
    def __init__(self, slots: int = DEFAULT_SLOTS, *, retry_base: float = 1.0) -> None:
        self.slots = max(slots, 1)
        self.retry_base = retry_base
        self._free: asyncio.Semaphore | None = None
        self._pending: dict[str, asyncio.Task[None]] = {}
        #: removals finished since the node started, and the last error of each that failed for good
        self.removed_count = 0
        self.failed: dict[str, str] = {}

    def _slots(self) -> asyncio.Semaphore:
        if self._free is None:  # made on first use: bound to the running loop
            self._free = asyncio.Semaphore(self.slots)
        return self._free

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One teardown step (a stop, a hibernation, a removal) at a time per slot."""
        async with self._slots():
            yield

    def remove(self, id: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` (the removal of runtime id ``id``) in the background, in a slot, retried until it
        succeeds or ``TRIES`` run out. One removal per id: a second while one is pending is dropped."""
        if id in self._pending:
            return
        task = asyncio.get_running_loop().create_task(self._remove(id, work), name=f"reaper {id}")
        self._pending[id] = task
        task.add_done_callback(lambda t: self._pending.pop(id, None) if self._pending.get(id) is t else None)

    async def _remove(self, id: str, work: Callable[[], Awaitable[None]]) -> None:
        for attempt in range(TRIES):
            try:
                async with self.slot():
                    await work()
            except Exception as e:  # the runtime's errors, an OSError of a cleanup: tried again
                self.failed[id] = str(e)
                log.warning("removing pod sandbox %s (try %d of %d): %s", id, attempt + 1, TRIES, e)
                await asyncio.sleep(self.retry_base * 2.0 ** attempt)
                continue
            self.failed.pop(id, None)
            self.removed_count += 1
            return
        log.warning("pod sandbox %s not removed after %d tries: the next start removes it", id, TRIES)

    async def removed(self, id: str) -> None:
        """Return once no removal of ``id`` is pending (its own failure is logged, not raised)."""
        task = self._pending.get(id)
        if task is not None:
            await asyncio.wait([task])

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Wait for every pending removal (tests, benchmarks)."""
        while self._pending:
            await asyncio.wait(list(self._pending.values()))

    async def stop(self) -> None:
        """Abandon pending removals: the next start's sweep finds them (the node stops)."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
