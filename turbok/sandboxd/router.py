"""The router: one loopback endpoint serving the runtime API of every sandbox.

Who calls it: the control plane builds the app with ``create_router_app`` and
serves it on ``127.0.0.1:<port>`` in its own event loop (``serve_router`` does
the same for tests and benchmarks). Clients are the official Agent Sandbox
client (``SandboxDirectConnectionConfig(api_url=capability_url(...))``) and
``turbok.sdk``.

One request, in order:

1. Authenticate: ``Authorization: Bearer <token>``, or the token as the first
   two path segments ``/t/<token>/...`` (constant-time compare); else 401.
2. Pick the endpoint from the raw path (decoded once, by us, so ``%2F`` and
   ``%2e%2e`` reach the path checks as what they are); unknown -> 404, wrong
   method -> 405.
3. Resolve ``X-Sandbox-Namespace`` (default ``default``) / ``X-Sandbox-ID``
   through the ``SandboxResolver``: missing header 400, unknown 404, not Ready 503.
4. Run the handler (``execute``, ``files``); a ``SandboxdError`` becomes its
   status with ``{"message", "reason"}``.
5. Count it (``turbok.sandboxd.metrics``) and log one line at debug (warning
   for 5xx and denied paths). The token never appears in logs or metrics.

``X-Sandbox-Port`` and ``X-Sandbox-Timeout`` (sent by the official client for
its Kubernetes router) are accepted and ignored: there is one runtime API per
sandbox and commands carry their own timeout.
"""

from __future__ import annotations

import hmac
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from turbok.runtime.base import DEFAULT_OUTPUT_LIMIT, Runtime
from turbok.sandboxd import execute, files
from turbok.sandboxd.context import (
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_UPLOAD_LIMIT,
    MAX_EXEC_TIMEOUT,
    MAX_JSON_BODY,
    Call,
    RouterConfig,
)
from turbok.sandboxd.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    SandboxdError,
    Unauthorized,
)
from turbok.sandboxd.metrics import RouterMetrics
from turbok.sandboxd.resolver import SandboxResolver
from turbok.sdk.wire import (
    DEFAULT_NAMESPACE,
    EXEC_STREAM_PATH,
    SANDBOX_ID_HEADER,
    SANDBOX_NAMESPACE_HEADER,
    TOKEN_PATH_PREFIX,
)

__all__ = ["RunningRouter", "create_router_app", "serve_router"]

log = logging.getLogger("turbok.sandboxd")

Handler = Callable[[Call], Awaitable[web.StreamResponse]]


async def _health(call: Call) -> web.Response:
    return web.json_response({"status": "ok", "message": "Sandbox Runtime is active."})


@dataclass(frozen=True)
class _Route:
    method: str
    label: str  # the metrics ``endpoint`` label
    handler: Handler | None  # None: answered by the router itself, no sandbox involved
    has_path: bool = False


_ROUTES: dict[str, _Route] = {
    "": _Route("GET", "health", _health),
    "execute": _Route("POST", "execute", execute.execute),
    "upload": _Route("POST", "upload", files.upload),
    "download": _Route("GET", "download", files.download, has_path=True),
    "list": _Route("GET", "list", files.list_dir, has_path=True),
    "exists": _Route("GET", "exists", files.exists, has_path=True),
    EXEC_STREAM_PATH: _Route("POST", "exec_stream", execute.exec_stream),
    "metrics": _Route("GET", "metrics", None),
    "healthz": _Route("GET", "healthz", None),
}
_MAX_NAME = 253  # a DNS subdomain, the longest Kubernetes object name


def _unquote(segment: str) -> str:
    # surrogateescape: a name that is not UTF-8 still maps to its exact bytes on disk.
    return urllib.parse.unquote(segment, errors="surrogateescape")


def _split(raw_path: str) -> tuple[str | None, str, str]:
    """(token from the path or None, endpoint, decoded path argument)."""
    rest = raw_path.lstrip("/")
    token = None
    if rest.startswith(TOKEN_PATH_PREFIX + "/"):
        segment, _, rest = rest[len(TOKEN_PATH_PREFIX) + 1 :].partition("/")
        token = _unquote(segment)
    if rest.rstrip("/") == EXEC_STREAM_PATH:
        return token, EXEC_STREAM_PATH, ""
    endpoint, _, arg = rest.partition("/")
    return token, endpoint, _unquote(arg)


class _Router:
    def __init__(
        self,
        runtime: Runtime,
        resolver: SandboxResolver,
        token: str,
        config: RouterConfig,
        metrics: RouterMetrics,
    ) -> None:
        self.runtime = runtime
        self.resolver = resolver
        self._token = token.encode()
        self.config = config
        self.metrics = metrics

    def _authorized(self, request: web.Request, path_token: str | None) -> bool:
        if path_token is not None:
            offered = path_token
        else:
            scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
        return hmac.compare_digest(offered.strip().encode("utf-8", "surrogateescape"), self._token)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        label, sandbox, status = "unknown", "-", 500
        try:
            path_token, endpoint, arg = _split(request.rel_url.raw_path)
            if not self._authorized(request, path_token):
                raise Unauthorized(
                    "missing or wrong token: send 'Authorization: Bearer <token>' or use the /t/<token>/ URL"
                )
            route = _ROUTES.get(endpoint)
            if route is None or (arg and not route.has_path):
                raise NotFound(f"no such endpoint: {request.method} /{endpoint}")
            label = route.label
            if request.method != route.method:
                raise MethodNotAllowed(f"/{endpoint} takes {route.method}, not {request.method}")
            resp: web.StreamResponse
            if route.handler is None:
                resp = self._own(label)
            else:
                call = await self._call(request, arg)
                sandbox = call.sandbox
                resp = await route.handler(call)
            status = resp.status
            return resp
        except SandboxdError as e:
            status = e.status
            level = logging.WARNING if e.status >= 500 or e.status == 403 else logging.DEBUG
            log.log(level, "%s %s for sandbox %s: %d %s", request.method, label, sandbox, e.status, e.message)
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
            if e.status == 503:
                headers["Retry-After"] = "1"
            return web.json_response(e.to_json(), status=e.status, headers=headers)
        except Exception as e:
            log.warning("%s %s for sandbox %s failed", request.method, label, sandbox, exc_info=True)
            return web.json_response({"message": f"router error: {e}", "reason": "InternalError"}, status=500)
        finally:
            self.metrics.requests.labels(label, str(status)).inc()
            if log.isEnabledFor(logging.DEBUG):
                elapsed = (time.perf_counter() - started) * 1000
                log.debug(
                    "%s %s sandbox=%s -> %d in %.1f ms", request.method, label, sandbox, status, elapsed
                )

    async def _call(self, request: web.Request, arg: str) -> Call:
        name = request.headers.get(SANDBOX_ID_HEADER, "").strip()
        if not name:
            raise BadRequest(
                f"missing {SANDBOX_ID_HEADER} header: it names the sandbox (metadata.name) to talk to"
            )
        namespace = request.headers.get(SANDBOX_NAMESPACE_HEADER, "").strip() or DEFAULT_NAMESPACE
        if len(name) > _MAX_NAME or len(namespace) > _MAX_NAME:
            raise BadRequest(
                f"{SANDBOX_ID_HEADER} and {SANDBOX_NAMESPACE_HEADER} are at most {_MAX_NAME} characters"
            )
        sandbox_id = await self.resolver.resolve(namespace, name)
        return Call(
            request=request,
            runtime=self.runtime,
            config=self.config,
            metrics=self.metrics,
            namespace=namespace,
            name=name,
            sandbox_id=sandbox_id,
            path=arg,
        )

    def _own(self, label: str) -> web.Response:
        if label == "metrics":
            return web.Response(
                body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )
        return web.json_response({"status": "ok"})


ROUTER_KEY = web.AppKey("turbok_router", _Router)


def create_router_app(
    *,
    runtime: Runtime,
    resolver: SandboxResolver,
    token: str,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
    max_exec_timeout: float = MAX_EXEC_TIMEOUT,
    upload_limit: int = DEFAULT_UPLOAD_LIMIT,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The router as an aiohttp application; see the module docstring for what it answers.

    ``registry``: where the metrics go (a new registry if None; it is served at
    ``/metrics`` either way). Serve the app with ``access_log=None``: an access
    log would write capability URLs, token included.
    """
    if not token:
        raise ValueError("the router needs a non-empty token")
    if output_limit <= 0 or upload_limit <= 0 or not 0 < exec_timeout <= max_exec_timeout:
        raise ValueError("limits must be positive, and exec_timeout at most max_exec_timeout")
    config = RouterConfig(
        output_limit=output_limit,
        exec_timeout=exec_timeout,
        max_exec_timeout=max_exec_timeout,
        upload_limit=upload_limit,
    )
    router = _Router(runtime, resolver, token, config, RouterMetrics(registry))
    app = web.Application(client_max_size=MAX_JSON_BODY)
    app[ROUTER_KEY] = router
    app.router.add_route("*", "/{tail:.*}", router.dispatch)
    return app


@dataclass
class RunningRouter:
    """A router being served; ``url`` is ``http://127.0.0.1:<port>``."""

    url: str
    port: int
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_router(app: web.Application, *, host: str = "127.0.0.1", port: int = 0) -> RunningRouter:
    """Serve ``app`` on ``host:port`` (0: any free port) in the running loop, without an access log."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    address: Any = runner.addresses[0]
    return RunningRouter(url=f"http://{host}:{address[1]}", port=int(address[1]), runner=runner)
