"""The control plane's event-loop watch: lag and GC pauses reach its metrics, long stalls its log."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from turbok.embedded.loopwatch import LoopWatch


def a_slow_handler() -> None:
    time.sleep(0.3)  # blocks the loop, as a slow handler would


async def test_a_blocked_loop_and_a_collection_are_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    watch = LoopWatch(registry, interval=0.01, warn_after=0.1)
    watch.start()
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="turbok.embedded.loopwatch"):
        a_slow_handler()
        await asyncio.sleep(0.05)
    gc.collect()
    await watch.stop()

    def value(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        assert found is not None, name
        return found

    assert value("turbok_event_loop_lag_seconds_count") >= 3
    assert value("turbok_event_loop_lag_seconds_sum") >= 0.25
    assert value("turbok_event_loop_lag_seconds_bucket", le="0.25") < value("turbok_event_loop_lag_seconds_count")
    assert value("turbok_gc_pause_seconds_count", generation="2") >= 1
    stalls = [r.getMessage() for r in caplog.records if "event loop stalled for" in r.getMessage()]
    assert stalls
    assert "a_slow_handler (test_loopwatch.py:" in stalls[0], stalls[0]
    assert watch._on_gc not in gc.callbacks  # stopped: no callback left behind
