"""Resource handlers: CRUD, list, watch, patch, and the status and scale subresources.

One dispatcher parses every resource URL (``/api/v1/...`` and
``/apis/<group>/<version>/...``, namespaced or not) into a ``Target`` and
calls the registry. Errors are ``turbok.api.status`` exceptions; the app's
middleware turns them into ``Status`` responses.

Bodies are checked before anything else sees them (``limits.check_body_shape``:
nesting and value count, 400). A body over ``StoreLimits.offload_bytes`` is
decoded, written and its answer encoded on a registry worker thread
(``ObjectRegistry.offload``), so a large write never stalls the event loop; a
GET sends the stored JSON as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from turbok.api import meta as m
from turbok.api.kinds import POD, Kind, KindRegistry
from turbok.api.status import ApiError, BadRequest, Cause, Invalid, MethodNotAllowed, NotFound, status_success
from turbok.apiserver import protobuf
from turbok.apiserver.limits import LIMITS, check_body_shape
from turbok.apiserver.table import to_table, wants_table
from turbok.store.registry import ObjectRegistry, WriteOptions, parse_resource_version
from turbok.store.watch import watch_line

__all__ = ["POD_CREATE_SUBRESOURCES", "POD_STREAM_SUBRESOURCES", "STREAM_HANDLER", "StreamHandler", "Target",
           "handle_resource", "parse_target"]

log = logging.getLogger(__name__)

#: Longest a watch stays open when the client names no timeoutSeconds.
DEFAULT_WATCH_SECONDS = 1800
#: How often a quiet watch that allows bookmarks gets one (kube-apiserver: about a minute).
BOOKMARK_SECONDS = 60.0
#: The annotation of the bookmark that ends the initial events of a watch-list.
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class Target:
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


#: Pod subresources that are POSTed once: ``pods/binding`` (a v1 Binding), ``pods/eviction`` (policy/v1 Eviction).
POD_CREATE_SUBRESOURCES = ("binding", "eviction")
#: Pod subresources that stream (``turbok.apiserver.streaming`` serves them through ``STREAM_HANDLER``).
POD_STREAM_SUBRESOURCES = ("log", "exec", "attach", "portforward")

#: What serves a Pod's streaming subresources, given the request, the registry and the parsed target.
StreamHandler = Callable[[web.Request, ObjectRegistry, Target], Awaitable[web.StreamResponse]]
#: The app's stream handler (``create_app(stream_handler=...)``); without one those subresources answer 404.
STREAM_HANDLER: web.AppKey[StreamHandler] = web.AppKey("stream_handler")


def parse_target(kinds: KindRegistry, path: str) -> Target:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise NotFound("the server could not find the requested resource")
    if not rest:
        raise NotFound("the server could not find the requested resource")
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        candidate = _try_kind(kinds, group, version, rest[2])
        if candidate is not None and candidate.namespaced:
            namespace, rest = rest[1], rest[2:]
        elif candidate is None and _try_kind(kinds, group, version, "namespaces") is None:
            kinds.by_resource(group, version, rest[2])  # name the resource asked for, not "namespaces"
    kind = kinds.by_resource(group, version, rest[0])
    if kind.namespaced and namespace is None and len(rest) > 1:
        raise NotFound(f"{kind.qualified} is namespaced: use .../namespaces/<namespace>/{kind.plural}/<name>")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if len(rest) > 3 or (sub is not None and sub not in _subresources(kind)):
        raise NotFound("the server could not find the requested resource")
    return Target(kind, namespace, name, sub)


def _try_kind(kinds: KindRegistry, group: str, version: str, plural: str) -> Kind | None:
    try:
        return kinds.by_resource(group, version, plural)
    except NotFound:
        return None


def _subresources(kind: Kind) -> set[str]:
    subs = set()
    if kind.status_subresource:
        subs.add("status")
    if kind.scale:
        subs.add("scale")
    if kind.group == "" and kind.plural == "namespaces":
        subs.add("finalize")
    if kind is POD:
        subs.update(POD_CREATE_SUBRESOURCES, POD_STREAM_SUBRESOURCES)
    return subs


def _json(data: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    return _json_bytes(json.dumps(data, separators=(",", ":")).encode(), status, warnings)


def _json_bytes(body: bytes, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    for warning in list(dict.fromkeys(warnings or []))[:20]:  # a write done again adds its warnings again
        # One header per warning; RFC 7234 warn-text is a quoted-string: escape backslashes and quotes.
        text = warning.replace("\\", "\\\\").replace('"', '\\"')
        headers.add("Warning", f'299 - "{text}"')
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _decode(request: web.Request, raw: bytes) -> Any:
    """The body as data: protobuf, JSON or YAML, within the limits' nesting and value count."""
    if not raw:
        raise BadRequest("the request body is empty")
    limits = request.app[LIMITS]
    if request.content_type == protobuf.MEDIA_TYPE:
        return protobuf.decode(raw)
    body: Any = None
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"the request body is nested more than {limits.max_depth} levels deep") from None
    except ValueError:
        try:
            import yaml

            body = yaml.safe_load(raw)
        except RecursionError:
            raise BadRequest(f"the request body is nested more than {limits.max_depth} levels deep") from None
        except Exception as e:  # a malformed body is the client's problem, not a crash
            raise BadRequest(f"the request body is neither JSON nor YAML: {e}") from e
    check_body_shape(body, max_depth=limits.max_depth, max_values=limits.max_body_bytes // 2)
    return body


async def _write(request: web.Request, registry: ObjectRegistry, call: Callable[[Any], Any],
                 status: int = 200, warnings: list[str] | None = None) -> web.Response:
    """Read the body, hand it to ``call`` (a registry write) and answer with its result as JSON.

    Small bodies are done here, on the event loop; large ones on a registry worker thread.
    """
    raw = await request.read()

    def work() -> bytes:
        return json.dumps(call(_decode(request, raw)), separators=(",", ":")).encode()

    if len(raw) <= registry.db.limits.offload_bytes:
        return _json_bytes(work(), status, warnings)
    return _json_bytes(await registry.offload(work), status, warnings)


def _write_options(request: web.Request) -> WriteOptions:
    q = request.query
    dry_run = q.get("dryRun", "")
    if dry_run and dry_run != "All":  # kube-apiserver's answer, word for word (differential tests)
        raise Invalid(f'Invalid dry run value: Unsupported value: "{dry_run}": supported values: "All"',
                      causes=[Cause("dryRun", f'Unsupported value: "{dry_run}": supported values: "All"',
                                    "FieldValueNotSupported")])
    validation = q.get("fieldValidation") or "Warn"
    if validation not in ("Ignore", "Warn", "Strict"):
        raise BadRequest(f"fieldValidation must be Ignore, Warn or Strict, not {validation!r}")
    return WriteOptions(dry_run=bool(dry_run), field_validation=validation)


def _selectors(request: web.Request, kind: Kind) -> tuple[m.LabelSelector, m.FieldSelector]:
    return (m.LabelSelector.parse(request.query.get("labelSelector")),
            m.FieldSelector.parse(request.query.get("fieldSelector"), extra=kind.field_selectors))


async def handle_resource(request: web.Request, registry: ObjectRegistry, target: Target) -> web.StreamResponse:
    kind, method = target.kind, request.method
    if target.name is None:
        if method == "GET":
            if request.query.get("watch") in ("1", "true", "True"):
                return await _watch(request, registry, target)
            return _list(request, registry, target)
        if method == "POST":
            opts = _write_options(request)
            return await _write(request, registry,
                                lambda body: registry.create(kind, body, namespace=target.namespace, opts=opts),
                                201, opts.warnings)  # a dry run answers 201 too, as kube-apiserver
        if method == "DELETE":
            return await _delete_collection(request, registry, target)
        raise MethodNotAllowed(f"{method} is not supported on {kind.qualified}")

    ns = target.namespace or ""
    if target.subresource in POD_STREAM_SUBRESOURCES:
        streams = request.app.get(STREAM_HANDLER)
        if streams is None:
            raise NotFound(f"pods/{target.subresource} is not served: this API server has no node to stream from")
        return await streams(request, registry, target)
    if target.subresource in POD_CREATE_SUBRESOURCES:
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not supported on pods/{target.subresource}; POST a "
                                   + ("v1 Binding" if target.subresource == "binding" else "policy/v1 Eviction"))
        opts = _write_options(request)
        name, sub_name = target.name, target.subresource
        return await _write(request, registry, lambda body: registry.create_subresource(
            kind, ns, name, sub_name, body, opts=opts), 201)
    if target.subresource == "scale":
        if method == "GET":
            return _json(registry.get_scale(kind, ns, target.name))
        opts = _write_options(request)
        name = target.name
        if method == "PUT":
            return await _write(request, registry,
                                lambda body: registry.update_scale(kind, ns, name, body, opts=opts))
        if method == "PATCH":
            return await _write(request, registry, lambda body: registry.patch_scale(
                kind, ns, name, request.content_type, body, opts=opts))
        raise MethodNotAllowed(f"{method} is not supported on {kind.plural}/scale")

    sub = "status" if target.subresource == "status" else None
    if method == "GET":
        _check_resource_version(request)
        if wants_table(request.headers.get("Accept", "")):
            obj = registry.get(kind, ns, target.name)
            return _json(to_table(kind, [obj], obj["metadata"].get("resourceVersion", ""),
                                  request.query.get("includeObject", "Metadata")))
        return _json_bytes(registry.get_json(kind, ns, target.name).encode())
    name = target.name
    if method == "PUT":
        opts = _write_options(request)
        return await _write(request, registry, lambda body: registry.update(
            kind, body, namespace=target.namespace, name=name, subresource=sub, opts=opts), warnings=opts.warnings)
    if method == "PATCH":
        opts = _write_options(request)
        return await _write(request, registry, lambda body: registry.patch(
            kind, target.namespace, name, request.content_type, body, subresource=sub, opts=opts),
            warnings=opts.warnings)
    if method == "DELETE" and target.subresource is None:
        return await _delete(request, registry, target)
    raise MethodNotAllowed(f"{method} is not supported here")


async def _delete_options(request: web.Request) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if request.can_read_body:
        raw = await request.read()
        if raw and request.content_type == protobuf.MEDIA_TYPE:
            options = protobuf.decode(raw)
        elif raw.strip():
            try:
                options = json.loads(raw)
            except (ValueError, RecursionError) as e:
                raise BadRequest(f"DeleteOptions must be JSON: {e}") from e
            limits = request.app[LIMITS]
            check_body_shape(options, max_depth=limits.max_depth, max_values=limits.max_body_bytes // 2)
    if "propagationPolicy" in request.query:
        options["propagationPolicy"] = request.query["propagationPolicy"]
    if "gracePeriodSeconds" in request.query:
        try:
            options["gracePeriodSeconds"] = int(request.query["gracePeriodSeconds"])
        except ValueError:
            raise BadRequest("gracePeriodSeconds must be an integer") from None
    if request.query.get("dryRun"):
        options["dryRun"] = [request.query["dryRun"]]
    if not isinstance(options, dict):
        raise BadRequest("DeleteOptions must be an object")
    grace = options.get("gracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        raise BadRequest(f"gracePeriodSeconds must be an integer, not {grace!r}")
    policy = options.get("propagationPolicy")
    if policy is None and options.get("orphanDependents") is True:
        policy = "Orphan"
    if policy not in (None, "Background", "Foreground", "Orphan"):
        raise BadRequest(f"unsupported propagationPolicy {policy!r}")
    options["propagationPolicy"] = policy
    return options


async def _delete(request: web.Request, registry: ObjectRegistry, target: Target) -> web.Response:
    assert target.name is not None
    options = await _delete_options(request)
    opts = WriteOptions(dry_run=bool(options.get("dryRun")))
    obj = registry.delete(target.kind, target.namespace, target.name, propagation=options["propagationPolicy"],
                          preconditions=options.get("preconditions"),
                          grace_period_seconds=options.get("gracePeriodSeconds"), opts=opts)
    return _json(obj)


async def _delete_collection(request: web.Request, registry: ObjectRegistry, target: Target) -> web.Response:
    options = await _delete_options(request)
    labels, fields = _selectors(request, target.kind)
    result = registry.list(target.kind, target.namespace, label_selector=labels, field_selector=fields)
    opts = WriteOptions(dry_run=bool(options.get("dryRun")))
    for obj in result.items:
        md = obj["metadata"]
        try:
            registry.delete(target.kind, md.get("namespace"), md["name"],
                            propagation=options["propagationPolicy"],
                            grace_period_seconds=options.get("gracePeriodSeconds"), opts=opts)
        except NotFound:
            continue
    return _json(status_success(kind=target.kind.plural, group=target.kind.group))


def _check_resource_version(request: web.Request) -> None:
    """A ``resourceVersion`` parameter must be one (400 otherwise); a read always serves the latest state."""
    value = request.query.get("resourceVersion")
    if value:
        parse_resource_version(value)


def _list(request: web.Request, registry: ObjectRegistry, target: Target) -> web.Response:
    _check_resource_version(request)
    labels, fields = _selectors(request, target.kind)
    try:
        limit = int(request.query.get("limit", "0") or 0)
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    result = registry.list(target.kind, target.namespace, label_selector=labels, field_selector=fields,
                           limit=limit, continue_token=request.query.get("continue", ""))
    if wants_table(request.headers.get("Accept", "")):
        table = to_table(target.kind, result.items, result.resource_version,
                         request.query.get("includeObject", "Metadata"))
        if result.continue_token:
            table["metadata"]["continue"] = result.continue_token
        return _json(table)
    metadata: dict[str, Any] = {"resourceVersion": result.resource_version}
    if result.continue_token:
        metadata["continue"] = result.continue_token
        if not labels and not fields:  # kube-apiserver counts what is left only for an unfiltered list
            metadata["remainingItemCount"] = result.remaining
    return _json({"apiVersion": target.kind.api_version, "kind": target.kind.list_kind, "metadata": metadata,
                  "items": result.items})


def _flag(request: web.Request, name: str) -> bool | None:
    value = request.query.get(name)
    return None if value is None else value in ("1", "true", "True")


async def _watch(request: web.Request, registry: ObjectRegistry, target: Target) -> web.StreamResponse:
    labels, fields = _selectors(request, target.kind)
    try:
        timeout = float(request.query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
    except ValueError:
        raise BadRequest("timeoutSeconds must be a number") from None
    rv = request.query.get("resourceVersion")
    bookmarks = bool(_flag(request, "allowWatchBookmarks"))
    initial_events = _flag(request, "sendInitialEvents")
    if initial_events:
        # The watch-list protocol (client-go's WatchListClient): state as ADDED, then a bookmark marking its end.
        causes = []
        if not bookmarks:
            causes.append(Cause("allowWatchBookmarks", "Required value: allowWatchBookmarks must be set to true "
                                "when sendInitialEvents is set", "FieldValueRequired"))
        if request.query.get("resourceVersionMatch") != "NotOlderThan":
            causes.append(Cause("resourceVersionMatch", "Forbidden: sendInitialEvents requires setting "
                                "resourceVersionMatch to NotOlderThan", "FieldValueForbidden"))
        if causes:
            raise Invalid.of(kind="ListOptions", group="meta.k8s.io", name="", causes=causes)
    table = wants_table(request.headers.get("Accept", ""))
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
    response.enable_chunked_encoding()
    try:
        watcher, initial = registry.watch(target.kind, target.namespace,
                                          resource_version=None if initial_events else rv,
                                          label_selector=labels, field_selector=fields)
    except ApiError as e:
        if e.code != 410:
            raise
        # kube-apiserver answers a too-old resourceVersion with 200 and one ERROR event.
        await response.prepare(request)
        await response.write(json.dumps({"type": "ERROR", "object": e.to_status()}).encode() + b"\n")
        return response
    if initial_events is False and not rv:
        initial = []  # "from now, without the current state"
    start_rv = str(registry.db.revision)  # read before any await: nothing can commit in between

    def encode(type_: str, obj: dict[str, Any]) -> bytes:
        if table:
            obj = to_table(target.kind, [obj], obj["metadata"].get("resourceVersion", ""))
        return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"

    def bookmark(revision: str, annotations: dict[str, str] | None = None) -> bytes:
        md: dict[str, Any] = {"resourceVersion": revision}
        if annotations:
            md["annotations"] = annotations
        obj = {"kind": target.kind.kind, "apiVersion": target.kind.api_version, "metadata": md}
        return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"

    await response.prepare(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_bookmark = loop.time()
    try:
        for row in initial:
            await response.write(encode("ADDED", row.object()) if table else watch_line("ADDED", row.data))
        if initial_events:
            await response.write(bookmark(start_rv, {INITIAL_EVENTS_END: "true"}))
        iterator = watcher.__aiter__()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            tick = min(remaining, 15.0, BOOKMARK_SECONDS if bookmarks else 15.0)
            try:
                type_, event = await asyncio.wait_for(iterator.__anext__(), tick)
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                if bookmarks and loop.time() - last_bookmark >= BOOKMARK_SECONDS:
                    # Nothing is queued for this watcher, so it has seen every change up to now.
                    revision = str(registry.db.revision)
                    last_bookmark = loop.time()
                    await response.write(bookmark(revision))
                continue
            except StopAsyncIteration:
                break
            await response.write(encode(type_, event.object()) if table else event.line(type_))
    except ConnectionResetError:
        pass
    finally:
        watcher.close()
    return response
