"""The self-signed CA and serving certificate, the kubeconfig written for them, and the REST client over TLS."""

from __future__ import annotations

import asyncio
import ipaddress
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from prometheus_client import CollectorRegistry

from turbok.api import status as st
from turbok.api.kinds import default_registry
from turbok.apiserver.app import create_app
from turbok.apiserver.certs import ensure_pki
from turbok.apiserver.kubeconfig import write_kubeconfig
from turbok.client.kubeconfig import ClusterConfig, load_kubeconfig
from turbok.client.rest import RestClient
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

from .conftest import TOKEN, pool


def test_pki_is_made_once_with_private_keys_and_loopback_names(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    for key in (pki.ca_key, pki.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert cert.issuer == ca.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    first = pki.cert.read_bytes()
    assert ensure_pki(tmp_path / "pki").cert.read_bytes() == first  # reused, so kubeconfigs stay valid


def test_kubeconfig_round_trip(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, api_url="https://127.0.0.1:6443", token="t0k", router_url="http://127.0.0.1:1",
                     router_token="r0k", ca_file=pki.ca_cert)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load_kubeconfig(path)
    assert (config.server, config.bearer_token(), config.namespace, config.router_url, config.router_token,
            config.context) == ("https://127.0.0.1:6443", "t0k", "default", "http://127.0.0.1:1", "r0k", "turbok")
    assert config.ca_pem == pki.ca_cert.read_bytes()
    assert config.headers() == {"Authorization": "Bearer t0k"}


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The API server over TLS on loopback, in a thread of its own (the REST client is synchronous)."""
    pki = ensure_pki(tmp_path / "pki")
    reg = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    reg.ensure_namespace("default")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(create_app(reg, token=TOKEN, metrics_registry=CollectorRegistry()))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
        await site.start()
        holder["runner"] = runner
        holder["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, api_url=f"https://127.0.0.1:{holder['port']}", token=TOKEN, router_url="http://x",
                     router_token="r", ca_file=pki.ca_cert)
    yield f"https://127.0.0.1:{holder['port']}", path
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    reg.db.close()


def test_rest_client_over_tls_maps_status_to_errors(tls_server: tuple[str, Path]) -> None:
    _, kubeconfig = tls_server
    with RestClient(load_kubeconfig(kubeconfig)) as api:
        res = api.resource("swp")
        assert (res.group, res.version, res.plural, res.kind) == ("extensions.agents.x-k8s.io", "v1beta1",
                                                                   "sandboxwarmpools", "SandboxWarmPool")
        assert api.resource_for("v1", "Namespace").plural == "namespaces"
        created = api.create(res, pool(), "default")
        assert api.get(res, "p1", "default")["metadata"]["uid"] == created["metadata"]["uid"]
        table = api.list(res, "default", table=True)
        assert table["kind"] == "Table" and table["rows"][0]["cells"][0] == "p1"
        with pytest.raises(st.AlreadyExists):
            api.create(res, pool(), "default")
        with pytest.raises(st.Invalid) as err:
            api.create(res, pool("bad", replicas=-1), "default")
        assert [c.field for c in err.value.causes] == ["spec.replicas"]
        api.patch(res, "p1", {"spec": {"replicas": 0}}, "default")
        for event in api.watch(res, "default", field_selector="metadata.name=p1", timeout=1):
            assert event["object"]["spec"]["replicas"] == 0
            break
        api.delete(res, "p1", "default", propagation="Background")
        with pytest.raises(st.NotFound):
            api.get(res, "p1", "default")
        with pytest.raises(st.NotFound, match="doesn't have a resource type"):
            api.resource("deployments")


def test_rest_client_refuses_a_server_it_cannot_verify(tls_server: tuple[str, Path], tmp_path: Path) -> None:
    from turbok.client.rest import ConnectionFailed

    url, _ = tls_server
    other_ca = ensure_pki(tmp_path / "other").ca_cert
    with RestClient(ClusterConfig(server=url, token=TOKEN, ca_pem=other_ca.read_bytes())) as api, \
            pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        api.resources()
    with RestClient(ClusterConfig(server=url, token="wrong", insecure=True)) as api, pytest.raises(st.Unauthorized):
        api.resources()
