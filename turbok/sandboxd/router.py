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
   token in a URL ends up in clients' exception texts and in logs. A request
   that came through the router's Unix socket (``bind_unix_socket``: mode 0600
   in the home, so only its owner can connect) needs no token: that is how a
   ``kubectl port-forward svc/sandbox-router-svc`` arrives, already
   authenticated by the API server (``turbok.node.routerpod``).
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

``X-Sandbox-Port`` picks the Pod's port: none or 8888 (the official client's
``server_port``) is the runtime API above, always served by the router (through
the sandbox's agent, ``turbok.sandboxd.backend``), with the same semantics as
upstream's runtime image; other paths on 8888 go to the Pod when it serves that
port (upstream's examples probe ``GET /`` there); any other port is forwarded to ``podIP:port`` (``turbok.sandboxd.proxy``;
HTTP/2 and gRPC by ``turbok.sandboxd.h2proxy``), within ``X-Sandbox-Timeout``
(never above ``RouterConfig.proxy_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from turbok.printable import printable
from turbok.runtime.cri import PodRuntime
from turbok.runtime.errors import RuntimeError_
from turbok.sandboxd import execute, files, proxy
from turbok.sandboxd.agent import GRPC_PORT, REST_PORT
from turbok.sandboxd.agentclient import AgentBackend, AgentPool
from turbok.sandboxd.backend import Backend, ExecBackend, Targets
from turbok.sandboxd.context import MAX_JSON_BODY, Call, RouterConfig, runtime_failure
from turbok.sandboxd.errors import (
    BadGateway,
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

__all__ = ["ROUTER_SOCKET", "RunningRouter", "bind_unix_socket", "create_router_app", "serve_router", "site"]

log = logging.getLogger("turbok.sandboxd")

Handler = Callable[[Call], Awaitable[web.StreamResponse]]

#: The router's Unix socket, in the home: port-forwards to the router's mirror Pod arrive there.
ROUTER_SOCKET = "router.sock"


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


#: Seconds given to a sandbox's agent to close the connections the router reset before a hibernation.
DROP_SETTLE = 0.2
#: The port upstream's runtime serves its protocol on (the official client's ``X-Sandbox-Port`` default).
LEGACY_PORT = 8888
#: How long a pod found without an agent to start (its image serves its own API, or it is off) is not asked again.
NO_AGENT_TTL = 30.0
SANDBOX_PORT_HEADER = "X-Sandbox-Port"


def _port(request: web.Request) -> int | None:
    raw = request.headers.get(SANDBOX_PORT_HEADER)
    if raw is None or not raw.strip():
        return None
    try:
        port = int(raw.strip())
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise BadRequest(f"{SANDBOX_PORT_HEADER} must be a port number (1-65535)")
    return port


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
        runtime: PodRuntime,
        resolver: SandboxResolver,
        token: str,
        config: RouterConfig,
        metrics: RouterMetrics,
    ) -> None:
        self.runtime = runtime
        self.targets = Targets(runtime)
        self.agents = AgentPool()
        self.proxy = proxy.ProxyClient()
        runtime.before_hibernate(self.before_hibernate)
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
        self._waking: dict[str, asyncio.Future[None]] = {}
        self._no_agent: dict[str, float] = {}

    def _authenticate(self, request: web.Request, endpoint: str) -> None:
        if endpoint == RETIRED_TOKEN_PATH_PREFIX:
            raise Unauthorized(
                "a token in the URL path (/t/<token>/) is no longer accepted: use the plain router URL "
                "and send the router token in the 'Authorization: Bearer <token>' header"
            )
        if self._via_unix_socket(request):
            return  # only the home's owner can open the socket; a port-forward was authenticated by the API
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            offered.strip().encode("utf-8", "surrogateescape"), self._token
        ):
            raise Unauthorized(
                "missing or wrong token: send the router token (not the API token) as "
                "'Authorization: Bearer <token>'"
            )

    @staticmethod
    def _via_unix_socket(request: web.Request) -> bool:
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        return sock is not None and sock.family == socket.AF_UNIX

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        label, sandbox, status = "unknown", "-", 500
        try:
            endpoint, arg = _split(request.rel_url.raw_path)
            self._authenticate(request, endpoint)
            port = _port(request)
            route = _ROUTES.get(endpoint)
            known = route is not None and not (arg and not route.has_path)
            resp: web.StreamResponse
            if port in (None, LEGACY_PORT) and route is not None and known and route.handler is None:
                label = route.label
                if request.method != route.method:
                    raise MethodNotAllowed(f"/{endpoint} takes {route.method}, not {request.method}")
                resp = self._own(label)
            elif port not in (None, LEGACY_PORT) or request.headers.get(SANDBOX_ID_HEADER):
                # A sandbox's request: its own server on that port, or (the legacy port where the Pod does not
                # serve it itself) the runtime API the router serves.
                call = await self._call(request, arg)
                sandbox = call.sandbox
                target_port = LEGACY_PORT if port is None else port
                own = known and route is not None and route.handler is not None and target_port == LEGACY_PORT
                if own:  # the runtime API is the router's, even where the Pod serves 8888 (its probes)
                    assert route is not None and route.handler is not None
                    label = route.label
                    if request.method != route.method:
                        raise MethodNotAllowed(f"/{endpoint} takes {route.method}, not {request.method}")
                    resp = await self._run(route.handler, call)
                elif target_port == LEGACY_PORT and not own and not await self._pod_serves(call, LEGACY_PORT):
                    raise NotFound(f"no such endpoint: {request.method} /{endpoint}")
                else:
                    label = "proxy"
                    ip = call.backend.target.ip
                    if not ip:
                        raise BadGateway(f"sandbox {call.sandbox} has no address on the pod network, so only the "
                                         "runtime API reaches it (no X-Sandbox-Port)")
                    await self.agent_for(call.sandbox_id, ip, target_port)
                    resp = await proxy.forward(call, self.proxy, ip, target_port)
            else:
                if route is None or not known:
                    raise NotFound(f"no such endpoint: {request.method} /{endpoint}")
                label = route.label
                if request.method != route.method:
                    raise MethodNotAllowed(f"/{endpoint} takes {route.method}, not {request.method}")
                call = await self._call(request, arg)  # raises: no X-Sandbox-ID
                resp = await self._run(route.handler, call)  # type: ignore[arg-type]
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
        backend = await self._backend(sandbox_id, f"{namespace}/{name}")
        return Call(
            request=request,
            backend=backend,
            config=self.config,
            metrics=self.metrics,
            slots=self.slots,
            uploads=self.uploads,
            namespace=namespace,
            name=name,
            sandbox_id=sandbox_id,
            path=arg,
        )

    async def _backend(self, sandbox_id: str, sandbox: str) -> Backend:
        try:
            target = await self.targets.find(sandbox_id)
        except RuntimeError_ as e:
            raise runtime_failure(e, sandbox) from e
        if target.ip:
            if await self.agents.available(target.ip):
                return AgentBackend(self.runtime, target, self.agents)
            self._wake_agent(sandbox_id, target.ip)  # this request goes through runsc exec meanwhile
        return ExecBackend(self.runtime, target)

    def _wake_agent(self, sandbox_id: str, ip: str) -> None:
        """Start the pod's sandboxd agent in the background (it starts on demand, ``PodRuntime.ensure_agent``);
        a pod without one is not asked again for ``NO_AGENT_TTL`` seconds."""
        if sandbox_id in self._waking or self._no_agent.get(sandbox_id, 0.0) > time.monotonic():
            return

        async def wake() -> None:
            try:
                if await self.runtime.ensure_agent(sandbox_id):
                    self.agents.forget(ip)
                    return
            except Exception:
                log.warning("could not start the sandboxd agent of pod %s", sandbox_id, exc_info=True)
            finally:
                self._waking.pop(sandbox_id, None)
            if len(self._no_agent) > 4096:
                self._no_agent.clear()
            self._no_agent[sandbox_id] = time.monotonic() + NO_AGENT_TTL

        self._waking[sandbox_id] = asyncio.ensure_future(wake())

    async def agent_for(self, sandbox_id: str, ip: str, port: int) -> None:
        """Before relaying to ``port`` of a Pod: where that is one of the agent's ports and nothing answers there,
        start the agent (on demand) and wait for it."""
        if port in (GRPC_PORT, REST_PORT) and not await self.agents.listens(ip, port) \
                and await self.runtime.ensure_agent(sandbox_id):
            self.agents.forget(ip)

    async def _run(self, handler: Handler, call: Call) -> web.StreamResponse:
        try:
            return await handler(call)
        except RuntimeError_ as e:  # the sandbox's agent went away under the request (a restart, a crash)
            self.targets.forget(call.sandbox_id)
            if call.backend.target.ip:
                self.agents.forget(call.backend.target.ip)
            raise runtime_failure(e, call) from e

    async def _pod_serves(self, call: Call, port: int) -> bool:
        """Whether the Pod itself listens on ``port`` (its own server there; checked at most every few s)."""
        ip = call.backend.target.ip
        return bool(ip) and await self.agents.listens(ip, port)

    async def before_hibernate(self, sandbox_id: str) -> None:
        """Reset the router's connections into a pod sandbox about to hibernate (see ``AgentPool``)."""
        target = self.targets.cached(sandbox_id)
        if target is None:
            with contextlib.suppress(RuntimeError_):
                target = await self.targets.find(sandbox_id)
        self.targets.forget(sandbox_id)
        if target is not None and target.ip and self.agents.forget(target.ip):
            # The agent closes its side once it reads the reset: give it that moment before the runtime
            # looks for open connections (runsc cannot checkpoint one).
            await asyncio.sleep(DROP_SETTLE)

    def _own(self, label: str) -> web.Response:
        if label == "metrics":
            return web.Response(
                body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )
        return web.json_response({"status": "ok"})


ROUTER_KEY = web.AppKey("turbok_router", _Router)


def create_router_app(
    *,
    runtime: PodRuntime,
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
    proxy_timeout: float | None = None,
    proxy_body_limit: int | None = None,
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
        proxy_timeout=proxy_timeout,
        proxy_body_limit=proxy_body_limit,
    )
    router = _Router(runtime, resolver, token, config, RouterMetrics(registry))
    app = web.Application(client_max_size=MAX_JSON_BODY)
    app[ROUTER_KEY] = router
    # (?s): a file name may hold a newline (%0A); plain ".*" would leave it to aiohttp's bare 404.
    app.router.add_route("*", "/{tail:(?s:.*)}", router.dispatch)

    async def cleanup(_: web.Application) -> None:
        router.agents.close()
        await router.proxy.close()

    app.on_cleanup.append(cleanup)
    return app


@dataclass
class RunningRouter:
    """A router being served; ``url`` is ``http://127.0.0.1:<port>``."""

    url: str
    port: int
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


def site(app: web.Application, runner: web.BaseRunner, *, host: str | None = None, port: int = 0,
         sock: socket.socket | None = None) -> web.BaseSite:
    """The router's site on ``host:port`` or a listening ``sock``: HTTP/1.1 to ``app``, HTTP/2 (gRPC) relayed
    to Pods (``turbok.sandboxd.h2proxy``)."""
    from turbok.sandboxd.h2proxy import SniffingSite, stream_router

    return SniffingSite(runner, stream_router(app[ROUTER_KEY]), host=host, port=port, sock=sock)


async def serve_router(app: web.Application, *, host: str = "127.0.0.1", port: int = 0) -> RunningRouter:
    """Serve ``app`` on ``host:port`` (0: any free port) in the running loop, without an access log."""
    from turbok.sandboxd.h2proxy import port_of

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        served = site(app, runner, host=host, port=port)
        await served.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port_of(served)  # type: ignore[arg-type]
    return RunningRouter(url=f"http://{host}:{bound}", port=bound, runner=runner)


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 (a stale one is replaced).

    Put it in a private folder (the home is 0700): then no other user can reach
    it in the moment between ``bind`` and ``chmod``. A path longer than
    ``sun_path`` allows is bound through ``/proc/self/fd`` of its folder.
    """
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) < 100:
            sock.bind(str(path))
        else:
            folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.bind(f"/proc/self/fd/{folder}/{path.name}")
            finally:
                os.close(folder)
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
