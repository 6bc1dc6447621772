"""One process serving the Kubernetes-compatible API, the router and the controllers.

Start order: store (SQLite under the home), registry and default namespace,
the API server on 127.0.0.1, the router, the controllers; then the
kubeconfig and ``endpoints.json`` are written, so a reader of either finds a
serving control plane. Stop runs in reverse. The bearer token is created once
per home (``token``, mode 0600) and kept across restarts, so kubeconfigs stay
valid.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from turbok.api.kinds import KindRegistry, default_registry
from turbok.apiserver.app import create_app
from turbok.apiserver.certs import ensure_pki
from turbok.apiserver.kubeconfig import write_kubeconfig
from turbok.embedded.loopwatch import LoopWatch
from turbok.home import Home
from turbok.runtime.base import Runtime
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

__all__ = ["ControlPlane", "Endpoints"]

log = logging.getLogger(__name__)


@dataclass
class Endpoints:
    api: str
    router: str
    kubeconfig: str
    pid: int = field(default_factory=os.getpid)

    def to_dict(self) -> dict[str, Any]:
        return {"api": self.api, "router": self.router, "kubeconfig": self.kubeconfig, "pid": self.pid}


def _token(home: Home) -> str:
    path = home.root / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


class ControlPlane:
    def __init__(self, home: Home, *, host: str = "127.0.0.1", api_port: int = 0, router_port: int = 0,
                 kinds: KindRegistry | None = None, controllers: bool = True, runtime: Runtime | None = None) -> None:
        self.home = home.ensure()
        self.host = host
        self.api_port = api_port
        self.router_port = router_port
        self.kinds = kinds or default_registry()
        self.metrics = CollectorRegistry()
        self.token = _token(self.home)
        self.with_controllers = controllers
        self.registry: ObjectRegistry | None = None
        self.runtime = runtime
        self.endpoints: Endpoints | None = None
        self._runners: list[web.AppRunner] = []
        self._stoppers: list[Any] = []

    async def start(self) -> Endpoints:
        from turbok.runtime.factory import make_runtime

        if self.runtime is None:
            self.runtime = make_runtime(self.home.sandboxes)
        db = SqliteStore(self.home.store)
        self.registry = registry = ObjectRegistry(db, self.kinds)
        registry.ensure_namespace("default")
        api_app = create_app(registry, token=self.token, metrics_registry=self.metrics, server_address=self.host)
        pki = ensure_pki(self.home.root / "pki")
        api_url = await self._serve(api_app, self.api_port, ssl_context=pki.server_context())
        router_url = await self._start_router()
        if self.with_controllers:
            await self._start_controllers()
        self.endpoints = Endpoints(api=api_url, router=router_url, kubeconfig=str(self.home.kubeconfig))
        write_kubeconfig(self.home.kubeconfig, api_url=api_url, token=self.token, router_url=router_url,
                         ca_file=pki.ca_cert)
        tmp = self.home.endpoints.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints.to_dict()))
        os.replace(tmp, self.home.endpoints)
        # Everything built so far lives as long as the process: keep it out of the collector's
        # full passes, which over thousands of stored objects would stall every request for tens
        # of milliseconds. Young collections every 10,000 allocations (not 700) are rarer and still
        # short: about 9 ms each under load, where 50,000 gave single pauses of 50-90 ms.
        gc.freeze()
        gc.set_threshold(10_000, 10, 100)
        watch = LoopWatch(self.metrics)
        watch.start()
        self._stoppers.append(watch.stop)
        log.info("turbok control plane serving: api %s, router %s, kubeconfig %s", api_url, router_url,
                 self.home.kubeconfig)
        return self.endpoints

    async def _serve(self, app: web.Application, port: int, ssl_context: ssl.SSLContext | None = None) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        self._runners.append(runner)
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        scheme = "https" if ssl_context else "http"
        return f"{scheme}://{self.host}:{sock.getsockname()[1]}"

    async def _start_router(self) -> str:
        from turbok.embedded.resolver import StoreResolver
        from turbok.sandboxd.router import create_router_app

        assert self.registry is not None
        sandbox_kind = self.kinds.by_kind("agents.x-k8s.io/v1beta1", "Sandbox")
        assert self.runtime is not None
        app = create_router_app(runtime=self.runtime, resolver=StoreResolver(self.registry, sandbox_kind),
                                token=self.token, registry=self.metrics)
        url = await self._serve(app, self.router_port)
        # A capability URL: the official client joins it with the endpoint, so it works unchanged.
        return f"{url}/t/{self.token}"

    async def _start_controllers(self) -> None:
        from turbok.controllers.suite import ControllerSuite
        from turbok.embedded.client import EmbeddedClient

        assert self.registry is not None
        assert self.runtime is not None
        suite = ControllerSuite(EmbeddedClient(self.registry), self.runtime, metrics=self.metrics)
        await suite.start()
        self._stoppers.append(suite.stop)

    async def stop(self) -> None:
        for stop in reversed(self._stoppers):
            await stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.registry is not None:
            self.registry.db.close()
        try:
            data = json.loads(self.home.endpoints.read_text())
            if data.get("pid") == os.getpid():
                self.home.endpoints.unlink()
        except (OSError, ValueError):
            pass

    async def run_forever(self, stop_event: asyncio.Event) -> None:
        await self.start()
        try:
            await stop_event.wait()
        finally:
            await self.stop()


def read_endpoints(home: Home) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(Path(home.endpoints).read_text())
    except (OSError, ValueError):
        return None
    return data
