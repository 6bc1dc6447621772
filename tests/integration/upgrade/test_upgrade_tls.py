"""A kubeconfig with a CA and a client certificate, against an HTTPS double on 127.0.0.1 that requires both.

The double answers ``/version`` like a 1.35.1 apiserver running with
``--emulated-version=1.33`` (KEP-4330 adds ``emulationMinor`` and
``minCompatibilityMinor`` to ``/version``), so the plan starts mid-upgrade.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from turbok.cli.main import app

pytestmark = pytest.mark.integration

VERSION = {"major": "1", "minor": "35", "gitVersion": "v1.35.1", "emulationMajor": "1", "emulationMinor": "33",
           "minCompatibilityMajor": "1", "minCompatibilityMinor": "32"}
NODES = {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": [
    {"metadata": {"name": "n1"}, "status": {"nodeInfo": {"kubeletVersion": "v1.33.4", "kubeProxyVersion": "v1.33.4"}}}]}


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0]
        body: dict[str, Any]
        if path == "/version":
            code, body = 200, VERSION
        elif path == "/api/v1/nodes":
            code, body = 200, NODES
        else:
            code, body = 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def mtls_apiserver(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ca_key = _key()
    ca = _cert("test-ca", ca_key, None, ca=True)
    srv_key, cli_key = _key(), _key()
    srv = _cert("127.0.0.1", srv_key, (ca.subject, ca_key), server=True)
    cli = _cert("admin", cli_key, (ca.subject, ca_key))
    (tmp_path / "ca.crt").write_bytes(_pem(ca))
    (tmp_path / "srv.crt").write_bytes(_pem(srv))
    (tmp_path / "srv.key").write_bytes(_pem(srv_key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    ctx.load_verify_locations(tmp_path / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED  # a client certificate is required, like kube-apiserver with x509 auth
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"https://127.0.0.1:{httpd.server_address[1]}", "ca": _pem(ca), "cert": _pem(cli),
               "key": _pem(cli_key), "dir": tmp_path}
    finally:
        httpd.shutdown()
        httpd.server_close()


def _kubeconfig(srv: dict[str, Any], *, ca: bytes | None = None, client: bool = True) -> Path:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    user: dict[str, Any] = {}
    if client:
        (srv["dir"] / "client.crt").write_bytes(srv["cert"])  # one as a file, one inline: both forms work
        user = {"client-certificate": "client.crt", "client-key-data": b64(srv["key"])}
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "mtls",
              "clusters": [{"name": "mtls", "cluster": {"server": srv["url"],
                                                          "certificate-authority-data": b64(ca or srv["ca"])}}],
              "users": [{"name": "admin", "user": user}],
              "contexts": [{"name": "mtls", "context": {"cluster": "mtls", "user": "admin"}}]}
    p = srv["dir"] / f"kubeconfig-{len(list(srv['dir'].glob('kubeconfig*')))}"
    p.write_text(yaml.safe_dump(config))
    return p


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["upgrade", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stdout, r.stderr


def test_plan_reads_an_emulating_control_plane_over_mtls(mtls_apiserver: dict[str, Any]) -> None:
    code, out, err = _run("plan", "--to", "1.35", "--kubeconfig", str(_kubeconfig(mtls_apiserver)), "-o", "json")
    assert code == 0, err
    plan = json.loads(out)
    api = plan["from"]["kube-apiserver"]
    assert (api["binary"], api["emulatedVersion"], api["minCompatibilityVersion"]) == ("1.35.1", "1.33", "1.32")
    assert [s["emulatedVersion"] for s in plan["steps"] if s["kind"] == "emulated-version"] == ["1.34", None]
    assert any("control-plane pods" in n for n in plan["notes"])  # 404s become notes


def test_rollback_window_comes_from_the_reported_min_compatibility(mtls_apiserver: dict[str, Any]) -> None:
    kubeconfig = str(_kubeconfig(mtls_apiserver))
    code, out, _ = _run("plan", "--to", "1.32", "--kubeconfig", kubeconfig, "-o", "json")
    assert code == 0 and json.loads(out)["direction"] == "rollback"
    code, _, err = _run("plan", "--to", "1.31", "--kubeconfig", kubeconfig)
    assert code == 1 and "can emulate 1.32..1.35 only" in err


def test_tls_failures_are_one_clear_line(mtls_apiserver: dict[str, Any]) -> None:
    other_ca = _pem(_cert("other-ca", _key(), None, ca=True))
    code, _, err = _run("check", "--to", "1.35", "--kubeconfig", str(_kubeconfig(mtls_apiserver, ca=other_ca)))
    assert code == 1 and "cannot reach the apiserver" in err and "CERTIFICATE_VERIFY_FAILED" in err
    code, _, err = _run("check", "--to", "1.35", "--kubeconfig", str(_kubeconfig(mtls_apiserver, client=False)))
    assert code == 1 and "cannot reach the apiserver" in err
