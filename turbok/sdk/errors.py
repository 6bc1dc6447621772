"""Errors the sandbox SDK raises, and how a router error body becomes one.

The tree (HTTP code and the ``reason`` the router puts in its JSON body)::

    SdkError
    ├── TransportError             the router could not be reached (no answer)
    ├── ProtocolError              the answer did not follow the runtime protocol
    ├── CommandFailed              ``commands.run(check=True)`` saw a non-zero exit
    └── RouterError                the router answered with an error (any 4xx/5xx)
        ├── BadRequest             (400 BadRequest)
        ├── Unauthorized           (401 Unauthorized)
        ├── AccessDenied           (403 AccessDenied: a path outside the work directory)
        ├── NotFound               (404 NotFound: no such file or directory)
        │   └── SandboxNotFound    (404 SandboxNotFound)
        ├── Conflict               (409 Conflict)
        ├── PayloadTooLarge        (413 PayloadTooLarge)
        ├── TooManyRequests        (429 TooManyRequests: the sandbox runs all the commands it may)
        ├── SandboxNotReady        (503 SandboxNotReady, SandboxNotRunning, SandboxRestarting, ExecFailed)
        ├── InsufficientStorage    (507 InsufficientStorage: the sandbox's disk is full)
        └── BadGateway             (502 BadGateway, 504 GatewayTimeout: a Pod's port, X-Sandbox-Port)

``error_from_response`` picks the class by ``reason`` first (a 404 may mean a
missing file or a missing sandbox), then by status. Used by ``turbok.sdk.client``;
the server side (``turbok.sandboxd.errors``) writes the same reasons.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from turbok.errors import TurbokError

if TYPE_CHECKING:
    from turbok.sdk.wire import CommandResult

__all__ = [
    "AccessDenied",
    "BadGateway",
    "BadRequest",
    "CommandFailed",
    "Conflict",
    "InsufficientStorage",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "RouterError",
    "SandboxNotFound",
    "SandboxNotReady",
    "SdkError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "error_from_response",
]


class SdkError(TurbokError):
    """A sandbox operation through the router failed; the message says why."""


class TransportError(SdkError):
    """No answer from the router (refused, reset, timed out)."""


class ProtocolError(SdkError):
    """The router's answer did not follow the runtime protocol."""


class CommandFailed(SdkError):
    """A command exited non-zero (or timed out) and the caller asked to check."""

    def __init__(self, result: CommandResult) -> None:
        what = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
        tail = result.stderr.strip().splitlines()[-1:] or [""]
        super().__init__(f"command {what}" + (f": {tail[0]}" if tail[0] else ""))
        self.result = result


class RouterError(SdkError):
    status: int = 500
    reason: str = "InternalError"

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Instances keep what the router actually sent, which may differ from the class default.
        self.status = status if status is not None else type(self).status
        self.reason = reason or type(self).reason


class BadRequest(RouterError):
    status = 400
    reason = "BadRequest"


class Unauthorized(RouterError):
    status = 401
    reason = "Unauthorized"


class AccessDenied(RouterError):
    status = 403
    reason = "AccessDenied"


class NotFound(RouterError):
    status = 404
    reason = "NotFound"


class SandboxNotFound(NotFound):
    status = 404
    reason = "SandboxNotFound"


class Conflict(RouterError):
    status = 409
    reason = "Conflict"


class PayloadTooLarge(RouterError):
    status = 413
    reason = "PayloadTooLarge"


class TooManyRequests(RouterError):
    """The sandbox already runs (and queues) all the commands it may; retry after a while."""

    status = 429
    reason = "TooManyRequests"


class SandboxNotReady(RouterError):
    status = 503
    reason = "SandboxNotReady"


class InsufficientStorage(RouterError):
    status = 507
    reason = "InsufficientStorage"


class BadGateway(RouterError):
    status = 502
    reason = "BadGateway"


_BY_REASON: dict[str, type[RouterError]] = {
    cls.reason: cls
    for cls in (
        BadRequest,
        Unauthorized,
        AccessDenied,
        NotFound,
        SandboxNotFound,
        Conflict,
        PayloadTooLarge,
        TooManyRequests,
        SandboxNotReady,
        InsufficientStorage,
        BadGateway,
    )
}
_BY_REASON["GatewayTimeout"] = BadGateway
_BY_REASON["SandboxNotRunning"] = SandboxNotReady
_BY_REASON["SandboxRestarting"] = SandboxNotReady
_BY_REASON["ExecFailed"] = SandboxNotReady
_BY_STATUS: dict[int, type[RouterError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: AccessDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: BadRequest,
    429: TooManyRequests,
    503: SandboxNotReady,
    507: InsufficientStorage,
    502: BadGateway,
    504: BadGateway,
}


def error_from_response(status: int, body: bytes) -> RouterError:
    """The error for a non-2xx answer; ``body`` is the (bounded) response body."""
    message, reason = "", ""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("detail") or "")
            reason = str(data.get("reason") or "")
    except ValueError:
        message = body[:500].decode("utf-8", "replace").strip()
    cls = _BY_REASON.get(reason) or _BY_STATUS.get(status, RouterError)
    return cls(message or f"router answered HTTP {status}", status=status, reason=reason or None)
