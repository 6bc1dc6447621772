"""The threads a pod's teardown blocks in, apart from the ones boots use.

``asyncio.to_thread`` runs on the event loop's default executor, which has
``min(32, CPUs + 4)`` threads: 6 on a 2-core machine. A boot makes about ten
blocking calls there (its disk, volumes, network, records); a teardown unmounts
overlays and disks (an unmount can wait on the kernel for tens of
milliseconds), removes network namespaces and deletes trees. With many Pods
deleted at once, teardowns queued there would make every boot's calls wait
behind them. So stopping and removing a pod sandbox blocks only in this pool
(``in_teardown_thread``): at most ``THREADS`` threads, shared by every runtime
of the process; boots never wait for it, and teardowns wait only for each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["THREADS", "in_teardown_thread"]

P = ParamSpec("P")
T = TypeVar("T")

#: Blocking teardown calls at once (unmounts, namespace removal, trees deleted). Most of a teardown waits on
#: runsc, not here: 8 serve the node's 16 teardown slots (``turbok.node.reaper``); more would only queue on the
#: kernel's mount lock.
THREADS = 8

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="pod-teardown")
        return _pool


async def in_teardown_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``asyncio.to_thread`` on the teardown threads."""
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor(), call)
