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
from turbok.apiserver.streaming import stream_handler
from turbok.embedded import ports
from turbok.embedded.lock import HomeLock
from turbok.embedded.loopwatch import LoopWatch
from turbok.home import Home
from turbok.runtime.cri import PodRuntime
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

__all__ = ["ControlPlane", "Endpoints"]

log = logging.getLogger(__name__)

#: A warm pool keeps this many sandboxes starting per boot the node runs at once (``WarmPoolReconciler``).
POOL_STARTING_PER_SLOT = 4
#: Seconds a warm pool waits for a burst of claims on it to pause before it refills (5 s at most): the
#: refill's boots would take this process and these cores from the claims still arriving.
POOL_BURST_QUIET = 0.5


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
                 node: bool | None = None, pod_runtime: PodRuntime | None = None, simulated_gpus: int = 0) -> None:
        """``node``: run the embedded node (default: with the controllers); ``pod_runtime``: the runtime of
        the node and the router (default: ``turbok.runtime.factory.make_pod_runtime`` under ``<home>/pods``,
        taking over the sandboxes an older turbok left under ``<home>/sandboxes``, on the pod network);
        ``simulated_gpus``: the node's GPU driver publishes that many simulated GPUs (docs/dra.md)."""
        self.home = home.ensure()
        self.host = host
        self.api_port = api_port
        self.router_port = router_port
        self.kinds = kinds or default_registry()
        self.metrics = CollectorRegistry()
        self.token = ""  # the API's; read or made by start(), under the home's lock
        self.router_token = ""
        self.with_controllers = controllers
        self.with_node = controllers if node is None else node
        self.pod_runtime = pod_runtime
        self.simulated_gpus = simulated_gpus
        self.node: Any = None  # turbok.node.node.Node once started
        self.streams: Any = None  # turbok.node.streams.NodeStreams once the node runs (pods/log, exec...)
        self.idle: Any = None  # turbok.controllers.idle.IdleSuspender, once the router or controllers need it
        self.registry: ObjectRegistry | None = None
        self.endpoints: Endpoints | None = None
        self._lock: HomeLock | None = None
        self._runners: list[web.AppRunner] = []
        self._stoppers: list[Any] = []

    def _dra_settings(self, node_dir: Path) -> Any:
        """The node's DRA: the kubelet's plugin paths (or the home's), turbok's GPU driver, accelerator metrics
        on ``/metrics`` (docs/dra.md)."""
        from turbok.node.dra.setup import DraSettings, default_plugin_dirs
        from turbok.settings import from_env

        registry, plugins = default_plugin_dirs(node_dir)
        return from_env(DraSettings, {"gpu_metrics_seconds": "TURBOK_GPU_METRICS_SECONDS"}, registry_dir=registry,
                        plugin_dir=plugins, cdi_dir=node_dir / "cdi", simulated_gpus=self.simulated_gpus,
                        metrics=self.metrics)

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
        from turbok.runtime.factory import make_pod_runtime

        self.token = _token(self.home.token)
        self.router_token = _token(self.home.router_token)
        self.home.create_private(self.home.store)  # SQLite makes its -wal and -shm files with the db's mode
        db = SqliteStore(self.home.store)  # first: a damaged store stops the start before the host is touched
        if self.pod_runtime is None:
            # Without the node the router still needs a runtime to reach sandboxes through (none run).
            self.pod_runtime = await self._make_pod_runtime() if self.with_node else make_pod_runtime(
                self.home.root / "pods")
        self.registry = registry = ObjectRegistry(db, self.kinds)
        registry.ensure_namespace("default")
        api_app = create_app(registry, token=self.token, metrics_registry=self.metrics, server_address=self.host,
                             stream_handler=stream_handler(lambda: self.streams))
        pki = ensure_pki(self.home.root / "pki")
        kept = ports.load(self.home)
        api_port = await self._serve(api_app, kept.api if self.api_port is None else self.api_port, what="api",
                                     flag="--port", ssl_context=pki.server_context())
        router_port = await self._start_router(kept.router if self.router_port is None else self.router_port)
        ports.save(self.home, ports.Ports(api=api_port, router=router_port))
        api_url, router_url = f"https://{self.host}:{api_port}", f"http://{self.host}:{router_port}"
        if self.with_node:
            await self._start_node()  # first: the Node exists before any Pod is made for it
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
                     ssl_context: ssl.SSLContext | None = None, site: Any = None) -> int:
        """Serve ``app`` on ``port`` (0: the first free of ``ports.candidates()``); the port it got."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        for candidate in [port] if port else ports.candidates():
            served = (site(runner, self.host, candidate) if site is not None else
                      web.TCPSite(runner, self.host, candidate, reuse_address=True, ssl_context=ssl_context))
            try:
                await served.start()
            except OSError as e:
                await served.stop()
                if e.errno != errno.EADDRINUSE:
                    raise
                if port:
                    raise ports.PortInUse(
                        f"cannot serve the {what} on {self.host}:{port}: another process uses that port; "
                        f"stop it, or move the {what} with `turbok up {flag} PORT` "
                        f"(or `turbok serve {flag} PORT`; 0 picks a new free port)") from None
                continue
            sock = served._server.sockets[0]  # type: ignore[union-attr]
            return int(sock.getsockname()[1])
        raise ports.PortInUse(f"no free port for the {what} on {self.host}")

    def _idle(self) -> Any:
        """The controllers' idle suspender, made once (the router and streams tell it about use); None without
        controllers."""
        if self.idle is None and self.with_controllers and self.registry is not None:
            from turbok.controllers.idle import IdleSuspender
            from turbok.embedded.client import EmbeddedClient

            self.idle = IdleSuspender(EmbeddedClient(self.registry))
        return self.idle

    async def _start_router(self, port: int) -> int:
        from turbok.embedded.activity import WakingResolver
        from turbok.embedded.resolver import StoreResolver
        from turbok.sandboxd.router import ROUTER_SOCKET, bind_unix_socket, create_router_app, site

        assert self.registry is not None
        sandbox_kind = self.kinds.by_kind("agents.x-k8s.io/v1beta1", "Sandbox")
        assert self.pod_runtime is not None
        # Each request is use of its Sandbox; one for a Sandbox idleness suspended wakes it (embedded.activity).
        resolver = WakingResolver(StoreResolver(self.registry, sandbox_kind), self._idle())
        app = create_router_app(runtime=self.pod_runtime, resolver=resolver, token=self.router_token,
                                registry=self.metrics)
        # HTTP/1.1 and HTTP/2 (gRPC, relayed to Pods) on one port: the site tells them apart.
        port = await self._serve(app, port, what="router", flag="--router-port",
                                 site=lambda runner, host, p: site(app, runner, host=host, port=p))
        # Also on a 0600 Unix socket in the home: port-forwards to the router's mirror Pod arrive there
        # (turbok.node.routerpod), already authenticated by the API server, so the router asks no token.
        await site(app, self._runners[-1], sock=bind_unix_socket(self.home.root / ROUTER_SOCKET)).start()
        return port

    async def _start_controllers(self) -> None:
        from turbok.controllers.suite import ControllerSuite
        from turbok.embedded.client import EmbeddedClient

        assert self.registry is not None
        ca = self.home.root / "pki" / "ca.crt"  # published in every namespace as kube-root-ca.crt
        # A pool keeps what this machine's node can boot in a few rounds starting, not a burst's worth.
        slots = self.node.ctx.starts.slots if self.node is not None else None
        suite = ControllerSuite(EmbeddedClient(self.registry), metrics=self.metrics,
                                root_ca=ca.read_text() if ca.exists() else None, idle=self._idle(),
                                pool_max_starting=POOL_STARTING_PER_SLOT * slots if slots else None,
                                pool_burst_quiet=POOL_BURST_QUIET if slots else 0.0)
        await suite.start()
        self._stoppers.append(suite.stop)

    async def _make_pod_runtime(self) -> PodRuntime:
        """The node's pod runtime (one instance: the node runs Pods with it, streams and the router reach
        them through it), on the pod network where this machine can make it."""
        from turbok.runtime.errors import RuntimeError_
        from turbok.runtime.factory import make_pod_runtime
        from turbok.runtime.network import PodNetwork
        from turbok.runtime.runsc import RunscSettings

        RunscSettings.from_env()  # a bad TURBOK_RUNSC_PLATFORM stops the start before the host is touched
        network = PodNetwork.from_env(self.home.root / "network")  # a bad TURBOK_POD_CIDR stops the start
        try:
            await asyncio.to_thread(network.ensure_host)
        except RuntimeError_ as e:  # no root, no nft, a range in use: run, but say what is missing
            log.warning("no pod network (%s): pods get a private loopback and no address", e)
            return self._with_agent(make_pod_runtime(self.home.root / "pods", legacy_root=self.home.sandboxes))
        return self._with_agent(make_pod_runtime(self.home.root / "pods", network=network,
                                                 legacy_root=self.home.sandboxes))

    def _with_agent(self, runtime: PodRuntime) -> PodRuntime:
        """The pod runtime puts the sandboxd agent into Sandboxes' Pods (``turbok.sandboxd.injection``)."""
        from turbok.sandboxd.injection import agent_injection

        images = getattr(runtime, "images", None)
        if images is not None and hasattr(runtime, "injection"):
            runtime.injection = agent_injection(images, self.home.root / "agent")
            if runtime.injection is None:
                log.warning("no sandboxd agent: the built-in base image is not built (turbok image build-base); "
                            "commands reach sandboxes through runsc exec")
        return runtime

    async def _start_node(self) -> None:
        """The embedded node (``turbok.node``): it runs the Pods the controllers make, under gVisor."""
        from turbok.apiserver.discovery import version_info
        from turbok.embedded.client import EmbeddedClient
        from turbok.node.node import Node, NodeSettings

        assert self.registry is not None
        assert self.pod_runtime is not None
        # The pods' gateway is this machine's address as they see it: the Node's InternalIP, their hostIP.
        network = getattr(self.pod_runtime, "network", None)
        gateway = getattr(network, "gateway", None)
        cidr = getattr(network, "network", None)
        node_dir = self.home.root / "node"
        node_dir.mkdir(mode=0o700, exist_ok=True)
        self.node = Node(EmbeddedClient(self.registry), self.pod_runtime, state_dir=node_dir, disk=self.home.root,
                         kubelet_version=str(version_info()["gitVersion"]),
                         runtime_version=_runtime_version(self.pod_runtime), storage_root=self.home.root / "storage",
                         internal_ip=str(gateway) if gateway is not None else "127.0.0.1",
                         pod_cidr=str(cidr) if cidr is not None else None, settings=NodeSettings.from_env(),
                         network=network,  # it enforces NetworkPolicy there and serves the pods' DNS
                         dra=self._dra_settings(node_dir))
        self._check_host_limits()
        await self.node.start()
        self._stoppers.append(self.node.stop)
        await self._start_streams(network)

    def _check_host_limits(self) -> None:
        """One warning line per host limit too low for the sandboxes the Node holds (``turbok.node.hostlimits``);
        the open-files limit is raised to its hard limit first, before any sandbox is adopted or booted."""
        from turbok.node.hostlimits import check_host_limits
        from turbok.node.nodeinfo import pods_capacity

        assert self.node is not None
        check_host_limits(self.node.settings.max_pods or pods_capacity(self.node.reporter.machine(), pids=False))

    async def _start_streams(self, network: Any) -> None:
        """Pod streams (logs, exec, attach, port-forward) and the router's mirror Pod and Service."""
        from turbok.embedded.activity import ActivityStreams
        from turbok.embedded.client import EmbeddedClient
        from turbok.node.routerpod import RouterPod
        from turbok.node.streams import NodeStreams
        from turbok.sandboxd.router import ROUTER_SOCKET

        assert self.registry is not None and self.pod_runtime is not None
        router = RouterPod(EmbeddedClient(self.registry), node_name=self.node.name,
                           socket_path=self.home.root / ROUTER_SOCKET, host_ip=self.node.ctx.host_ip)
        await router.start()
        self._stoppers.append(router.stop)
        self.streams = ActivityStreams(NodeStreams(self.pod_runtime, network=network, router=router,
                                                   node_name=self.node.name), self._idle())

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


def _runtime_version(runtime: PodRuntime) -> str:
    """``containerRuntimeVersion`` as a kubelet reports it: ``gvisor://<runsc version>``."""
    version = getattr(runtime, "version", None)
    if callable(version):
        version = version()
    return f"{runtime.isolation.value}://{version or 'unknown'}"


def read_endpoints(home: Home) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(Path(home.endpoints).read_text())
    except (OSError, ValueError):
        return None
    return data
