"""Per-sandbox bounds of the router: command slots (``ExecSlots``) and uploaded bytes (``UploadLedger``).

Both are kept in the router's memory, one entry per sandbox id, and are
consulted by the handlers (``execute``, ``files``) through the ``Call``.

``ExecSlots``: every command (``/execute`` and the exec stream) holds one of
its sandbox's ``RouterConfig.exec_concurrency`` slots while it runs, so one
sandbox never has more ``runsc exec`` clients than that on the host. Up to
``exec_queue`` more wait, first come first served, at most ``exec_queue_wait``
seconds; anything beyond is refused at once with ``TooManyRequests`` (429,
``Retry-After``). The commands of one sandbox also share one output budget
(``Slot.pace``): the router reads at most ``output_rate`` bytes a second of
their output, a second's worth at once; past it the reader waits, the pipes
fill, and the commands wait on their writes at no cost to the router. A
sandbox with nothing running or waiting has no entry (and a fresh budget).

``UploadLedger``: the bytes held by files the router uploaded into a sandbox,
path by path. Uploading over a path replaces its charge; a file the sandbox
deleted, replaced or shrank stops counting once the ledger checks the disk,
which it does (in a worker thread, at most every ``RECHECK_INTERVAL`` seconds)
when an upload would pass ``upload_total_limit``. So the limit bounds what
uploads can pile up in a sandbox, not what its own processes write (that is the
sandbox's disk limit, enforced by the runtime). The ledger forgets everything
when the router restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from turbok.sandboxd.confine import WorkDir, display
from turbok.sandboxd.errors import PayloadTooLarge, TooManyRequests
from turbok.sandboxd.metrics import RouterMetrics

__all__ = ["MAX_TRACKED_FILES", "RECHECK_INTERVAL", "ExecSlots", "Slot", "UploadLedger", "UploadTicket"]

#: Most uploaded files one sandbox's ledger tracks (its memory: about 200 bytes each).
MAX_TRACKED_FILES = 100_000
#: Least seconds between two checks of one sandbox's uploaded files against its disk.
RECHECK_INTERVAL = 5.0
#: Ledgers kept before those of sandboxes whose work directory is gone are dropped.
_PRUNE_AT = 256


@dataclass
class _Gate:
    rate: float
    running: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    #: Output budget in bytes (a token bucket holding at most ``rate``) and when it was filled.
    budget: float = 0.0
    filled_at: float = 0.0

    def __post_init__(self) -> None:
        self.budget, self.filled_at = self.rate, time.monotonic()


class Slot:
    """One running command's place in its sandbox (from ``ExecSlots.slot``)."""

    def __init__(self, gate: _Gate) -> None:
        self._gate = gate

    async def pace(self, n: int) -> None:
        """Charge ``n`` bytes of output read to the sandbox's budget; wait while it is overdrawn."""
        gate = self._gate
        now = time.monotonic()
        gate.budget = min(gate.rate, gate.budget + (now - gate.filled_at) * gate.rate) - n
        gate.filled_at = now
        if gate.budget < 0:
            await asyncio.sleep(-gate.budget / gate.rate)


class ExecSlots:
    """At most ``running`` commands per sandbox, ``queue`` more waiting; see the module docstring."""

    def __init__(self, *, running: int, queue: int, wait: float, rate: float, metrics: RouterMetrics) -> None:
        self.running = running
        self.queue = queue
        self.wait = wait
        self.rate = rate
        self._metrics = metrics
        self._gates: dict[str, _Gate] = {}

    def in_use(self, sandbox_id: str) -> tuple[int, int]:
        """(running, waiting) for one sandbox."""
        gate = self._gates.get(sandbox_id)
        return (gate.running, len(gate.waiters)) if gate else (0, 0)

    @contextlib.asynccontextmanager
    async def slot(self, sandbox_id: str, sandbox: str) -> AsyncIterator[Slot]:
        """Hold one of the sandbox's slots for the body of the ``async with``."""
        gate = await self._acquire(sandbox_id, sandbox)
        try:
            yield Slot(gate)
        finally:
            self._release(sandbox_id)

    async def _acquire(self, sandbox_id: str, sandbox: str) -> _Gate:
        gate = self._gates.get(sandbox_id)
        if gate is None:
            gate = self._gates[sandbox_id] = _Gate(self.rate)
        if gate.running < self.running and not gate.waiters:
            gate.running += 1
            return gate
        if len(gate.waiters) >= self.queue:
            self._metrics.execs_rejected.labels("queue_full").inc()
            raise TooManyRequests(
                f"sandbox {sandbox} already runs {gate.running} commands (the most it may) and "
                f"{len(gate.waiters)} more wait; retry later"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)
        self._metrics.execs_queued.inc()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait)
        except (TimeoutError, asyncio.CancelledError) as e:
            if waiter.done() and not waiter.cancelled():
                self._release(sandbox_id)  # the slot came just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    gate.waiters.remove(waiter)
                self._forget_if_idle(sandbox_id, gate)
            if isinstance(e, asyncio.CancelledError):
                raise
            self._metrics.execs_rejected.labels("queue_timeout").inc()
            raise TooManyRequests(
                f"sandbox {sandbox} runs {self.running} commands (the most it may) and none ended "
                f"within {self.wait:g} seconds; retry later"
            ) from None
        finally:
            self._metrics.execs_queued.dec()
        return gate

    def _release(self, sandbox_id: str) -> None:
        gate = self._gates[sandbox_id]
        while gate.waiters:
            waiter = gate.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight on: ``running`` stays
                return
        gate.running -= 1
        self._forget_if_idle(sandbox_id, gate)

    def _forget_if_idle(self, sandbox_id: str, gate: _Gate) -> None:
        if gate.running == 0 and not gate.waiters and self._gates.get(sandbox_id) is gate:
            del self._gates[sandbox_id]


@dataclass
class _Book:
    #: Where the uploaded files can be checked from the host (None: only through the sandbox's agent,
    #: so the ledger is corrected by the deletes that pass the router, not by looking).
    workdir: Path | None
    #: Path (joined with "/") -> bytes charged for the uploaded file there.
    held: dict[str, int] = field(default_factory=dict)
    total: int = 0
    #: Bytes of uploads still streaming in.
    pending: int = 0
    checked_at: float = -RECHECK_INTERVAL

    def charge(self, key: str, size: int) -> None:
        self.total += size - self.held.get(key, 0)
        self.held[key] = size


def _sizes_on_disk(workdir: Path, keys: list[str]) -> dict[str, int | None]:
    """Current size of each uploaded path that is still a regular file (None: gone or replaced)."""
    sizes: dict[str, int | None] = {}
    with WorkDir(workdir) as wd:
        for key in keys:
            sizes[key] = wd.regular_size(tuple(key.split("/")))
    return sizes


class UploadLedger:
    """Bytes held by uploaded files, per sandbox; see the module docstring."""

    def __init__(self, *, limit: int, metrics: RouterMetrics, max_files: int = MAX_TRACKED_FILES) -> None:
        self.limit = limit
        self.max_files = max_files
        self._metrics = metrics
        self._books: dict[str, _Book] = {}

    def held(self, sandbox_id: str) -> int:
        book = self._books.get(sandbox_id)
        return book.total if book else 0

    def _book(self, sandbox_id: str, workdir: Path | None) -> _Book:
        book = self._books.get(sandbox_id)
        if book is None:
            if len(self._books) >= _PRUNE_AT:
                self._prune()
            book = self._books[sandbox_id] = _Book(workdir)
        return book

    def _prune(self) -> None:
        # Books of removed sandboxes; a stopped sandbox keeps its disk, and so its book.
        for sid in [sid for sid, b in self._books.items()
                    if not b.pending and (b.workdir is None and not b.held or b.workdir is not None
                                          and not os.path.isdir(b.workdir))]:
            del self._books[sid]

    @contextlib.asynccontextmanager
    async def upload(
        self, sandbox_id: str, workdir: Path | None, parts: tuple[str, ...], sandbox: str
    ) -> AsyncIterator[UploadTicket]:
        """One upload to ``parts``: ``await take(n)`` for each chunk, ``commit(size)`` once renamed in."""
        book = self._book(sandbox_id, workdir)
        up = UploadTicket(self, book, "/".join(parts), display(parts), sandbox)
        try:
            yield up
        finally:
            book.pending -= up.taken

    def forget(self, sandbox_id: str, parts: tuple[str, ...], *, below: bool = False) -> None:
        """An uploaded path was deleted through the router (``below``: everything under it too)."""
        book = self._books.get(sandbox_id)
        if book is None:
            return
        key = "/".join(parts)
        for k in [k for k in book.held if k == key or (below and (not key or k.startswith(key + "/")))]:
            book.total -= book.held.pop(k)

    async def _recheck(self, book: _Book) -> None:
        now = time.monotonic()
        if now - book.checked_at < RECHECK_INTERVAL or not book.held or book.workdir is None:
            return
        book.checked_at = now
        snapshot = dict(book.held)
        sizes = await asyncio.to_thread(_sizes_on_disk, book.workdir, list(snapshot))
        for key, size in sizes.items():
            if book.held.get(key) != snapshot[key]:
                continue  # uploaded again meanwhile: the new charge stands
            if size is None:
                book.total -= book.held.pop(key)
            elif size < snapshot[key]:
                book.charge(key, size)


class UploadTicket:
    """One upload's claim on its sandbox's ledger (from ``UploadLedger.upload``)."""

    def __init__(self, ledger: UploadLedger, book: _Book, key: str, shown: str, sandbox: str) -> None:
        self._ledger = ledger
        self._book = book
        self._key = key
        self._shown = shown
        self._sandbox = sandbox
        self.taken = 0
        self._rechecked = False

    def _fits(self, n: int) -> bool:
        book = self._book
        # The file this upload replaces stops counting when it lands.
        after = book.total - book.held.get(self._key, 0) + book.pending + n
        return after <= self._ledger.limit

    def _new_file_over_count(self) -> bool:
        return self._key not in self._book.held and len(self._book.held) >= self._ledger.max_files

    async def take(self, n: int) -> None:
        """Count ``n`` more bytes of this upload; ``PayloadTooLarge`` if they pass the limit."""
        if not self._fits(n) or (self.taken == 0 and self._new_file_over_count()):
            if not self._rechecked:
                self._rechecked = True
                await self._ledger._recheck(self._book)
            if self._new_file_over_count() and self.taken == 0:
                self._refuse(f"it already holds {len(self._book.held)} uploaded files, the most the router tracks")
            if not self._fits(n):
                held = self._book.total + self._book.pending
                self._refuse(
                    f"it may hold at most {self._ledger.limit} bytes of uploaded files and those uploaded "
                    f"to it already hold {held} bytes"
                )
        self._book.pending += n
        self.taken += n

    def _refuse(self, why: str) -> None:
        self._ledger._metrics.uploads_refused.inc()
        raise PayloadTooLarge(
            f"upload of {self._shown} to sandbox {self._sandbox} refused: {why} (files uploaded earlier "
            "are kept; delete those it no longer needs, or raise TURBOK_ROUTER_UPLOAD_TOTAL_LIMIT)"
        )

    def commit(self, size: int) -> None:
        """The file is in place with ``size`` bytes: charge it (replacing any earlier one there)."""
        self._book.charge(self._key, size)

