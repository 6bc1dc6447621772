"""Which pod sandboxes' processes ended, told as it happens: the node's relist without polling every sandbox.

The kubelet's PLEG lists every container every second; the evented PLEG (KEP-3386)
has the runtime send events and relists only rarely. ``ExitWatch`` is the
evented half for runtimes whose containers are host processes (gVisor's
sandbox and gofer processes): ``watch(pid, key)`` opens a pidfd, one thread
waits on all of them with epoll, and when a process ends its ``key`` (the pod
sandbox id) goes to every subscriber (one watch per process, ``EXITS``; a
subscriber ignores the keys it does not know). Nothing is read per sandbox while they
run: 1,800 idle sandboxes cost the thread nothing.

A pid is watched at most once per key; ``watch`` is cheap to call on every
status read (a set lookup), which is how the runtime keeps watches current,
including for sandboxes an earlier control plane started. A process already
gone when watched is reported at once. Linux 5.3+ (``pidfd_open``); elsewhere
``available`` is False and callers poll as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

__all__ = ["EXITS", "ExitWatch"]

log = logging.getLogger(__name__)


class ExitWatch:
    """Subscribers learn the key of each watched process that ends (in no particular order, once each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_fd: dict[int, tuple[int, str]] = {}
        self._watched: set[tuple[int, str]] = set()
        self._subscribers: list[Callable[[str], None]] = []
        self._epoll: select.epoll | None = None
        self.available = hasattr(os, "pidfd_open")

    def subscribe(self, callback: Callable[[str], None],
                  loop: asyncio.AbstractEventLoop | None = None) -> Callable[[], None]:
        """Call ``callback(key)`` for each ended process: in ``loop`` (thread-safe) when given, else on the
        watch's own thread. Returns what ends the subscription."""
        deliver = callback
        if loop is not None:
            target = loop

            def deliver(key: str) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed
                    target.call_soon_threadsafe(callback, key)

        self._subscribers.append(deliver)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(deliver)

        return unsubscribe

    def watch(self, pid: int, key: str) -> None:
        """Tell subscribers ``key`` when process ``pid`` ends (at once if it has)."""
        if not self.available or (pid, key) in self._watched:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._tell(key)
            return
        except OSError as e:  # no pidfds here (an old kernel, a seccomp filter): callers keep polling
            log.info("cannot watch process %d for its end: %s", pid, e)
            return
        with self._lock:
            if (pid, key) in self._watched:
                os.close(fd)
                return
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._loop, name="sandbox-exits", daemon=True).start()
            self._watched.add((pid, key))
            self._by_fd[fd] = (pid, key)
            self._epoll.register(fd, select.EPOLLIN)

    def watching(self) -> int:
        return len(self._by_fd)

    def _tell(self, key: str) -> None:
        for callback in list(self._subscribers):
            try:
                callback(key)
            except Exception:
                log.exception("an exit subscriber failed for %s", key)

    def _loop(self) -> None:
        assert self._epoll is not None
        while True:
            try:
                events = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                with self._lock:
                    found = self._by_fd.pop(fd, None)
                    if found is None:
                        continue
                    self._watched.discard(found)
                    with contextlib.suppress(OSError):
                        self._epoll.unregister(fd)
                    os.close(fd)
                self._tell(found[1])


#: The one watch of this process (every runtime's sandboxes share its thread; subscribers look up the keys
#: they know).
EXITS = ExitWatch()
