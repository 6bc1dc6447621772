"""Why a sandbox's main process ended, how often it was restarted, and how long to wait before the next try.

What the kubelet keeps in a Pod's container status (``lastState.terminated``,
``restartCount``) and its crash-loop back-off, for a Sandbox, whose upstream
status has no field for them:

- ``termination(state)``: the runtime's account of a sandbox that ended on
  its own, in the kubelet's words: reason ``OOMKilled`` (memory limit),
  ``Error`` (non-zero exit, the pids limit, a crash), ``Completed`` (exit 0).
- ``Restarts``: per sandbox, the restart count and the last termination,
  written to the annotations ``turbok.dev/restart-count`` and
  ``turbok.dev/last-termination`` (JSON: reason, exitCode, message,
  finishedAt), and the back-off: the first restart is immediate, then 10 s,
  20 s, ... up to 5 minutes, reset once the sandbox has run for 10 minutes.

Who calls: ``turbok.controllers.sandbox`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from turbok.api import meta as m
from turbok.runtime.base import Phase, RuntimeState

__all__ = ["LAST_TERMINATION", "RESTART_COUNT", "Restarts", "Termination", "termination"]

#: Sandbox annotations: restarts after the main process ended, and how it last ended.
RESTART_COUNT = "turbok.dev/restart-count"
LAST_TERMINATION = "turbok.dev/last-termination"

BACKOFF_BASE = 10.0
BACKOFF_MAX = 300.0
#: A sandbox that ran this long without ending starts its back-off afresh.
BACKOFF_RESET = 600.0

# Runtime reasons of a sandbox that ended on its own (``Stopped``/``Hibernated`` are ours).
_ENDED = ("Exited", "OOMKilled", "PidsLimit", "Crashed")


@dataclass(frozen=True)
class Termination:
    reason: str  # OOMKilled, Error or Completed
    exit_code: int | None
    message: str

    @property
    def failed(self) -> bool:
        return self.exit_code != 0

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "message": self.message, "finishedAt": m.now()}
        if self.exit_code is not None:
            out["exitCode"] = self.exit_code
        return out


def termination(state: RuntimeState, *, memory_limit: str | None = None,
                pids_limit: str | None = None) -> Termination | None:
    """How the sandbox ended, or None when it did not end on its own (stopped by turbok, never started)."""
    if state.phase is not Phase.STOPPED or state.reason not in _ENDED:
        return None
    if state.reason == "OOMKilled":
        limit = f" ({memory_limit})" if memory_limit else ""
        return Termination("OOMKilled", state.exit_code, f"the sandbox reached its memory limit{limit} and was "
                           "killed")
    if state.reason == "PidsLimit":
        limit = f" ({pids_limit} host tasks)" if pids_limit else ""
        return Termination("Error", state.exit_code, f"the sandbox reached its pids limit{limit} and was killed "
                           "(a fork bomb?)")
    if state.reason == "Crashed":
        return Termination("Error", None, state.message or "the sandbox ended and left no exit status")
    if state.exit_code == 0:
        return Termination("Completed", 0, "the main process exited with code 0")
    return Termination("Error", state.exit_code, state.message or f"the main process exited with code "
                       f"{state.exit_code}")


@dataclass
class Restarts:
    """One sandbox's restarts, kept in memory and mirrored to its annotations."""

    count: int = 0
    last: dict[str, Any] | None = None
    #: crashes since the sandbox last ran for ``BACKOFF_RESET``
    consecutive: int = 0
    #: the current termination has been counted (cleared when the sandbox runs again)
    pending: bool = False
    restart_at: float = 0.0
    started_at: float | None = field(default=None)

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Restarts:
        annotations = obj["metadata"].get("annotations") or {}
        count = annotations.get(RESTART_COUNT, "0")
        try:
            last = json.loads(annotations[LAST_TERMINATION]) if LAST_TERMINATION in annotations else None
        except ValueError:
            last = None
        return cls(count=int(count) if str(count).isdigit() else 0, last=last if isinstance(last, dict) else None)

    def ended(self, ended: Termination, *, restart: bool, now: float) -> float:
        """Count a termination once; seconds to wait before restarting (when ``restart``)."""
        self.pending = True
        self.last = ended.record()
        if not restart:
            return 0.0
        if self.started_at is not None and now - self.started_at >= BACKOFF_RESET:
            self.consecutive = 0
        delay = 0.0 if self.consecutive == 0 else min(BACKOFF_BASE * 2 ** (self.consecutive - 1), BACKOFF_MAX)
        self.consecutive += 1
        self.count += 1
        self.restart_at = now + delay
        return delay

    def running(self, now: float) -> None:
        if self.pending:
            self.pending = False
            self.started_at = now

    def annotate(self, obj: dict[str, Any]) -> bool:
        """Write the count and last termination into ``obj``'s annotations; True if that changed them."""
        annotations = obj["metadata"].setdefault("annotations", {})
        wanted = {RESTART_COUNT: str(self.count)}
        if self.last is not None:
            wanted[LAST_TERMINATION] = json.dumps(self.last, separators=(",", ":"), sort_keys=True)
        if self.count == 0:
            wanted.pop(RESTART_COUNT)
        changed = any(annotations.get(k) != v for k, v in wanted.items())
        annotations.update(wanted)
        return changed
