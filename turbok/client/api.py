"""The Kubernetes REST protocol, spoken once for all of turbok: paths, verbs, errors, pages, watches, rate limits.

One client serves every part that talks to an API server, the embedded one or a real cluster:
``AsyncApi`` (the operator's ``KubeClient``, the cluster router, checkpoint's reconciler) and ``Api``, its
synchronous twin (the CLI through ``rest.RestClient``, conformance checks, upgrade checks, checkpoint's
configuration reader). Both come from a ``kubeconfig.ClusterConfig`` (TLS, credentials refreshed per
request), so there is one kubeconfig reader and one HTTP stack (httpx). Why not lightkube: docs/kube.md.

What it guarantees:

- Every failure answer becomes the ``turbok.api.status`` error of its code and reason, with the
  ``Status``'s message, details and field causes (``error_from``); no answer at all is ``ConnectionFailed``.
- Client-side rate limit: a token bucket (``qps``, ``burst``) in front of every request, as client-go's
  (its defaults are 5/10; the operator's are higher, see docs/kube.md). A 429 is waited out
  (``Retry-After``, at most ``MAX_RETRY_AFTER`` s) and retried up to ``RETRIES_429`` times.
- ``list`` follows ``continue`` tokens (``limit`` per page) and returns the list's resourceVersion;
  ``watch`` asks for bookmarks and yields ``WatchEvent``s, a watch ``ERROR`` becoming its error (an
  expired resourceVersion is ``Gone``, 410: the caller relists).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from turbok.api import status as st
from turbok.api.kinds import Kind
from turbok.api.meta import FieldSelector, LabelSelector
from turbok.client.errors import ConnectionFailed
from turbok.client.kubeconfig import ClusterConfig

__all__ = ["PATCH_TYPES", "Api", "AsyncApi", "RateLimiter", "WatchEvent", "error_from", "field_selector_text",
           "label_selector_text", "resource_path", "status_code", "status_reason"]

Obj = dict[str, Any]

#: Content types of the patch strategies, by the names the controllers' ``Client`` uses.
PATCH_TYPES = {"merge": "application/merge-patch+json", "strategic": "application/strategic-merge-patch+json",
               "json": "application/json-patch+json", "apply": "application/apply-patch+yaml"}

RETRIES_429 = 5
#: Connections per httpx pool of ``AsyncApi`` (it opens as many pools as its ``connections`` need).
POOL_CONNECTIONS = 8
MAX_RETRY_AFTER = 10.0

_BY_CODE: dict[int, type[st.ApiError]] = {
    400: st.BadRequest, 401: st.Unauthorized, 403: st.Forbidden, 404: st.NotFound, 405: st.MethodNotAllowed,
    410: st.Gone, 413: st.RequestEntityTooLarge, 415: st.UnsupportedMediaType, 422: st.Invalid,
    429: st.TooManyRequests, 507: st.InsufficientStorage,
}


def error_from(code: int, body: Any, text: str = "") -> st.ApiError:
    """The ``turbok.api.status`` error of an answer (a ``Status`` body, or anything else the server said)."""
    status = body if isinstance(body, dict) else {}
    details = status.get("details") or {}
    causes = [st.Cause(str(c.get("field", "")), str(c.get("message", "")), str(c.get("reason", "")))
              for c in details.get("causes") or [] if isinstance(c, dict)]
    if code == 409:
        cls: type[st.ApiError] = st.AlreadyExists if status.get("reason") == "AlreadyExists" else st.Conflict
    elif code == 410 or status.get("reason") in ("Expired", "Gone"):
        cls = st.Gone
    else:
        cls = _BY_CODE.get(code, st.ApiError)
    message = str(status.get("message") or f"HTTP {code}: {text[:200]}")
    retry = details.get("retryAfterSeconds")
    err = cls(message, name=str(details.get("name", "")), kind=str(details.get("kind", "")),
              group=str(details.get("group", "")), causes=causes,
              retry_after=int(retry) if isinstance(retry, int) else None)
    err.http_status = code  # type: ignore[attr-defined]  # the answer's own code (ApiError.code is the class's)
    err.status_reason = str(status.get("reason") or "")  # type: ignore[attr-defined]
    return err


def status_code(err: st.ApiError) -> int:
    """The HTTP status the server answered with (``err.code`` is its class's: 500 for any other failure)."""
    return int(getattr(err, "http_status", err.code))


def status_reason(err: st.ApiError) -> str:
    """The ``Status.reason`` the server gave ("" when it sent no Status)."""
    return str(getattr(err, "status_reason", "") or "")


def _response_error(response: httpx.Response) -> st.ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    err = error_from(response.status_code, body, response.text)
    if err.retry_after is None and response.headers.get("Retry-After", "").isdigit():
        err.retry_after = int(response.headers["Retry-After"])
    return err


def label_selector_text(selector: LabelSelector | None) -> str:
    """``?labelSelector=`` for a parsed selector."""
    if not selector:
        return ""
    parts = []
    for r in selector.requirements:
        values = sorted(r.values)
        if r.op == "=":
            parts.append(f"{r.key}={values[0]}" if len(values) == 1 else f"{r.key} in ({','.join(values)})")
        elif r.op == "!=":
            parts.append(f"{r.key}!={values[0]}")
        elif r.op in ("in", "notin"):
            parts.append(f"{r.key} {r.op} ({','.join(values)})")
        elif r.op == "exists":
            parts.append(r.key)
        elif r.op == "!":
            parts.append(f"!{r.key}")
        else:
            parts.append(f"{r.key}{'>' if r.op == 'gt' else '<'}{values[0]}")
    return ",".join(parts)


def field_selector_text(selector: FieldSelector | None) -> str:
    if not selector:
        return ""
    return ",".join(f"{name}{'=' if equal else '!='}{value}" for name, equal, value in selector.terms)


def resource_path(kind: Kind, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    path = kind.base_path(quote(namespace, safe="") if namespace and kind.namespaced else None)
    if name:
        path += f"/{quote(name, safe='')}"
        if subresource:
            path += f"/{subresource}"
    return path


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Obj

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")


class RateLimiter:
    """A token bucket: ``burst`` requests at once, then ``qps`` a second (0: unlimited)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _take(self) -> float:
        """Take a token; the seconds to wait before the request may go."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.qps)
            self._stamp = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def acquire(self) -> None:
        delay = self._take()
        if delay > 0:
            await asyncio.sleep(delay)

    def acquire_sync(self) -> None:
        delay = self._take()
        if delay > 0:
            time.sleep(delay)


def _params(*, label_selector: LabelSelector | str | None = None, field_selector: FieldSelector | str | None = None,
            **rest: Any) -> dict[str, Any]:
    out = {k: v for k, v in rest.items() if v not in (None, "")}
    labels = label_selector if isinstance(label_selector, str) else label_selector_text(label_selector)
    fields = field_selector if isinstance(field_selector, str) else field_selector_text(field_selector)
    if labels:
        out["labelSelector"] = labels
    if fields:
        out["fieldSelector"] = fields
    return out


def _delete_body(propagation: str | None, uid: str | None, resource_version: str | None,
                 grace_period_seconds: int | None) -> Obj | None:
    body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
    if propagation:
        body["propagationPolicy"] = propagation
    pre = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
    if pre:
        body["preconditions"] = pre
    if grace_period_seconds is not None:
        body["gracePeriodSeconds"] = grace_period_seconds
    return body if len(body) > 2 else None


def _event(line: bytes | str) -> WatchEvent:
    doc = json.loads(line)
    if doc.get("type") == "ERROR":
        obj = doc.get("object") or {}
        raise error_from(int(obj.get("code") or 500), obj)
    return WatchEvent(str(doc.get("type")), doc.get("object") or {})


class _Base:
    def __init__(self, config: ClusterConfig, *, qps: float, burst: int, field_manager: str) -> None:
        self.config = config
        self.server = config.server
        self.limiter = RateLimiter(qps, burst)
        self.field_manager = field_manager

    @staticmethod
    def _body(body: Any, content_type: str) -> tuple[bytes | None, dict[str, str]]:
        if body is None:
            return None, {}
        if isinstance(body, bytes | str):
            return (body.encode() if isinstance(body, str) else body), {"Content-Type": content_type}
        return json.dumps(body).encode(), {"Content-Type": content_type}

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text


class AsyncApi(_Base):
    """The asynchronous client; ``await close()`` it."""

    def __init__(self, config: ClusterConfig, *, qps: float = 50.0, burst: int = 100, timeout: float = 30.0,
                 field_manager: str = "turbok", user_agent: str = "turbok", connections: int = 16) -> None:
        super().__init__(config, qps=qps, burst=burst, field_manager=field_manager)
        self.timeout = timeout
        self.user_agent = user_agent
        #: requests in flight at once (HTTP/1.1: one connection each)
        self.connections = connections
        # In pools of at most POOL_CONNECTIONS: httpcore's pool walks all its connections (and asks each if it
        # expired) for every request it assigns, which costs a quarter of an operator's CPU in a burst with
        # 64 connections in one pool. Requests take the pools in turn.
        sizes = [min(POOL_CONNECTIONS, connections - i) for i in range(0, max(connections, 1), POOL_CONNECTIONS)]
        self._pools = [config.async_http_client(
            timeout=timeout, headers={"User-Agent": user_agent}, trust_env=False,
            limits=httpx.Limits(max_connections=max(n, 1), max_keepalive_connections=max(n, 1))) for n in sizes]
        self._next = 0
        # Watches hold their connection for minutes: they get a pool of their own, so that an operator's
        # informers (one watch per kind) never take the connections its writes need.
        self._watch_http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        for pool in self._pools:
            await pool.aclose()
        if self._watch_http is not None:
            await self._watch_http.aclose()

    def _watcher(self) -> httpx.AsyncClient:
        if self._watch_http is None:
            self._watch_http = self.config.async_http_client(
                timeout=self.timeout, headers={"User-Agent": self.user_agent}, trust_env=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))
        return self._watch_http

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                      content_type: str = "application/json", accept: str = "application/json",
                      timeout: float | None = None) -> Any:
        content, headers = self._body(body, content_type)
        headers["Accept"] = accept
        for attempt in range(RETRIES_429 + 1):
            await self.limiter.acquire()
            try:
                self._next = (self._next + 1) % len(self._pools)
                response = await self._pools[self._next].request(method, path, params=params, content=content, headers=headers,
                                                    timeout=timeout if timeout is not None else self.timeout)
            except httpx.HTTPError as e:
                raise ConnectionFailed(f"{method} {self.server}{path}: {type(e).__name__}: {e}") from e
            if response.status_code < 400:
                return self._decode(response)
            err = _response_error(response)
            if isinstance(err, st.TooManyRequests) and attempt < RETRIES_429:
                await asyncio.sleep(min(float(err.retry_after or 1), MAX_RETRY_AFTER))
                continue
            raise err
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- verbs over a Kind
    async def get(self, kind: Kind, namespace: str | None, name: str, *, subresource: str | None = None) -> Obj:
        out: Obj = await self.request("GET", resource_path(kind, namespace, name, subresource))
        return out

    async def list_page(self, kind: Kind, namespace: str | None = None, *, limit: int = 500, continue_: str = "",
                        label_selector: LabelSelector | str | None = None,
                        field_selector: FieldSelector | str | None = None,
                        resource_version: str | None = None) -> Obj:
        params = _params(label_selector=label_selector, field_selector=field_selector, limit=limit or None,
                         resourceVersion=None if continue_ else resource_version, **{"continue": continue_})
        out: Obj = await self.request("GET", resource_path(kind, namespace), params=params)
        return out

    async def list(self, kind: Kind, namespace: str | None = None, *, limit: int = 500,
                   label_selector: LabelSelector | str | None = None,
                   field_selector: FieldSelector | str | None = None) -> tuple[list[Obj], str]:
        """Every item, page by page; and the resourceVersion to watch from."""
        items: list[Obj] = []
        token = ""
        while True:
            page = await self.list_page(kind, namespace, limit=limit, continue_=token, label_selector=label_selector,
                                        field_selector=field_selector)
            for item in page.get("items") or []:
                item.setdefault("apiVersion", kind.api_version)
                item.setdefault("kind", kind.kind)
                items.append(item)
            md = page.get("metadata") or {}
            token = md.get("continue") or ""
            if not token:
                return items, str(md.get("resourceVersion") or "")

    async def create(self, kind: Kind, obj: Obj, *, namespace: str | None = None, dry_run: bool = False,
                     subresource_of: str | None = None, subresource: str | None = None) -> Obj:
        ns = namespace if namespace is not None else (obj.get("metadata") or {}).get("namespace")
        params = _params(dryRun="All" if dry_run else None, fieldManager=self.field_manager)
        path = resource_path(kind, ns, subresource_of, subresource) if subresource_of else resource_path(kind, ns)
        out: Obj = await self.request("POST", path, params=params, body=obj)
        return out

    async def replace(self, kind: Kind, obj: Obj, *, subresource: str | None = None) -> Obj:
        md = obj["metadata"]
        out: Obj = await self.request("PUT", resource_path(kind, md.get("namespace"), md["name"], subresource),
                                      params={"fieldManager": self.field_manager}, body=obj)
        return out

    async def patch(self, kind: Kind, namespace: str | None, name: str, body: Any, *, patch_type: str = "merge",
                    subresource: str | None = None, force: bool = False) -> Obj:
        content_type = PATCH_TYPES.get(patch_type)
        if content_type is None:
            raise st.BadRequest(f"unknown patch type {patch_type!r}: {', '.join(PATCH_TYPES)}")
        params = _params(fieldManager=self.field_manager, force="true" if force else None)
        out: Obj = await self.request("PATCH", resource_path(kind, namespace, name, subresource), params=params,
                                      body=body, content_type=content_type)
        return out

    async def apply(self, kind: Kind, obj: Obj, *, force: bool = False, subresource: str | None = None) -> Obj:
        """Server-side apply of ``obj`` as this client's field manager."""
        md = obj["metadata"]
        return await self.patch(kind, md.get("namespace"), md["name"], obj, patch_type="apply",
                                subresource=subresource, force=force)

    async def delete(self, kind: Kind, namespace: str | None, name: str, *, propagation: str | None = None,
                     uid: str | None = None, resource_version: str | None = None,
                     grace_period_seconds: int | None = None) -> Obj | None:
        """The object as the deletion left it (``deletionTimestamp`` set while finalizers or a grace period
        hold it), or the ``Status`` of a finished deletion."""
        out: Obj | None = await self.request(
            "DELETE", resource_path(kind, namespace, name),
            body=_delete_body(propagation, uid, resource_version, grace_period_seconds))
        return out

    async def watch(self, kind: Kind, namespace: str | None = None, *, resource_version: str = "",
                    label_selector: LabelSelector | str | None = None,
                    field_selector: FieldSelector | str | None = None,
                    timeout_seconds: int = 300, bookmarks: bool = True) -> AsyncGenerator[WatchEvent, None]:
        """Events after ``resource_version`` until the server ends the watch; ``Gone`` when it is too old."""
        params = _params(label_selector=label_selector, field_selector=field_selector, watch="true",
                         resourceVersion=resource_version or None, timeoutSeconds=timeout_seconds,
                         allowWatchBookmarks="true" if bookmarks else None)
        await self.limiter.acquire()
        path = resource_path(kind, namespace)
        try:
            async with self._watcher().stream("GET", path, params=params,
                                         timeout=httpx.Timeout(self.timeout, read=timeout_seconds + 30)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _response_error(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield _event(line)
        except httpx.HTTPError as e:
            raise ConnectionFailed(f"watch {self.server}{path}: {type(e).__name__}: {e}") from e


class Api(_Base):
    """The synchronous twin of ``AsyncApi`` for the CLI and the checkers; close it (or use ``with``)."""

    def __init__(self, config: ClusterConfig, *, qps: float = 0.0, burst: int = 1, timeout: float = 30.0,
                 field_manager: str = "turbok", user_agent: str = "turbok", **options: Any) -> None:
        super().__init__(config, qps=qps, burst=burst, field_manager=field_manager)
        self.timeout = timeout
        options.setdefault("trust_env", False)
        headers = {"User-Agent": user_agent, **options.pop("headers", {})}
        #: The underlying ``httpx.Client`` (base URL, TLS, credentials), for raw calls of old callers.
        self.http = config.http_client(timeout=timeout, headers=headers, **options)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
             content_type: str = "application/json", accept: str = "application/json",
             headers: dict[str, str] | None = None, timeout: float | None = None) -> httpx.Response:
        """One call; the raw answer (a failure status raised as its ``ApiError``)."""
        content, hdrs = self._body(body, content_type)
        hdrs["Accept"] = accept
        hdrs.update(headers or {})
        for attempt in range(RETRIES_429 + 1):
            self.limiter.acquire_sync()
            try:
                response = self.http.request(method, path, params=params, content=content, headers=hdrs,
                                             timeout=timeout if timeout is not None else self.timeout)
            except httpx.TimeoutException as e:
                raise ConnectionFailed(f"{method} {self.server}{path}: timed out") from e
            except httpx.HTTPError as e:
                raise ConnectionFailed(f"cannot reach {self.server}: {e}") from e
            if response.status_code < 400:
                return response
            err = _response_error(response)
            if isinstance(err, st.TooManyRequests) and attempt < RETRIES_429:
                time.sleep(min(float(err.retry_after or 1), MAX_RETRY_AFTER))
                continue
            raise err
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._decode(self.send(method, path, **kwargs))

    def pages(self, path: str, *, params: dict[str, Any] | None = None, limit: int = 500,
              headers: dict[str, str] | None = None) -> Iterator[Obj]:
        """Every item of a list, following ``continue`` tokens."""
        query = {**(params or {}), "limit": limit}
        while True:
            page = self.send("GET", path, params=query, headers=headers).json()
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            query["continue"] = token

    def watch(self, path: str, *, params: dict[str, Any] | None = None,
              timeout_seconds: int = 300) -> Iterator[WatchEvent]:
        query = {**(params or {}), "watch": "true", "timeoutSeconds": timeout_seconds}
        try:
            with self.http.stream("GET", path, params=query,
                                   timeout=httpx.Timeout(self.timeout, read=timeout_seconds + 30)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _response_error(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield _event(line)
        except httpx.HTTPError as e:
            raise ConnectionFailed(f"watch on {self.server} broke: {e}") from e
