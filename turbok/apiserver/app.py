"""The aiohttp application of the embedded API server.

Middlewares, in order: a request log and metrics, bearer-token
authentication (constant-time; health endpoints are open, as kube-apiserver
leaves them to anonymous users), per-client in-flight limits
(``flowcontrol``), and the error mapping that turns any ``ApiError`` into a
``Status`` body with its HTTP code (an unexpected exception becomes a 500
``Status`` and a log line with the traceback; no internal text reaches the
client). Request bodies are capped at ``ApiLimits.max_body_bytes`` (413).
A background task deletes expired Events (``ObjectRegistry.expire_events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from turbok.api.kinds import KindRegistry
from turbok.api.status import ApiError, MethodNotAllowed, NotFound, RequestEntityTooLarge, Unauthorized
from turbok.apiserver import crds, discovery, openapi, openapi_pb
from turbok.apiserver.flowcontrol import FlowControl
from turbok.apiserver.limits import LIMITS, ApiLimits
from turbok.apiserver.resources import STREAM_HANDLER, StreamHandler, handle_resource, parse_target
from turbok.printable import printable
from turbok.store.registry import ObjectRegistry

__all__ = ["ApiMetrics", "create_app"]

log = logging.getLogger(__name__)

_OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiMetrics:
    """Prometheus metrics of the API server, in the control plane's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("turbok_apiserver_requests_total", "API requests by verb, resource and code",
                                ["verb", "resource", "code"], registry=registry)
        self.latency = Histogram("turbok_apiserver_request_duration_seconds", "API request latency",
                                 ["verb", "resource"], registry=registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))


def _status_response(error: ApiError) -> web.Response:
    import json

    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    return web.Response(body=json.dumps(error.to_status()).encode(), status=error.code,
                        content_type="application/json", headers=headers)


def _resource_label(kinds: KindRegistry, path: str) -> str:
    """The metrics label of a path: the resource (``sandboxes``, ``sandboxes/status``), never an object name."""
    if path.startswith("/openapi"):
        return "openapi"
    if not path.startswith(("/api/", "/apis/")):
        return path if path in _OPEN_PATHS or path in ("/api", "/apis", "/version", "/metrics") else "other"
    try:
        target = parse_target(kinds, path)
    except ApiError:
        parts = [p for p in path.split("/") if p]
        return "discovery" if len(parts) <= 3 else "other"
    return target.kind.plural + (f"/{target.subresource}" if target.subresource else "")


def create_app(registry: ObjectRegistry, *, token: str, metrics_registry: CollectorRegistry,
               server_address: str = "127.0.0.1", limits: ApiLimits | None = None,
               stream_handler: StreamHandler | None = None) -> web.Application:
    """The API server's application; ``stream_handler`` serves pods/log, exec, attach and portforward."""
    metrics = ApiMetrics(metrics_registry)
    limits = limits or ApiLimits.from_env()
    flows = FlowControl(per_client=limits.inflight_per_client, total=limits.inflight_total,
                        streams_per_client=limits.streams_per_client,
                        broad_watches_per_client=limits.broad_watches_per_client, retry_after=limits.retry_after_seconds)
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        verb = request.method if request.query.get("watch") not in ("1", "true") else "WATCH"
        resource = _resource_label(kinds, request.path)
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except ApiError as e:
            code = e.code
            return _status_response(e)
        except web.HTTPException as e:
            code = e.status
            # aiohttp's own answers (no route, wrong method) become Status bodies like every other error.
            error_class = {404: NotFound, 405: MethodNotAllowed, 413: RequestEntityTooLarge}.get(e.status)
            if error_class is None:
                raise
            message = {404: "the server could not find the requested resource",
                       405: f"the server does not allow this method on the requested resource: {request.method}",
                       413: f"Request entity too large: limit is {limits.max_body_bytes}"}[e.status]
            return _status_response(error_class(message))
        except Exception:
            log.exception("internal error serving %s %s", request.method, printable(request.path_qs))
            return _status_response(ApiError("an internal error occurred; see the turbok log"))
        finally:
            elapsed = time.perf_counter() - start
            if verb != "WATCH":
                metrics.latency.labels(verb, resource).observe(elapsed)
            metrics.requests.labels(verb, resource, str(code)).inc()
            # path_qs is decoded: %0A would be a newline, forging a log line.
            log.debug("%s %s -> %s in %.1f ms", request.method, printable(request.path_qs), code, elapsed * 1000)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise Unauthorized("Unauthorized: a bearer token from the turbok kubeconfig is required")
        return await handler(request)

    app = web.Application(middlewares=[observe, authenticate, flows.middleware],
                          client_max_size=limits.max_body_bytes)
    app[LIMITS] = limits
    if stream_handler is not None:
        app[STREAM_HANDLER] = stream_handler

    async def expire_events(_: web.Application) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(limits.event_sweep_seconds)
                try:
                    registry.expire_events()
                except ApiError as e:  # a full disk: the next sweep tries again
                    log.warning("could not delete expired events: %s", e)

        task = asyncio.create_task(sweep(), name="event-ttl")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(expire_events)
    kinds = registry.kinds
    listed = discovery.served(kinds)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def version(_: web.Request) -> web.Response:
        return web.json_response(discovery.version_info())

    async def api(_: web.Request) -> web.Response:
        return web.json_response(discovery.api_versions(server_address))

    async def apis(_: web.Request) -> web.Response:
        return web.json_response(discovery.group_list(listed))

    async def api_group(request: web.Request) -> web.Response:
        doc = discovery.group(listed, request.match_info["group"])
        if doc is None:
            raise NotFound("the server could not find the requested resource")
        return web.json_response(doc)

    async def group_version(request: web.Request) -> web.Response:
        doc = discovery.resource_list(listed, request.match_info.get("group", ""), request.match_info["version"])
        if doc is None:
            raise NotFound("the server could not find the requested resource")
        return web.json_response(doc)

    async def openapi_v2(request: web.Request) -> web.Response:
        # kubectl asks for protobuf alone; a client listing JSON first (or only) gets JSON.
        accept = [a.split(";")[0].strip() for a in request.headers.get("Accept", "").split(",")]
        if accept and "protobuf" in accept[0]:
            return web.Response(body=openapi.v2_protobuf(kinds), headers={"Content-Type": openapi_pb.MEDIA_TYPE})
        return web.Response(text=openapi.v2_document(kinds), content_type="application/json")

    async def openapi_v3_index(_: web.Request) -> web.Response:
        return web.json_response(openapi.v3_index(kinds))

    async def openapi_v3(request: web.Request) -> web.Response:
        parts = request.match_info["path"].strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            raise NotFound("no OpenAPI document at this path")
        text = openapi.v3_document(kinds, group, version)
        if text is None:
            raise NotFound("no OpenAPI document at this path")
        return web.Response(text=text, content_type="application/json",
                            headers={"Cache-Control": "public, immutable"} if "hash" in request.query else {})

    async def metrics_endpoint(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics_registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def resource(request: web.Request) -> web.StreamResponse:
        return await handle_resource(request, registry, parse_target(kinds, request.path))

    async def crd(request: web.Request) -> web.StreamResponse:
        return await crds.handle_crds(request, kinds)

    for path in _OPEN_PATHS:
        app.router.add_get(path, health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi/v2", openapi_v2)
    app.router.add_get("/openapi/v3", openapi_v3_index)
    app.router.add_get("/openapi/v3/{path:.+}", openapi_v3)
    app.router.add_get("/api", api)
    app.router.add_get("/api/", api)
    app.router.add_get("/api/{version}", group_version)
    app.router.add_get("/apis", apis)
    app.router.add_get("/apis/", apis)
    app.router.add_get("/apis/{group}", api_group)
    app.router.add_get("/apis/{group}/{version}", group_version)
    crd_root = f"/apis/{crds.GROUP}/{crds.VERSION}/{crds.CRD_KIND.plural}"
    app.router.add_route("*", crd_root, crd)
    app.router.add_route("*", crd_root + "/{name}", crd)
    app.router.add_route("*", "/api/{version}/{rest:.+}", resource)
    app.router.add_route("*", "/apis/{group}/{version}/{rest:.+}", resource)
    return app
