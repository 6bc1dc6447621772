"""The Python SDK for sandboxes: a client of the router's runtime API.

Owns: the wire format shared with the server (``wire``: headers, bodies,
exec-stream frames), the client (``client``: ``SandboxConnection`` with
``.commands`` and ``.files``), its async twin (``aio``:
``AsyncSandboxConnection``), what both send and how they read answers
(``_calls``, no I/O) and the errors (``errors``).

Never imports the server side (store, apiserver, controllers, runtime,
sandboxd): it speaks HTTP like any client, so it works against any turbok
router. Callers: the ``turbok sandbox`` CLI, user code.
"""

from turbok.sdk.aio import AsyncCommands, AsyncExecStream, AsyncFiles, AsyncSandboxConnection
from turbok.sdk.client import Commands, ExecStream, Files, SandboxConnection
from turbok.sdk.errors import (
    AccessDenied,
    BadRequest,
    CommandFailed,
    Conflict,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    RouterError,
    SandboxNotFound,
    SandboxNotReady,
    SdkError,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from turbok.sdk.wire import (
    CommandResult,
    ErrorFrame,
    ExitFrame,
    FileInfo,
    Frame,
    OutputFrame,
    auth_headers,
)

__all__ = [
    "AccessDenied",
    "AsyncCommands",
    "AsyncExecStream",
    "AsyncFiles",
    "AsyncSandboxConnection",
    "BadRequest",
    "CommandFailed",
    "CommandResult",
    "Commands",
    "Conflict",
    "ErrorFrame",
    "ExecStream",
    "ExitFrame",
    "FileInfo",
    "Files",
    "Frame",
    "InsufficientStorage",
    "NotFound",
    "OutputFrame",
    "PayloadTooLarge",
    "ProtocolError",
    "RouterError",
    "SandboxConnection",
    "SandboxNotFound",
    "SandboxNotReady",
    "SdkError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "auth_headers",
]
