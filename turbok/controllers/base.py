"""The reconciler contract: what a reconcile returns and which errors mean what.

A ``Reconciler`` owns one kind. The manager calls ``reconcile(namespace,
name)`` whenever the object, or anything ``related`` maps back to it, changes,
and again at start. A reconcile returns ``Result``: done, or come back after
``requeue_after`` seconds (for deadlines such as ``shutdownTime``). Raising
``TemporaryError(delay=...)`` retries after that delay; ``PermanentError``
logs and waits for the next change; ``RetryError`` (a refusal the reconcile
has already reported in status) and any other exception retry with the
manager's exponential backoff. A ``Conflict`` from a write is retried at once:
the object changed under us, so we read it again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from turbok.api.kinds import Kind
from turbok.controllers.client import Client, Obj
from turbok.errors import TurbokError

__all__ = ["DONE", "Key", "PermanentError", "Reconciler", "Result", "RetryError", "TemporaryError", "requeue"]

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


DONE = Result()


def requeue(after: float) -> Result:
    return Result(requeue_after=max(after, 0.0))


class ControllerError(TurbokError):
    """Root of the errors reconcilers raise to steer retries."""


class TemporaryError(ControllerError):
    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ControllerError):
    """Retrying will not help until the object changes."""


class RetryError(ControllerError):
    """The pass failed and said so in status; retry with the manager's back-off (logged without a traceback)."""


def _not_started(key: Key, after: float = 0.0) -> None:
    """``Reconciler.enqueue`` before a manager runs the reconciler: nothing to queue into."""


class Reconciler(abc.ABC):
    #: The kind this reconciler owns.
    kind: Kind
    #: Workers reconciling different keys at once.
    concurrency: int = 2
    #: Seconds to gather changes before reconciling a key (0: at once). For reconcilers whose
    #: pass is costly and not on anyone's critical path, so that a burst costs one pass.
    coalesce: float = 0.0

    def __init__(self, client: Client) -> None:
        self.client = client
        #: Set by the manager: queue one of this reconciler's keys, optionally after a delay.
        self.enqueue: Callable[[Key, float], None] = _not_started

    def related(self, kind: Kind, obj: Obj, deleted: bool) -> Iterable[Key]:
        """Keys of this reconciler's objects to revisit when ``obj`` (of another kind) changes.

        ``deleted``: the change was the object's deletion (``obj`` is its last state). Called for
        every change in commit order, so a reconciler may keep an index of what it watches here.
        """
        return ()

    @abc.abstractmethod
    async def reconcile(self, namespace: str, name: str) -> Result: ...

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Called once before the first reconcile (re-adoption, sweeps)."""

    async def stop(self) -> None:  # noqa: B027 (optional hook)
        """Called once at shutdown."""
