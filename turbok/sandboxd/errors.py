"""Errors of the runtime API, each one an HTTP answer waiting to be sent.

The tree (HTTP code, ``reason`` in the JSON body ``{"message", "reason"}``)::

    SandboxdError                  (500 InternalError)
    ├── BadRequest                 (400 BadRequest)
    ├── Unauthorized               (401 Unauthorized)
    ├── AccessDenied               (403 AccessDenied: path outside the work directory)
    ├── NotFound                   (404 NotFound: no such file or directory)
    ├── SandboxNotFound            (404 SandboxNotFound)
    ├── MethodNotAllowed           (405 MethodNotAllowed)
    ├── Conflict                   (409 Conflict)
    ├── PayloadTooLarge            (413 PayloadTooLarge)
    ├── TooManyRequests            (429 TooManyRequests: the sandbox's command slots and queue are full)
    ├── SandboxNotReady            (503 SandboxNotReady)
    ├── SandboxNotRunning          (503 SandboxNotRunning: the runtime has no such process tree)
    ├── SandboxRestarting          (503 SandboxRestarting: it stopped or restarted under a command)
    ├── ExecFailed                 (503 ExecFailed: the runtime could not run the command)
    ├── InsufficientStorage        (507 InsufficientStorage: the sandbox's disk is full)
    ├── BadGateway                 (502 BadGateway: nothing answers on the Pod's port, or it broke off)
    └── GatewayTimeout             (504 GatewayTimeout: the Pod's port did not answer in time)

A ``SandboxResolver`` raises ``SandboxNotFound`` and ``SandboxNotReady``; the
handlers raise the rest; ``turbok.sandboxd.router`` turns any of them into a
response with ``to_json()``, and a ``Retry-After`` header where ``retry_after``
is set. ``turbok.sdk.errors`` maps the reasons back. Messages never carry the
runtime's own error text (runsc's, urpc's): that is logged at debug.
"""

from __future__ import annotations

from typing import Any

from turbok.errors import TurbokError

__all__ = [
    "AccessDenied",
    "BadGateway",
    "BadRequest",
    "Conflict",
    "ExecFailed",
    "GatewayTimeout",
    "InsufficientStorage",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "SandboxNotFound",
    "SandboxNotReady",
    "SandboxNotRunning",
    "SandboxRestarting",
    "SandboxdError",
    "TooManyRequests",
    "Unauthorized",
]


class SandboxdError(TurbokError):
    status: int = 500
    reason: str = "InternalError"
    #: Seconds for the ``Retry-After`` header; None: no header (the request will not do better later).
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "reason": self.reason}


class BadRequest(SandboxdError):
    status = 400
    reason = "BadRequest"


class Unauthorized(SandboxdError):
    status = 401
    reason = "Unauthorized"


class AccessDenied(SandboxdError):
    """A path that leaves the work directory. The message starts "Access denied", as upstream's."""

    status = 403
    reason = "AccessDenied"

    def __init__(self, detail: str) -> None:
        super().__init__(f"Access denied: {detail}")


class NotFound(SandboxdError):
    status = 404
    reason = "NotFound"


class SandboxNotFound(SandboxdError):
    """No sandbox of that name in that namespace (raised by a ``SandboxResolver``)."""

    status = 404
    reason = "SandboxNotFound"


class MethodNotAllowed(SandboxdError):
    status = 405
    reason = "MethodNotAllowed"


class Conflict(SandboxdError):
    status = 409
    reason = "Conflict"


class PayloadTooLarge(SandboxdError):
    status = 413
    reason = "PayloadTooLarge"


class TooManyRequests(SandboxdError):
    """The sandbox runs as many commands as it may and its queue is full (or the wait was too long)."""

    status = 429
    reason = "TooManyRequests"
    retry_after = 1


class SandboxNotReady(SandboxdError):
    """The sandbox exists but is not Ready; the message says what to wait for."""

    status = 503
    reason = "SandboxNotReady"
    retry_after = 1


class SandboxNotRunning(SandboxdError):
    """The resolver said Ready but the runtime has nothing running under that id."""

    status = 503
    reason = "SandboxNotRunning"
    retry_after = 1


class SandboxRestarting(SandboxdError):
    """The sandbox stopped or restarted while a command started or ran; its result is lost."""

    status = 503
    reason = "SandboxRestarting"
    retry_after = 1


class ExecFailed(SandboxdError):
    """The runtime could not start or follow the command (host resources, the sandbox's pids limit)."""

    status = 503
    reason = "ExecFailed"
    retry_after = 1


class InsufficientStorage(SandboxdError):
    """A write ran out of space: the sandbox's disk limit or the host's disk."""

    status = 507
    reason = "InsufficientStorage"


class BadGateway(SandboxdError):
    status = 502
    reason = "BadGateway"


class GatewayTimeout(SandboxdError):
    status = 504
    reason = "GatewayTimeout"
