"""What every handler gets: the router's settings (``RouterConfig``) and one request's ``Call``.

``turbok.sandboxd.router`` builds a ``Call`` after authenticating the request
and resolving its sandbox; the handlers in ``execute`` and ``files`` take it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from turbok.runtime.base import DEFAULT_OUTPUT_LIMIT, Runtime
from turbok.runtime.errors import InvalidSandboxSpec, RuntimeError_
from turbok.runtime.errors import SandboxNotRunning as RuntimeNotRunning
from turbok.sandboxd.errors import BadRequest, PayloadTooLarge, SandboxdError, SandboxNotRunning
from turbok.sandboxd.metrics import RouterMetrics
from turbok.sdk.wire import parse_timeout

__all__ = [
    "DEFAULT_EXEC_TIMEOUT",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_UPLOAD_LIMIT",
    "MAX_EXEC_TIMEOUT",
    "MAX_JSON_BODY",
    "Call",
    "RouterConfig",
    "runtime_failure",
]

#: Seconds a command may run when the request names no timeout (as upstream's runtime).
DEFAULT_EXEC_TIMEOUT = 300.0
#: The longest timeout a request may ask for; longer asks are refused (400).
MAX_EXEC_TIMEOUT = 3600.0
#: Largest JSON request body (``/execute``, ``/turbok/v1/exec`` with its base64 stdin).
MAX_JSON_BODY = 16 * 1024 * 1024
#: Largest file ``/upload`` accepts (413 beyond it).
DEFAULT_UPLOAD_LIMIT = 1024 * 1024 * 1024


@dataclass(frozen=True)
class RouterConfig:
    #: Cap on captured stdout and on stderr of ``/execute``, each, in bytes.
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT
    max_exec_timeout: float = MAX_EXEC_TIMEOUT
    upload_limit: int = DEFAULT_UPLOAD_LIMIT


@dataclass(frozen=True)
class Call:
    """One authenticated request for one resolved sandbox."""

    request: web.Request
    runtime: Runtime
    config: RouterConfig
    metrics: RouterMetrics
    namespace: str
    name: str
    sandbox_id: str
    #: The path argument of download/list/exists, percent-decoded once ("" for the others).
    path: str = ""

    @property
    def sandbox(self) -> str:
        return f"{self.namespace}/{self.name}"

    def workdir(self) -> Path:
        return self.runtime.workdir(self.sandbox_id)

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


def runtime_failure(err: RuntimeError_, call: Call) -> SandboxdError:
    """A runtime error as the answer it deserves."""
    if isinstance(err, RuntimeNotRunning):
        return SandboxNotRunning(f"sandbox {call.sandbox} is not running: {err}")
    if isinstance(err, InvalidSandboxSpec):
        return BadRequest(f"sandbox {call.sandbox}: {err}")
    return SandboxdError(f"runtime failed for sandbox {call.sandbox}: {err}")
