"""Fixtures: the API server's aiohttp application over a real registry, served in-process on loopback.

``api`` is an aiohttp ``TestClient`` carrying the bearer token; ``anonymous``
is one without it. No TLS here: certificates are tested on their own and by
the compatibility tests against ``turbok serve``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from turbok.api.kinds import default_registry
from turbok.apiserver.app import create_app
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

TOKEN = "unit-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
POOLS = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/default/sandboxwarmpools"
SANDBOXES = "/apis/agents.x-k8s.io/v1beta1/namespaces/default/sandboxes"
NAMESPACES = "/api/v1/namespaces"


def pool(name: str = "p1", replicas: int = 1, **meta: object) -> dict[str, object]:
    return {"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
            "metadata": {"name": name, **meta}, "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": "t"}}}


#: The in-process client type of these tests.
Api = TestClient[web.Request, web.Application]


@dataclass
class Server:
    registry: ObjectRegistry
    api: Api
    anonymous: Api
    metrics: CollectorRegistry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ObjectRegistry]:
    reg = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    reg.ensure_namespace("default")
    yield reg
    reg.db.close()


@pytest.fixture
async def server(registry: ObjectRegistry) -> AsyncIterator[Server]:
    metrics = CollectorRegistry()
    app = create_app(registry, token=TOKEN, metrics_registry=metrics)
    test_server = TestServer(app, host="127.0.0.1")
    api = TestClient(test_server, headers=AUTH)
    await api.start_server()
    anonymous = TestClient(test_server)
    yield Server(registry, api, anonymous, metrics)
    await anonymous.session.close()
    await api.close()


@pytest.fixture
def api(server: Server) -> Api:
    return server.api
