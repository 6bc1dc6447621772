"""Registry writes on worker threads: what ``ObjectRegistry.offload`` runs on.

Decoding, pruning, defaulting and validating a 1.5 MiB object takes the CPU for
hundreds of milliseconds. ``Workers.run`` does that on one of two threads while
the event loop keeps serving; the registry's commit step, when it finds itself
on a worker (``worker_loop``), hands the commit back to the loop (``on_loop``)
and waits for it, so rows, revisions and watch events stay in the one order the
loop gives them. The commit first checks that the object is still the one the
write started from (``Raced`` if not), and ``run`` then does the whole write
again on the new object, as kube-apiserver's update retries.

Reads from a worker are safe: the store's index is plain dicts, read atomically
under the GIL, and nothing but the loop writes them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from turbok.api.status import Conflict

__all__ = ["Raced", "Workers", "names_version", "on_loop", "worker_loop"]

T = TypeVar("T")

#: Times a write is redone when another write committed the same object first.
RACE_RETRIES = 5
#: The GIL switch interval once writes run on workers (seconds; Python's default is 0.005).
SWITCH_INTERVAL = 0.0005
#: Longest a worker waits for the loop to run its commit (only a stopping loop is this late).
COMMIT_WAIT = 30.0

_local = threading.local()


class Raced(Conflict):
    """A write on a worker found its object changed (or created, or gone) when it came to commit."""


def worker_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop to commit on, when called on a worker thread; None on the loop itself."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    return loop


class Workers:
    def __init__(self, max_workers: int = 2) -> None:
        self._max_workers = max_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self, write: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._max_workers, thread_name_prefix="registry-write")
            # A worker computing holds the GIL; the loop, wanting it back after each system call, would
            # wait up to the switch interval (5 ms) every time. A shorter one keeps the loop responsive.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))

        def run() -> T:
            _local.loop = loop
            try:
                for _ in range(RACE_RETRIES - 1):
                    try:
                        return write(*args, **kwargs)
                    except Raced:
                        continue
                return write(*args, **kwargs)
            finally:
                _local.loop = None

        return await loop.run_in_executor(self._pool, run)


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` on the event loop from a worker thread and wait for its result (or its error)."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as e:  # handed to the waiting thread, which raises it
            done.set_exception(e)

    loop.call_soon_threadsafe(call)
    return done.result(timeout=COMMIT_WAIT)


def names_version(patch: Any) -> bool:
    """Whether a patch sets ``metadata.resourceVersion`` itself (then a conflict is the client's to see)."""
    if isinstance(patch, dict):
        md = patch.get("metadata")
        return isinstance(md, dict) and "resourceVersion" in md
    if isinstance(patch, list):
        return any(isinstance(op, dict) and str(op.get("path", "")).startswith("/metadata/resourceVersion")
                   for op in patch)
    return False
