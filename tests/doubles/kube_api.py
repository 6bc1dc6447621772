"""A Kubernetes API double: an aiohttp server on 127.0.0.1 that replays a fixture.

Use it to drive a Kubernetes client (turbok's, kubectl, the ``kubernetes``
package) against a cluster written for a test, over real HTTP on loopback.
It is a double, not an API server: no validation, no admission chain, no
controllers, except what a test adds as reactors.

What it serves
    ``/version``; discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/G``,
    ``/apis/G/V``) generated from the fixture's ``resources`` (or served
    verbatim from ``discovery``); for every resource: list (label and field
    selectors, all namespaces), watch (``?watch=1``: the current objects as
    ADDED, then changes, until ``timeoutSeconds``), get, create (``generateName``,
    ``dryRun=All``; 404 when the namespace does not exist and namespaces are
    served), update, merge/strategic/JSON patch, delete, deletecollection,
    the ``status`` subresource; ``pods/log`` (``?container=``) from
    ``Store.logs``; ``services/NAME:PORT/proxy/PATH`` and
    ``pods/NAME:PORT/proxy/PATH`` from ``Store.proxy`` (503 "no endpoints"
    when the service exists without an answer). Failures are ``Status`` objects.

What it records
    ``requests`` (method, path, query, body), ``store.created`` and
    ``store.deleted`` (objects in the order they were created or deleted).

Behaviour
    ``store.on(verb, fn, group=, resource=)`` runs ``fn(event)`` around requests:
    a fake Kueue admitting a Job, a kubelet finishing a Pod and setting its log,
    a webhook raising ``Reject``. See ``kube_store.Store.on``.

Running it::

    async with KubeApiDouble(fixture) as api:           # on the running loop
        ...
    with KubeApiDouble(fixture).running() as api:        # in a thread, for sync code
        api.write_kubeconfig(tmp_path / "kubeconfig")

``token="..."`` makes it require ``Authorization: Bearer <token>``; ``routes``
adds extra aiohttp handlers (``[("POST", "/execute", handler)]``) on the same port;
``ssl_context`` serves HTTPS (require client certificates through the context).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .kube_store import Event, Reject, Resource, Store, load_fixture, merge_patch

__all__ = ["KubeApiDouble", "RecordedRequest", "Reject", "Event", "Store"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def _not_found(res: Resource, name: str) -> web.Response:
    plural = f"{res.name}.{res.group}" if res.group else res.name
    return _status(404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": res.name})


def _json_patch(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        if op["op"] == "add" and isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), op["value"])
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
    return doc


class KubeApiDouble:
    """The server. ``store`` holds the cluster; ``url`` is set once started."""

    def __init__(
        self,
        fixture: dict[str, Any] | str | Path,
        *,
        token: str | None = None,
        routes: list[tuple[str, str, Handler]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.store = Store.from_fixture(load_fixture(fixture))
        self.ssl_context = ssl_context
        self.token = token
        self.requests: list[RecordedRequest] = []
        self._extra = routes or []
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> KubeApiDouble:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for method, path, handler in self._extra:
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeApiDouble:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[KubeApiDouble]:
        """Serve from a background thread (for synchronous code under test)."""
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="kube-api-double", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Kubernetes API double did not start")
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def write_kubeconfig(
        self, path: Path, *, namespace: str | None = None, extensions: dict[str, Any] | None = None, token: str | None = None,
        cluster_extra: dict[str, Any] | None = None, user_extra: dict[str, Any] | None = None,
    ) -> Path:
        """A kubeconfig with one context, ``double``, pointing here (``*_extra`` merged into its entries)."""
        cluster: dict[str, Any] = {"server": self.url, **(cluster_extra or {})}
        if extensions:
            cluster["extensions"] = [{"name": k, "extension": v} for k, v in extensions.items()]
        user: dict[str, Any] = dict(user_extra or {})
        if token or self.token:
            user["token"] = token or self.token
        context: dict[str, Any] = {"cluster": "double", "user": "double"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "double",
            "clusters": [{"name": "double", "cluster": cluster}],
            "users": [{"name": "double", "user": user}],
            "contexts": [{"name": "double", "context": context}],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- discovery ----------------------------------------------------------------------------

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for r in self.store.resources:
            versions = groups.setdefault(r.group, [])
            if r.version not in versions:
                versions.append(r.version)
        for group, extra in self.store.extra_groups.items():
            versions = groups.setdefault(group, [])
            versions.extend(v for v in extra if v not in versions)
        return groups

    def _group_doc(self, name: str, versions: list[str]) -> dict[str, Any]:
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": gvs, "preferredVersion": gvs[0]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        items = [r for r in self.store.resources if (r.group, r.version) == (group, version)]
        if not items:
            return None
        resources: list[dict[str, Any]] = []
        for r in items:
            resources.append({"name": r.name, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                              "kind": r.kind, "verbs": list(r.verbs)})
            for sub in r.subresources:
                verbs = ["get"] if sub in ("log", "proxy") else ["get", "patch", "update"]
                resources.append({"name": f"{r.name}/{sub}", "singularName": "", "namespaced": r.namespaced,
                                  "kind": "Pod" if sub == "log" else r.kind, "verbs": verbs})
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    def _discovery(self, path: str) -> dict[str, Any] | None:
        if path in self.store.discovery_overrides:
            return dict(self.store.discovery_overrides[path])
        groups = self._groups()
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return self.store.version or {"major": "1", "minor": "35", "gitVersion": "v1.35.0"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": groups.get("", ["v1"]), "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [self._group_doc(g, v) for g, v in groups.items() if g]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return self._group_doc(parts[1], groups[parts[1]])
        if len(parts) == 2 and parts[0] == "api":
            return self._resource_list("", parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return self._resource_list(parts[1], parts[2])
        return None

    # -- requests -----------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return _status(400, "BadRequest", "request body is not JSON")
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.query), body))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if request.method == "GET":
            doc = self._discovery(request.path)
            if doc is not None:
                return web.json_response(doc)
        try:
            return await self._resource_request(request, body)
        except Reject as e:
            return _status(e.code, e.reason, e.message)

    def _parse(self, path: str) -> tuple[Resource, str | None, str | None, list[str]] | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        res = self.store.resource_by_path(group, version, rest[0])
        if res is None:
            return None
        name = rest[1] if len(rest) > 1 else None
        return res, namespace, name, rest[2:]

    async def _resource_request(self, request: web.Request, body: Any) -> web.StreamResponse:
        parsed = self._parse(request.path)
        if parsed is None:
            return _status(404, "NotFound", "the server could not find the requested resource")
        res, ns, name, sub = parsed
        store, q, method = self.store, request.query, request.method
        if name is None:
            if method == "GET" and q.get("watch") in ("1", "true"):
                return await self._watch(request, res, ns)
            if method == "GET":
                store.react("read", res, None, ns, None)
                items = store.list_res(res, ns, q.get("labelSelector"), q.get("fieldSelector"))
                return web.json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                          "metadata": {"resourceVersion": store.next_rv()}, "items": items})
            if method == "POST":
                return self._create(res, ns, body or {}, dry_run=q.get("dryRun") == "All")
            if method == "DELETE":
                for obj in store.list_res(res, ns, q.get("labelSelector"), q.get("fieldSelector")):
                    self._delete(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})
            return _status(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        if sub and sub[0] == "proxy":
            return self._proxy(res, ns, name, "/".join(sub[1:]), dict(q))
        if sub and sub[0] == "log":
            return self._log(res, ns, name, q.get("container"))
        key_name = name
        if method == "GET":
            store.react("read", res, None, ns, key_name)
            with store.lock:
                found = store.objects.get(store._key(res, ns, key_name))
            return web.json_response(found) if found is not None else _not_found(res, key_name)
        if method in ("PUT", "PATCH"):
            return self._update(res, ns, key_name, body, method, request.content_type, status_only=bool(sub and sub[0] == "status"))
        if method == "DELETE":
            return self._delete(res, ns, key_name)
        return _status(405, "MethodNotAllowed", f"{method} is not supported")

    def _create(self, res: Resource, ns: str | None, obj: dict[str, Any], *, dry_run: bool) -> web.Response:
        store = self.store
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            ns = ns or meta.get("namespace") or "default"
            meta["namespace"] = ns
            ns_res = store.resource_by_path("", "v1", "namespaces")
            if ns_res is not None and store.objects.get(store._key(ns_res, None, ns)) is None:
                return _status(404, "NotFound", f'namespaces "{ns}" not found')
        if not meta.get("name"):
            if not meta.get("generateName"):
                return _status(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        with store.lock:
            if store._key(res, ns, meta["name"]) in store.objects:
                return _status(409, "AlreadyExists", f'{res.name} "{meta["name"]}" already exists')
        store.react("create", res, obj, ns, meta["name"])
        if dry_run:
            return web.json_response(obj, status=201)
        stored = store.add(obj)
        store.created.append(copy.deepcopy(stored))
        store.react("created", res, stored, ns, meta["name"])
        return web.json_response(stored, status=201)

    def _update(self, res: Resource, ns: str | None, name: str, body: Any, method: str, ctype: str, *, status_only: bool) -> web.Response:
        store = self.store
        with store.lock:
            current = store.objects.get(store._key(res, ns, name))
        if current is None:
            return _not_found(res, name)
        if method == "PUT":
            new = copy.deepcopy(body)
            sent_rv = (new.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on {res.name} "{name}": the object has been modified')
        elif ctype == "application/json-patch+json":
            new = _json_patch(current, body or [])
        else:
            new = merge_patch(current, body or {})
        if status_only:
            new = {**copy.deepcopy(current), "status": new.get("status", {})}
        new["metadata"] = {**current["metadata"], **{k: v for k, v in (new.get("metadata") or {}).items() if k not in ("uid", "creationTimestamp")}}
        new.setdefault("apiVersion", res.api_version)
        new.setdefault("kind", res.kind)
        store.react("update", res, new, ns, name)
        stored = store.update(new)
        store.react("updated", res, stored, ns, name)
        return web.json_response(stored)

    def _delete(self, res: Resource, ns: str | None, name: str) -> web.Response:
        store = self.store
        with store.lock:
            current = store.objects.get(store._key(res, ns, name))
        if current is None:
            return _not_found(res, name)
        store.react("delete", res, current, ns, name)
        store.remove(res, ns, name)
        store.react("deleted", res, current, ns, name)
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success",
                                  "details": {"name": name, "kind": res.name, "uid": current["metadata"]["uid"]}})

    def _log(self, res: Resource, ns: str | None, name: str, container: str | None) -> web.Response:
        store = self.store
        store.react("read", res, None, ns, name)
        with store.lock:
            pod = store.objects.get(store._key(res, ns, name))
            if pod is None:
                return _not_found(res, name)
            text = store.logs.get(f"{ns}/{name}/{container}") if container else None
            if text is None:
                text = store.logs.get(f"{ns}/{name}")
        if text is None:
            return _status(400, "BadRequest", f'container in pod "{name}" is waiting to start: ContainerCreating')
        return web.Response(text=text, content_type="text/plain")

    def _proxy(self, res: Resource, ns: str | None, target: str, path: str, query: dict[str, str]) -> web.Response:
        parts = target.split(":")
        name = parts[1] if len(parts) == 3 else parts[0]
        port_target = ":".join(parts[-2:]) if len(parts) == 3 else target
        store = self.store
        with store.lock:
            if store.objects.get(store._key(res, ns, name)) is None:
                return _not_found(res, name)
            answer = store.proxy.get(f"{ns}/{port_target}/{path}")
        if answer is None:
            return _status(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
        if callable(answer):
            code, text = answer(query)
            return web.Response(text=text, status=code, content_type="text/plain")
        return web.Response(text=answer, content_type="text/plain")

    async def _watch(self, request: web.Request, res: Resource, ns: str | None) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        selector = request.query.get("labelSelector")
        from .kube_store import match_labels

        def watcher(kind: str, r: Resource, obj: dict[str, Any]) -> None:
            if (r.group, r.name) != (res.group, res.name):
                return
            if ns is not None and res.namespaced and obj["metadata"].get("namespace") != ns:
                return
            if match_labels(selector, obj["metadata"].get("labels") or {}):
                loop.call_soon_threadsafe(queue.put_nowait, (kind, obj))

        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if request.query.get("resourceVersion") in (None, "", "0"):
            for obj in self.store.list_res(res, ns, selector, request.query.get("fieldSelector")):
                await resp.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
        self.store.watchers.append(watcher)
        try:
            deadline = loop.time() + float(request.query.get("timeoutSeconds", "30"))
            while (left := deadline - loop.time()) > 0:
                try:
                    kind, obj = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        finally:
            self.store.watchers.remove(watcher)
        return resp


def serve_forever(fixture: dict[str, Any] | str | Path, **kwargs: Any) -> None:  # pragma: no cover - manual use
    """``python -m tests.doubles.kube_api FIXTURE_DIR`` for poking at a fixture with kubectl."""
    async def main() -> None:
        async with KubeApiDouble(fixture, **kwargs) as api:
            print(api.url, flush=True)
            await asyncio.Event().wait()
    asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    import sys
    serve_forever(sys.argv[1])
