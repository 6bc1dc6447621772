"""The runtime API of sandboxes: the agent inside each one, and the router in front of them all.

Owns: the sandboxd agent that runs inside every Sandbox's container and serves
upstream's sandboxd API (gRPC ``ProcessService``, REST ``/v1/files``), the legacy
python-runtime protocol and turbok's spawn (``agent``, a package that imports
only itself; ``injection`` stages it and tells the pod runtime how to start it);
the router, one loopback endpoint for every sandbox chosen by the
``X-Sandbox-ID``/``X-Sandbox-Namespace`` headers (``router``), which serves the
legacy protocol (``/execute``, ``/upload``, ``/download``, ``/list``,
``/exists``) plus turbok's exec stream under its own bounds (``execute``,
``files``, ``confine``, ``limits``) through the sandbox's agent or the pod
runtime (``backend``, ``agentclient``), and forwards any other port of a Pod
(``proxy``: HTTP and websockets; ``h2proxy``: HTTP/2 and gRPC); the router's
settings (``context.RouterConfig``), the resolver contract (``resolver``),
metrics (``metrics``) and errors (``errors``).

Does not own: how a Pod runs (``turbok.runtime``, used through its
``PodRuntime`` contract), which sandboxes exist (the control plane implements
``SandboxResolver`` from its store), or the wire format's client side
(``turbok.sdk.wire``, imported from there so both ends share it).

The control plane calls ``create_router_app`` and serves the result on
127.0.0.1 (and its Unix socket). See docs/sandboxd.md.
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
