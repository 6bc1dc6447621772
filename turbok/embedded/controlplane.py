"""One process serving the Kubernetes-compatible API, the router and the controllers.

Start order: the home's lock (``embedded.lock``: one control plane per home,
or nothing is touched), the tokens, store (SQLite under the home), registry and
default namespace, the API server on 127.0.0.1, the router, the controllers;
then the kubeconfig and ``endpoints.json`` are written, so a reader of either
finds a serving control plane. Stop runs in reverse, the lock last.

Two tokens, each made once per home (mode 0600) and kept across restarts, as
are the ports (``embedded.ports``), so kubeconfigs and SDK clients stay valid:
``token``, the API's bearer token (admin), and ``router-token``, the router's
own, sent as ``Authorization: Bearer`` and never in a URL. A router token in a
client's hands grants no access to the API. Neither is ever logged or written
to ``endpoints.json``; the kubeconfig (0600) carries both.
"""

from __future__ import annotations

import asyncio
import errno
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
from turbok.embedded import ports
from turbok.embedded.lock import HomeLock
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


def _token(path: Path) -> str:
    """The token kept in ``path`` (mode 0600), made on first use."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


class ControlPlane:
    """``api_port``/``router_port``: None serves on the home's kept ports (chosen on the first start);
    a number moves them there (0: a new free port), and the home keeps the new ones."""

    def __init__(self, home: Home, *, host: str = "127.0.0.1", api_port: int | None = None,
                 router_port: int | None = None, kinds: KindRegistry | None = None, controllers: bool = True,
                 runtime: Runtime | None = None) -> None:
        self.home = home.ensure()
        self.host = host
        self.api_port = api_port
        self.router_port = router_port
        self.kinds = kinds or default_registry()
        self.metrics = CollectorRegistry()
        self.token = ""  # the API's; read or made by start(), under the home's lock
        self.router_token = ""
        self.with_controllers = controllers
        self.registry: ObjectRegistry | None = None
        self.runtime = runtime
        self.endpoints: Endpoints | None = None
        self._lock: HomeLock | None = None
        self._runners: list[web.AppRunner] = []
        self._stoppers: list[Any] = []

    async def start(self) -> Endpoints:
        """Serve; ``HomeLocked`` (nothing touched) if another control plane holds the home,
        ``PortInUse`` if a kept or given port is taken."""
        self._lock = HomeLock.acquire(self.home)
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> Endpoints:
        from turbok.runtime.factory import make_runtime

        self.token = _token(self.home.token)
        self.router_token = _token(self.home.router_token)
        if self.runtime is None:
            self.runtime = make_runtime(self.home.sandboxes)
        self.home.create_private(self.home.store)  # SQLite makes its -wal and -shm files with the db's mode
        db = SqliteStore(self.home.store)
        self.registry = registry = ObjectRegistry(db, self.kinds)
        registry.ensure_namespace("default")
        api_app = create_app(registry, token=self.token, metrics_registry=self.metrics, server_address=self.host)
        pki = ensure_pki(self.home.root / "pki")
        kept = ports.load(self.home)
        api_port = await self._serve(api_app, kept.api if self.api_port is None else self.api_port, what="api",
                                     flag="--port", ssl_context=pki.server_context())
        router_port = await self._start_router(kept.router if self.router_port is None else self.router_port)
        ports.save(self.home, ports.Ports(api=api_port, router=router_port))
        api_url, router_url = f"https://{self.host}:{api_port}", f"http://{self.host}:{router_port}"
        if self.with_controllers:
            await self._start_controllers()
        self.endpoints = Endpoints(api=api_url, router=router_url, kubeconfig=str(self.home.kubeconfig))
        write_kubeconfig(self.home.kubeconfig, api_url=api_url, token=self.token, router_url=router_url,
                         router_token=self.router_token, ca_file=pki.ca_cert)
        tmp = self.home.endpoints.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.endpoints.to_dict(), f)
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

    async def _serve(self, app: web.Application, port: int, *, what: str, flag: str,
                     ssl_context: ssl.SSLContext | None = None) -> int:
        """Serve ``app`` on ``port`` (0: the first free of ``ports.candidates()``); the port it got."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        for candidate in [port] if port else ports.candidates():
            site = web.TCPSite(runner, self.host, candidate, reuse_address=True, ssl_context=ssl_context)
            try:
                await site.start()
            except OSError as e:
                await site.stop()
                if e.errno != errno.EADDRINUSE:
                    raise
                if port:
                    raise ports.PortInUse(
                        f"cannot serve the {what} on {self.host}:{port}: another process uses that port; "
                        f"stop it, or move the {what} with `turbok up {flag} PORT` "
                        f"(or `turbok serve {flag} PORT`; 0 picks a new free port)") from None
                continue
            sock = site._server.sockets[0]  # type: ignore[union-attr]
            return int(sock.getsockname()[1])
        raise ports.PortInUse(f"no free port for the {what} on {self.host}")

    async def _start_router(self, port: int) -> int:
        from turbok.embedded.resolver import StoreResolver
        from turbok.sandboxd.router import create_router_app

        assert self.registry is not None
        sandbox_kind = self.kinds.by_kind("agents.x-k8s.io/v1beta1", "Sandbox")
        assert self.runtime is not None
        app = create_router_app(runtime=self.runtime, resolver=StoreResolver(self.registry, sandbox_kind),
                                token=self.router_token, registry=self.metrics)
        return await self._serve(app, port, what="router", flag="--router-port")

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
        self._stoppers.clear()
        if self.registry is not None:
            self.registry.db.close()
            self.registry = None
        try:
            data = json.loads(self.home.endpoints.read_text())
            if data.get("pid") == os.getpid():
                self.home.endpoints.unlink()
        except (OSError, ValueError):
            pass
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
