"""The REST client, against the API double on loopback (HTTP and mutual TLS).

Reading kubeconfigs (merging, contexts, tokens, exec plugins, TLS material) is tested once, in tests/unit/client.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.doubles import KubeApiDouble
from turbok.client.kubeconfig import load_kubeconfig
from turbok.conformance.errors import (
    AlreadyExistsError,
    ClusterUnreachableError,
    ForbiddenError,
    NotFoundError,
)
from turbok.conformance.kube import KubeClient

FIXTURE: dict[str, Any] = {
    "version": {"major": "1", "minor": "35", "gitVersion": "v1.35.1"},
    "resources": [
        {"apiVersion": "v1", "kind": "Namespace", "name": "namespaces", "namespaced": False},
        {"apiVersion": "v1", "kind": "Pod", "name": "pods", "subresources": ["log"]},
        {"apiVersion": "v1", "kind": "Service", "name": "services", "subresources": ["proxy"]},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "name": "clusterqueues", "namespaced": False},
        {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ClusterQueue", "name": "clusterqueues", "namespaced": False},
    ],
    "objects": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "exporter", "namespace": "default"}},
    ],
    "proxy": {"default/exporter:9400/metrics": "up 1\n"},
}


def _config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _kc(server: str, user: dict[str, Any], cluster_extra: dict[str, Any] | None = None, name: str = "c") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server, **(cluster_extra or {})}}],
            "users": [{"name": name, "user": user}], "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}


# -- REST client ---------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Any:
    api = KubeApiDouble(FIXTURE, token="s3cret")
    with api.running():
        yield api, KubeClient(load_kubeconfig(api.write_kubeconfig(tmp_path / "kc")))


def test_discovery(served: Any) -> None:
    api, client = served
    disc = client.discovery
    assert disc.groups == {"": ["v1"], "kueue.x-k8s.io": ["v1beta2", "v1beta1"]}
    assert disc.preferred_version("kueue.x-k8s.io", ("v1beta1",)) == "v1beta1"
    assert disc.has_resource("", "pods", "v1") and not disc.has_resource("", "nodes", "v1")
    found = disc.find("kueue.x-k8s.io/v1beta2", "ClusterQueue")
    assert found is not None and found.path(name="q") == "/apis/kueue.x-k8s.io/v1beta2/clusterqueues/q"
    assert disc.subresources("", "v1") == {"pods/log", "services/proxy"}


def test_crud_and_errors(served: Any) -> None:
    api, client = served
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "labels": {"a": "1"}}}
    created = client.create(pod)
    assert created["metadata"]["uid"]
    with pytest.raises(AlreadyExistsError):
        client.create(pod)
    assert client.create({**pod, "metadata": {"name": "dry", "namespace": "default"}}, dry_run=True)["metadata"]["name"] == "dry"
    assert client.get_or_none("v1", "Pod", "dry", "default") is None
    assert [p["metadata"]["name"] for p in client.list("v1", "Pod", label_selector="a=1")] == ["p"]
    assert client.list("v1", "Pod", "default", field_selector="metadata.name=other") == []
    assert client.patch("v1", "Pod", "p", "default", {"metadata": {"labels": {"b": "2"}}})["metadata"]["labels"] == {"a": "1", "b": "2"}
    api.store.set_log("default", "p", "hello\n")
    assert client.pod_logs("default", "p") == "hello\n"
    assert client.service_proxy("default", "exporter", 9400, "/metrics") == "up 1\n"
    assert client.delete("v1", "Pod", "p", "default") is True and client.delete("v1", "Pod", "p", "default") is False
    with pytest.raises(NotFoundError, match="does not serve Node in v1"):
        client.list("v1", "Node")


def test_service_unavailable_is_an_api_error(served: Any) -> None:
    from turbok.conformance.errors import ApiError

    _, client = served
    with pytest.raises(ApiError) as info:
        client.service_proxy("default", "exporter", 9400, "/other")
    assert info.value.code == 503 and info.value.reason == "ServiceUnavailable"


def test_wrong_token_and_unreachable(tmp_path: Path) -> None:
    api = KubeApiDouble(FIXTURE, token="right")
    with api.running(), KubeClient(load_kubeconfig(api.write_kubeconfig(tmp_path / "kc", token="wrong"))) as client, \
            pytest.raises(ForbiddenError, match="401"):
        client.version()
    cfg = load_kubeconfig(_config(tmp_path / "dead", _kc("http://127.0.0.1:9", {})))
    with KubeClient(cfg) as client, pytest.raises(ClusterUnreachableError, match="cannot reach http://127.0.0.1:9"):
        client.version()


# -- mutual TLS ----------------------------------------------------------------------------------


def _pki(tmp_path: Path) -> dict[str, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def key() -> Any:
        return ec.generate_private_key(ec.SECP256R1())

    def pem(k: Any) -> bytes:
        return bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "double-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, server: bool) -> tuple[bytes, bytes]:
        k = key()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).issuer_name(ca_name)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1)))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), pem(k)

    server_cert, server_key = leaf("127.0.0.1", True)
    client_cert, client_key = leaf("conformance", False)
    for name, data in (("server.crt", server_cert), ("server.key", server_key), ("ca.crt", ca.public_bytes(serialization.Encoding.PEM))):
        (tmp_path / name).write_bytes(data)
    return {"ca": ca.public_bytes(serialization.Encoding.PEM), "client_cert": client_cert, "client_key": client_key}


def test_mutual_tls(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(str(tmp_path / "server.crt"), str(tmp_path / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    api = KubeApiDouble(FIXTURE, ssl_context=ctx)
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    with api.running():
        assert api.url.startswith("https://127.0.0.1:")
        user = {"client-certificate-data": b64(pki["client_cert"]), "client-key-data": b64(pki["client_key"])}
        good = _kc(api.url, user, {"certificate-authority-data": b64(pki["ca"])})
        with KubeClient(load_kubeconfig(_config(tmp_path / "good", good))) as client:
            assert client.version()["gitVersion"] == "v1.35.1"
        no_client_cert = _kc(api.url, {}, {"certificate-authority-data": b64(pki["ca"])})
        with KubeClient(load_kubeconfig(_config(tmp_path / "nocert", no_client_cert))) as client, pytest.raises(ClusterUnreachableError):
            client.version()
        untrusted = _kc(api.url, user)
        with KubeClient(load_kubeconfig(_config(tmp_path / "untrusted", untrusted))) as client, \
                pytest.raises(ClusterUnreachableError, match="CERTIFICATE_VERIFY_FAILED"):
            client.version()
        insecure = _kc(api.url, user, {"insecure-skip-tls-verify": True})
        with KubeClient(load_kubeconfig(_config(tmp_path / "insecure", insecure))) as client:
            assert json.dumps(client.version())
