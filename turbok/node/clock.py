"""The node's sense of time: monotonic seconds and sleeping, replaceable by a fake in tests.

Back-off (``restarts``), probe periods (``probes``), grace periods and the
lease all wait on a ``Clock``, so unit tests drive minutes of kubelet timing
in milliseconds (``turbok.node.testing.FakeClock``). Wall-clock timestamps in
status and Events (RFC 3339) come from ``turbok.api.meta.now``, not from here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (only differences mean anything)."""

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real one."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))
