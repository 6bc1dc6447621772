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
    ├── SandboxNotReady            (503 SandboxNotReady)
    └── SandboxNotRunning          (503 SandboxNotRunning: the runtime has no such process tree)

A ``SandboxResolver`` raises ``SandboxNotFound`` and ``SandboxNotReady``; the
handlers raise the rest; ``turbok.sandboxd.router`` turns any of them into a
response with ``to_json()``. ``turbok.sdk.errors`` maps the reasons back.
"""

from __future__ import annotations

from typing import Any

from turbok.errors import TurbokError

__all__ = [
    "AccessDenied",
    "BadRequest",
    "Conflict",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "SandboxNotFound",
    "SandboxNotReady",
    "SandboxNotRunning",
    "SandboxdError",
    "Unauthorized",
]


class SandboxdError(TurbokError):
    status: int = 500
    reason: str = "InternalError"

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


class SandboxNotReady(SandboxdError):
    """The sandbox exists but is not Ready; the message says what to wait for."""

    status = 503
    reason = "SandboxNotReady"


class SandboxNotRunning(SandboxdError):
    """The resolver said Ready but the runtime has nothing running under that id."""

    status = 503
    reason = "SandboxNotRunning"
