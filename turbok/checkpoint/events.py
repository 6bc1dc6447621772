"""What happened to checkpoints on this node, for people and for the library: the event log.

Every noticeable thing an agent does to a part outside the happy path is an
event: a lease that died with its client, a part lost in a restart, a copy
that failed its hashes, a repair, a quarantine, an eviction of another job's
part, a quota refusal. Events are kept in memory (the newest ``keep``) and
appended to ``<disk_dir>/.events.jsonl`` (rotated at ``max_bytes``), so an
agent that restarts still knows what its predecessor lost: ``wait`` answers
"lost" for a step the library staged on an agent that died before committing
it, instead of waiting forever (issue 12, item 9).

Read with ``turbok checkpoint events`` or the ``events`` operation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from turbok.checkpoint.manifest import PartKey

__all__ = ["EventLog"]

log = logging.getLogger(__name__)


class EventLog:
    """Bounded, persisted log of checkpoint events; thread-safe."""

    def __init__(self, path: Path | None, *, keep: int = 2000, max_bytes: int = 4 << 20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        if path is not None and path.exists():
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines()[-keep:]:
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict):
                            self._events.append(event)

    def record(self, reason: str, message: str, key: PartKey | None = None, *, warning: bool = True,
               tier: str = "") -> None:
        event: dict[str, Any] = {"time": time.time(), "type": "Warning" if warning else "Normal",
                                 "reason": reason, "message": message}
        if key is not None:
            event.update(job=key.job, step=key.step, rank=key.rank)
        if tier:
            event["tier"] = tier
        (log.warning if warning else log.info)("checkpoint event %s: %s", reason, message)
        with self._lock:
            self._events.append(event)
            if self.path is None:
                return
            try:
                if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                    os.replace(self.path, self.path.with_suffix(".jsonl.1"))
                with open(self.path, "a") as f:
                    f.write(json.dumps(event, separators=(",", ":")) + "\n")
            except OSError as e:  # the log must never break the agent
                log.warning("checkpoint events: cannot write %s: %s", self.path, e)

    def list(self, job: str | None = None, *, since: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events if (job is None or e.get("job") == job) and e["time"] >= since]

    def about(self, key: PartKey, reasons: tuple[str, ...]) -> dict[str, Any] | None:
        """The newest event about ``key`` with one of ``reasons``."""
        with self._lock:
            for e in reversed(self._events):
                if (e.get("job"), e.get("step"), e.get("rank")) == (key.job, key.step, key.rank) and e["reason"] in reasons:
                    return dict(e)
        return None
