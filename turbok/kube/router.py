"""The router on a cluster (``turbok router``): ``X-Sandbox-ID`` to the Sandbox's Pod IP and port.

The same surface as upstream's sandbox-router (``sandbox-router-svc`` in ``agent-sandbox-system``, port
8080), which the official client talks to in every mode: a request with ``X-Sandbox-ID`` (a Sandbox's
name), ``X-Sandbox-Namespace`` (default ``default``) and ``X-Sandbox-Port`` (default 8888) is proxied,
method, path, query, headers and body streamed both ways, to that port of the Sandbox's Pod. Unlike
upstream, the target is never taken from the request (upstream's ``X-Sandbox-Pod-IP`` or a DNS name the
client picks): it is the ``status.podIPs[0]`` of the named Sandbox, read from an informer's cache of
Sandboxes, only while its Ready condition is True (else 503; unknown 404). So a client reaches only
sandboxes, never another address of the cluster network.

Authentication, one of (``Authorization: Bearer <token>``; else 401, and 403 for a token that may not
use that sandbox):

- the router's own token (``--token-file``, a Secret's key mounted in the router's Pod): what the
  official client sends as ``extra_headers``; compared in constant time;
- a Kubernetes token (a ServiceAccount's, or any the API server accepts) when ``--token-review`` is on:
  ``TokenReview`` says who it is and ``SubjectAccessReview`` whether that user may ``get`` the Sandbox
  (``sandboxes.agents.x-k8s.io`` in its namespace). Answers are cached for ``REVIEW_TTL`` seconds
  (a refusal for ``REVIEW_DENY_TTL``).

``/healthz`` answers without a token. Router headers and hop-by-hop headers are not forwarded, nor is
``Authorization`` (the sandbox never sees the caller's credential).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from turbok.api import meta as m
from turbok.api import status as st
from turbok.api.kinds import Kind, default_registry
from turbok.client.api import AsyncApi
from turbok.client.errors import ConnectionFailed
from turbok.kube.informer import Change, Informer
from turbok.printable import printable

__all__ = ["ClusterRouter", "RouterSettings", "create_cluster_router_app"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8888
REVIEW_TTL = 60.0
#: A refusal is remembered only briefly: a RoleBinding made a moment later lets the caller in.
REVIEW_DENY_TTL = 2.0
PROXY_TIMEOUT = 180.0
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ROUTER_HEADERS = {"x-sandbox-id", "x-sandbox-namespace", "x-sandbox-port", "x-sandbox-pod-ip", "x-sandbox-timeout"}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "authorization", "content-length"}


@dataclass(frozen=True)
class RouterSettings:
    token: str = ""
    token_review: bool = False
    timeout: float = PROXY_TIMEOUT


class ClusterRouter:
    def __init__(self, api: AsyncApi, settings: RouterSettings, *, sandbox_kind: Kind | None = None) -> None:
        if not settings.token and not settings.token_review:
            raise ValueError("the router needs a token or --token-review: it never serves anonymously")
        self.api = api
        self.settings = settings
        self.kind = sandbox_kind or default_registry().by_kind("agents.x-k8s.io/v1beta1", "Sandbox")
        self.sandboxes = Informer(api, self.kind, self._ignore)
        self._reviews: dict[tuple[str, str, str], tuple[float, bool]] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _ignore(change: Change) -> None:
        return None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.sandboxes.run(), name="router sandbox informer")
        await asyncio.wait_for(self.sandboxes.synced.wait(), 60)
        self._session = aiohttp.ClientSession(auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=self.settings.timeout))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self.api.close()

    # ------------------------------------------------------------------ auth
    async def _allowed(self, token: str, namespace: str, name: str) -> bool:
        if self.settings.token and hmac.compare_digest(token.encode(), self.settings.token.encode()):
            return True
        if not self.settings.token_review:
            raise _Deny(401, "missing or wrong token: send the router token as 'Authorization: Bearer <token>'")
        key = (token, namespace, name)
        cached = self._reviews.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        review = await self.api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
        status = (review or {}).get("status") or {}
        if not status.get("authenticated"):
            raise _Deny(401, "the token was not accepted by the API server")
        user = status.get("user") or {}
        sar = await self.api.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.get("username", ""), "groups": user.get("groups") or [], "uid": user.get("uid", ""),
                     "resourceAttributes": {"group": self.kind.group, "resource": self.kind.plural, "verb": "get",
                                            "namespace": namespace, "name": name}}})
        allowed = bool(((sar or {}).get("status") or {}).get("allowed"))
        if len(self._reviews) > 10_000:
            self._reviews.clear()
        self._reviews[key] = (time.monotonic() + (REVIEW_TTL if allowed else REVIEW_DENY_TTL), allowed)
        return allowed

    # ------------------------------------------------------------------ routing
    def _target(self, request: web.Request) -> tuple[str, str, str]:
        namespace, name = self._names(request)
        try:
            port = int(request.headers.get("X-Sandbox-Port", DEFAULT_PORT))
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise _Deny(400, "X-Sandbox-Port must be a TCP port")
        sandbox = self.sandboxes.get(namespace, name)
        if sandbox is None:
            raise _Deny(404, f"sandbox {namespace}/{name} not found")
        ready = m.condition(sandbox, "Ready")
        ips = (sandbox.get("status") or {}).get("podIPs") or []
        if not ready or ready.get("status") != "True" or not ips:
            raise _Deny(503, f"sandbox {namespace}/{name} is not ready; wait for its Ready condition")
        ip = ipaddress.ip_address(str(ips[0]))
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return namespace, name, f"http://{host}:{port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/healthz" and "X-Sandbox-ID" not in request.headers:
            return web.json_response({"status": "ok"})
        try:
            namespace, name = self._names(request)
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise _Deny(401, "missing token: send 'Authorization: Bearer <token>'")
            if not await self._allowed(token.strip(), namespace, name):
                raise _Deny(403, f"this token may not use sandbox {namespace}/{name}")
            _, _, base = self._target(request)
            return await self._proxy(request, base)
        except _Deny as e:
            return web.json_response({"message": e.message, "reason": e.reason}, status=e.status)
        except (ConnectionFailed, st.ApiError) as e:
            log.warning("router: reviewing a token failed: %s", e)
            return web.json_response({"message": "the router could not check the token", "reason": "Unavailable"},
                                     status=503)

    @staticmethod
    def _names(request: web.Request) -> tuple[str, str]:
        # headers are validated before the token is reviewed (a bad request costs no API call), but the
        # sandbox is looked up after, so an unauthenticated caller learns nothing about which exist
        name = request.headers.get("X-Sandbox-ID", "")
        namespace = request.headers.get("X-Sandbox-Namespace", "default") or "default"
        if not name:
            raise _Deny(400, "X-Sandbox-ID header is required")
        if not _DNS_LABEL.match(name) or not _DNS_LABEL.match(namespace):
            raise _Deny(400, "X-Sandbox-ID and X-Sandbox-Namespace must be DNS labels")
        return namespace, name

    async def _proxy(self, request: web.Request, base: str) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | _ROUTER_HEADERS}
        url = base + request.raw_path
        try:
            async with self._session.request(request.method, url, headers=headers,
                                             data=request.content if request.body_exists else None,
                                             allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (TimeoutError, aiohttp.ClientError) as e:
            log.warning("router: %s %s: %s", request.method, printable(url), e)
            return web.json_response({"message": "the sandbox did not answer", "reason": "BadGateway"}, status=502)


class _Deny(Exception):
    _REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 503: "NotReady"}

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = self._REASONS.get(status, "Error")


def create_cluster_router_app(router: ClusterRouter) -> web.Application:
    app = web.Application(client_max_size=64 << 20)

    async def on_startup(_: web.Application) -> None:
        await router.start()

    async def on_cleanup(_: web.Application) -> None:
        await router.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", router.handle)
    return app
