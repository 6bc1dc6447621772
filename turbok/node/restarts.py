"""How a container ended, in the kubelet's words, and when it may start again (CrashLoopBackOff).

- ``terminated(status)``: a ``containerStatuses[].state.terminated`` from the
  runtime's ``ContainerStatus``: ``exitCode``, ``reason`` (``Completed``,
  ``Error``, ``OOMKilled``, ``ContainerCannotRun``: the runtime's words, which
  are the kubelet's), ``message``, ``startedAt``, ``finishedAt``,
  ``containerID``.
- ``BackOff``: one container's crash-loop back-off, the kubelet's: the first
  restart is at once, then 10 s, 20 s, 40 s ... capped at 5 minutes, and a
  container that ran for 10 minutes starts afresh. While it waits, the
  container is ``waiting`` with reason ``CrashLoopBackOff`` and message
  ``back-off 20s restarting failed container=main pod=p_ns(uid)``, and the
  Pod gets a Warning ``BackOff`` Event (aggregated: one Event, a count).

Time is the node's ``Clock`` (monotonic seconds), so unit tests drive the
back-off with a fake clock. Moved here from the controllers
(issue 10: the node restarts containers, the controllers only read Pods).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from turbok.runtime.cri import ContainerStatus

__all__ = ["BACKOFF_BASE", "BACKOFF_MAX", "BACKOFF_RESET", "BackOff", "rfc3339", "terminated"]

BACKOFF_BASE = 10.0
BACKOFF_MAX = 300.0
#: A container that ran this long without ending starts its back-off afresh.
BACKOFF_RESET = 600.0


def rfc3339(epoch: float | None) -> str | None:
    """Epoch seconds as Kubernetes writes a time (RFC 3339, UTC, whole seconds)."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def terminated(status: ContainerStatus) -> dict[str, Any]:
    """The ``state.terminated`` of a container that ended, as the kubelet reports it."""
    code = status.exit_code
    reason = status.reason or ("Completed" if code == 0 else "Error")
    out: dict[str, Any] = {"exitCode": code if code is not None else (137 if reason == "OOMKilled" else 1),
                           "reason": reason}
    if status.message:
        out["message"] = status.message
    out["startedAt"] = rfc3339(status.started_at)
    out["finishedAt"] = rfc3339(status.finished_at)
    if status.container_id:
        out["containerID"] = status.container_id
    return out


@dataclass
class BackOff:
    """One container's restarts since it last ran for ``reset`` seconds."""

    base: float = BACKOFF_BASE
    cap: float = BACKOFF_MAX
    reset: float = BACKOFF_RESET
    #: ends counted since the back-off last started afresh
    consecutive: int = 0
    #: clock time before which the container must not start again
    until: float = 0.0
    #: the wait imposed by the last end (what the CrashLoopBackOff message says)
    delay: float = 0.0

    def ended(self, *, now: float, ran: float | None) -> float:
        """The container ended at ``now`` after running ``ran`` seconds: seconds to wait before restarting."""
        if ran is not None and ran >= self.reset:
            self.consecutive = 0
        self.delay = 0.0 if self.consecutive == 0 else min(self.base * 2 ** (self.consecutive - 1), self.cap)
        self.consecutive += 1
        self.until = now + self.delay
        return self.delay

    def waiting(self, now: float) -> float:
        """Seconds left before a restart is allowed (0: now)."""
        return max(self.until - now, 0.0)
