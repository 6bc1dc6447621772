"""What every handler gets: the router's settings (``RouterConfig``) and one request's ``Call``.

``turbok.sandboxd.router`` builds a ``Call`` after authenticating the request
and resolving its sandbox; the handlers in ``execute`` and ``files`` take it.

Every bound of the router is a ``RouterConfig`` field. ``create_router_app``
takes each as a keyword; one not given comes from the environment of the
process (``RouterConfig.from_env``: ``TURBOK_ROUTER_<FIELD>``, e.g.
``TURBOK_ROUTER_EXEC_CONCURRENCY=16``; sizes as bytes or with a ``Ki``/``Mi``/
``Gi`` suffix), else the default here. docs/sandboxd.md lists them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from aiohttp import web

from turbok import settings
from turbok.runtime.errors import InvalidSandboxSpec, RuntimeError_
from turbok.runtime.errors import SandboxNotRunning as RuntimeNotRunning
from turbok.runtime.process import DEFAULT_OUTPUT_LIMIT
from turbok.sandboxd.backend import Backend
from turbok.sandboxd.errors import (
    BadRequest,
    ExecFailed,
    NotFound,
    PayloadTooLarge,
    SandboxdError,
    SandboxNotRunning,
)
from turbok.sandboxd.limits import ExecSlots, UploadLedger
from turbok.sandboxd.metrics import RouterMetrics
from turbok.sdk.wire import parse_timeout

__all__ = [
    "DEFAULT_EXEC_CONCURRENCY",
    "DEFAULT_EXEC_QUEUE",
    "DEFAULT_EXEC_QUEUE_WAIT",
    "DEFAULT_EXEC_TIMEOUT",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_OUTPUT_RATE",
    "DEFAULT_PROXY_BODY_LIMIT",
    "DEFAULT_PROXY_TIMEOUT",
    "DEFAULT_UPLOAD_LIMIT",
    "DEFAULT_UPLOAD_TOTAL_LIMIT",
    "ENV_PREFIX",
    "MAX_EXEC_TIMEOUT",
    "MAX_JSON_BODY",
    "Call",
    "RouterConfig",
    "runtime_failure",
]

log = logging.getLogger("turbok.sandboxd")

#: Seconds a command may run when the request names no timeout (as upstream's runtime).
DEFAULT_EXEC_TIMEOUT = 300.0
#: The longest timeout a request may ask for; longer asks are refused (400).
MAX_EXEC_TIMEOUT = 3600.0
#: Largest JSON request body (``/execute``, ``/turbok/v1/exec`` with its base64 stdin).
MAX_JSON_BODY = 16 * 1024 * 1024
#: Largest file ``/upload`` accepts (413 beyond it).
DEFAULT_UPLOAD_LIMIT = 1024 * 1024 * 1024
#: Most bytes the files uploaded to one sandbox may hold at once (413 beyond it).
DEFAULT_UPLOAD_TOTAL_LIMIT = 4 * 1024 * 1024 * 1024
#: Commands one sandbox runs at once through the router (each is a process in the sandbox and, where
#: the sandbox has no agent, a ``runsc exec`` on the host, about 17 MiB of host memory).
DEFAULT_EXEC_CONCURRENCY = 8
#: Commands that may wait for a slot per sandbox; more are refused at once (429).
DEFAULT_EXEC_QUEUE = 32
#: Seconds a command waits for a slot before it is refused (429).
DEFAULT_EXEC_QUEUE_WAIT = 30.0
#: Bytes of command output per second the router reads from one sandbox, all its commands
#: together (a second's worth may come at once); past it pipes fill and commands wait. Reading
#: costs the router about 5 ms of CPU per MiB, so this bounds a flood to a few % of a core.
DEFAULT_OUTPUT_RATE = 8 * 1024 * 1024
#: Seconds a proxied request (any port, ``X-Sandbox-Port``) waits for the Pod to answer, and between two
#: pieces of its answer (upstream's sandbox-router: 180 s).
DEFAULT_PROXY_TIMEOUT = 180.0
#: Largest request body proxied to a Pod's port.
DEFAULT_PROXY_BODY_LIMIT = 1024 * 1024 * 1024
#: ``RouterConfig.from_env`` reads ``TURBOK_ROUTER_<FIELD NAME IN CAPITALS>``.
ENV_PREFIX = "TURBOK_ROUTER_"


@dataclass(frozen=True)
class RouterConfig:
    """The router's bounds; see the module docstring for how each is set."""

    #: Cap on captured stdout and on stderr of ``/execute``, each, in bytes; a command whose
    #: output passes it is stopped (``turbok.runtime.process.collect``'s ``flood_grace``).
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT
    max_exec_timeout: float = MAX_EXEC_TIMEOUT
    upload_limit: int = DEFAULT_UPLOAD_LIMIT
    upload_total_limit: int = DEFAULT_UPLOAD_TOTAL_LIMIT
    exec_concurrency: int = DEFAULT_EXEC_CONCURRENCY
    exec_queue: int = DEFAULT_EXEC_QUEUE
    exec_queue_wait: float = DEFAULT_EXEC_QUEUE_WAIT
    output_rate: int = DEFAULT_OUTPUT_RATE
    proxy_timeout: float = DEFAULT_PROXY_TIMEOUT
    proxy_body_limit: int = DEFAULT_PROXY_BODY_LIMIT

    def __post_init__(self) -> None:
        settings.check_positive(self, zero_allowed=frozenset({"exec_queue"}))
        if self.exec_timeout > self.max_exec_timeout:
            raise settings.SettingError("router limits: exec_timeout must be at most max_exec_timeout")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> RouterConfig:
        """The settings ``given`` (None: not given), the rest from ``TURBOK_ROUTER_*`` or the defaults."""
        names = {f.name: ENV_PREFIX + f.name.upper() for f in fields(cls)}
        return settings.from_env(cls, names, environ, **given)


@dataclass(frozen=True)
class Call:
    """One authenticated request for one resolved sandbox."""

    request: web.Request
    #: How this request reaches the sandbox's container (``turbok.sandboxd.backend``).
    backend: Backend
    config: RouterConfig
    metrics: RouterMetrics
    slots: ExecSlots
    uploads: UploadLedger
    namespace: str
    name: str
    sandbox_id: str
    #: The path argument of download/list/exists, percent-decoded once ("" for the others).
    path: str = ""

    @property
    def sandbox(self) -> str:
        return f"{self.namespace}/{self.name}"

    def workdir(self) -> Path:
        """The container's host-served work directory (the files API without an agent)."""
        found = self.backend.workdir()
        if found is None:
            raise NotFound(
                f"sandbox {self.sandbox}: its image has no work directory the router can serve files from, "
                "and its sandboxd agent is not reachable (a Pod without an address on the pod network)"
            )
        return found

    def timeout(self, requested: Any) -> float:
        """The timeout to run with: the request's (validated, capped) or the default."""
        try:
            seconds = parse_timeout(requested)
        except ValueError as e:
            raise BadRequest(str(e)) from e
        if seconds is None:
            return self.config.exec_timeout
        if seconds > self.config.max_exec_timeout:
            raise BadRequest(
                f"timeout_seconds {seconds:g} is above the router's maximum of {self.config.max_exec_timeout:g}"
            )
        return seconds

    async def json_body(self) -> Any:
        try:
            raw = await self.request.read()
        except web.HTTPRequestEntityTooLarge as e:
            raise PayloadTooLarge(f"request body too large (at most {MAX_JSON_BODY} bytes)") from e
        try:
            return json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from e


def runtime_failure(err: RuntimeError_, call: Call | str) -> SandboxdError:
    """A runtime error as the answer it deserves; the runtime's own text is logged, not answered.

    ``call``: the request's ``Call``, or the sandbox's ``namespace/name`` before there is one."""
    sandbox = call if isinstance(call, str) else call.sandbox
    log.debug("runtime error for sandbox %s: %s", sandbox, err)
    if isinstance(err, RuntimeNotRunning):
        return SandboxNotRunning(
            f"sandbox {sandbox} is not running (it stopped, or is restarting); retry once it is Ready"
        )
    if isinstance(err, InvalidSandboxSpec):
        return BadRequest(f"sandbox {sandbox}: {err}")
    return ExecFailed(f"the runtime failed to run the command in sandbox {sandbox}; retry later")
