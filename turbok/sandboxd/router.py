"""The router: one loopback endpoint serving the runtime API of every sandbox.

Who calls it: the control plane builds the app with ``create_router_app`` and
serves it on ``127.0.0.1:<port>`` in its own event loop (``serve_router`` does
the same for tests and benchmarks). Clients are the official Agent Sandbox
client (``SandboxDirectConnectionConfig(api_url=router_url,
extra_headers={"Authorization": "Bearer <router token>"})``) and ``turbok.sdk``.

One request, in order:

1. Authenticate: ``Authorization: Bearer <token>`` (constant-time compare), the
   router's own token, never the API's; else 401. The retired capability URL
   ``/t/<token>/...`` is 401 too, with a message that says to send the header: a
   token in a URL ends up in clients' exception texts and in logs.
2. Pick the endpoint from the raw path (decoded once, by us, so ``%2F`` and
   ``%2e%2e`` reach the path checks as what they are); unknown -> 404, wrong
   method -> 405.
3. Resolve ``X-Sandbox-Namespace`` (default ``default``) / ``X-Sandbox-ID``
   through the ``SandboxResolver``: missing header 400, unknown 404, not Ready 503.
4. Run the handler (``execute``, ``files``, which apply the per-sandbox bounds of
   ``limits``: command slots, output budget, uploaded bytes); a ``SandboxdError``
   becomes its status with ``{"message", "reason"}`` (and ``Retry-After`` where it
   says so); any other exception is 500 with a message that reveals nothing.
5. Count it (``turbok.sandboxd.metrics``) and log one line at debug (warning
   for 5xx and denied paths; request-controlled text escaped by ``printable``,
   so a newline in a path cannot forge a line). The token never appears in logs
   or metrics.

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

from turbok.printable import printable
from turbok.runtime.base import Runtime
from turbok.sandboxd import execute, files
from turbok.sandboxd.context import MAX_JSON_BODY, Call, RouterConfig
from turbok.sandboxd.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    SandboxdError,
    Unauthorized,
)
from turbok.sandboxd.limits import ExecSlots, UploadLedger
from turbok.sandboxd.metrics import RouterMetrics
from turbok.sandboxd.resolver import SandboxResolver
from turbok.sdk.wire import (
    DEFAULT_NAMESPACE,
    EXEC_STREAM_PATH,
    RETIRED_TOKEN_PATH_PREFIX,
    SANDBOX_ID_HEADER,
    SANDBOX_NAMESPACE_HEADER,
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


def _split(raw_path: str) -> tuple[str, str]:
    """(endpoint, decoded path argument)."""
    rest = raw_path.lstrip("/")
    if rest.rstrip("/") == EXEC_STREAM_PATH:
        return EXEC_STREAM_PATH, ""
    endpoint, _, arg = rest.partition("/")
    return endpoint, _unquote(arg)


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
        self.slots = ExecSlots(
            running=config.exec_concurrency,
            queue=config.exec_queue,
            wait=config.exec_queue_wait,
            rate=config.output_rate,
            metrics=metrics,
        )
        self.uploads = UploadLedger(limit=config.upload_total_limit, metrics=metrics)

    def _authenticate(self, request: web.Request, endpoint: str) -> None:
        if endpoint == RETIRED_TOKEN_PATH_PREFIX:
            raise Unauthorized(
                "a token in the URL path (/t/<token>/) is no longer accepted: use the plain router URL "
                "and send the router token in the 'Authorization: Bearer <token>' header"
            )
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            offered.strip().encode("utf-8", "surrogateescape"), self._token
        ):
            raise Unauthorized(
                "missing or wrong token: send the router token (not the API token) as "
                "'Authorization: Bearer <token>'"
            )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        label, sandbox, status = "unknown", "-", 500
        try:
            endpoint, arg = _split(request.rel_url.raw_path)
            self._authenticate(request, endpoint)
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
            log.log(level, "%s %s for sandbox %s: %d %s", request.method, label, printable(sandbox), e.status,
                    printable(e.message))
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
            if e.retry_after is not None:
                headers["Retry-After"] = str(e.retry_after)
            return web.json_response(e.to_json(), status=e.status, headers=headers)
        except Exception:
            # The exception's text may name host paths or runtime internals: logged, not answered.
            log.warning("%s %s for sandbox %s failed", request.method, label, printable(sandbox), exc_info=True)
            message = "internal router error; the control plane's log has the details"
            return web.json_response({"message": message, "reason": "InternalError"}, status=500)
        finally:
            self.metrics.requests.labels(label, str(status)).inc()
            if log.isEnabledFor(logging.DEBUG):
                elapsed = (time.perf_counter() - started) * 1000
                log.debug(
                    "%s %s sandbox=%s -> %d in %.1f ms", request.method, label, printable(sandbox), status, elapsed
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
            slots=self.slots,
            uploads=self.uploads,
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
    output_limit: int | None = None,
    exec_timeout: float | None = None,
    max_exec_timeout: float | None = None,
    upload_limit: int | None = None,
    upload_total_limit: int | None = None,
    exec_concurrency: int | None = None,
    exec_queue: int | None = None,
    exec_queue_wait: float | None = None,
    output_rate: int | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The router as an aiohttp application; see the module docstring for what it answers.

    ``registry``: where the metrics go (a new registry if None; it is served at
    ``/metrics`` either way). ``token`` is the router's own (not the API's).
    The bounds (``RouterConfig``'s fields) not given come from ``TURBOK_ROUTER_*``
    in the environment, else their defaults (see ``turbok.sandboxd.context``).
    """
    if not token:
        raise ValueError("the router needs a non-empty token")
    config = RouterConfig.from_env(
        output_limit=output_limit,
        exec_timeout=exec_timeout,
        max_exec_timeout=max_exec_timeout,
        upload_limit=upload_limit,
        upload_total_limit=upload_total_limit,
        exec_concurrency=exec_concurrency,
        exec_queue=exec_queue,
        exec_queue_wait=exec_queue_wait,
        output_rate=output_rate,
    )
    router = _Router(runtime, resolver, token, config, RouterMetrics(registry))
    app = web.Application(client_max_size=MAX_JSON_BODY)
    app[ROUTER_KEY] = router
    # (?s): a file name may hold a newline (%0A); plain ".*" would leave it to aiohttp's bare 404.
    app.router.add_route("*", "/{tail:(?s:.*)}", router.dispatch)
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
