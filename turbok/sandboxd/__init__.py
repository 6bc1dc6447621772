"""The runtime API of sandboxes and the router in front of it.

Owns: the HTTP protocol the official Agent Sandbox client speaks (``/execute``,
``/upload``, ``/download``, ``/list``, ``/exists``) plus turbok's exec stream,
served for every sandbox from one loopback endpoint chosen by the
``X-Sandbox-ID``/``X-Sandbox-Namespace`` headers (``router``); running commands
(``execute``); the files API and its confinement to the work directory against
hostile symlinks (``files``, ``confine``); per-sandbox bounds: command slots,
output budget, uploaded bytes (``limits``); the router's settings
(``context.RouterConfig``); the resolver contract (``resolver``); metrics
(``metrics``); errors (``errors``).

Does not own: how a sandbox runs (``turbok.runtime``, used through its
``Runtime`` contract), which sandboxes exist (the control plane implements
``SandboxResolver`` from its store), or the wire format's client side
(``turbok.sdk.wire``, imported from there so both ends share it).

The control plane calls ``create_router_app`` and serves the result on
127.0.0.1. See docs/sandboxd.md.
"""

from turbok.sandboxd.confine import SANDBOX_WORKDIR
from turbok.sandboxd.context import (
    DEFAULT_EXEC_CONCURRENCY,
    DEFAULT_EXEC_QUEUE,
    DEFAULT_EXEC_QUEUE_WAIT,
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_OUTPUT_LIMIT,
    DEFAULT_OUTPUT_RATE,
    DEFAULT_UPLOAD_LIMIT,
    DEFAULT_UPLOAD_TOTAL_LIMIT,
    MAX_EXEC_TIMEOUT,
    RouterConfig,
)
from turbok.sandboxd.errors import (
    AccessDenied,
    BadRequest,
    Conflict,
    ExecFailed,
    InsufficientStorage,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SandboxdError,
    SandboxNotFound,
    SandboxNotReady,
    SandboxNotRunning,
    SandboxRestarting,
    TooManyRequests,
    Unauthorized,
)
from turbok.sandboxd.metrics import RouterMetrics
from turbok.sandboxd.resolver import SandboxResolver, StaticResolver
from turbok.sandboxd.router import RunningRouter, create_router_app, serve_router

__all__ = [
    "DEFAULT_EXEC_CONCURRENCY",
    "DEFAULT_EXEC_QUEUE",
    "DEFAULT_EXEC_QUEUE_WAIT",
    "DEFAULT_EXEC_TIMEOUT",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_OUTPUT_RATE",
    "DEFAULT_UPLOAD_LIMIT",
    "DEFAULT_UPLOAD_TOTAL_LIMIT",
    "MAX_EXEC_TIMEOUT",
    "SANDBOX_WORKDIR",
    "AccessDenied",
    "BadRequest",
    "Conflict",
    "ExecFailed",
    "InsufficientStorage",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RouterConfig",
    "RouterMetrics",
    "RunningRouter",
    "SandboxNotFound",
    "SandboxNotReady",
    "SandboxNotRunning",
    "SandboxResolver",
    "SandboxRestarting",
    "SandboxdError",
    "StaticResolver",
    "TooManyRequests",
    "Unauthorized",
    "create_router_app",
    "serve_router",
]
