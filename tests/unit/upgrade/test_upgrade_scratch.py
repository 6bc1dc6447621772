"""The scratch control plane's way to its servers: through ``turbok.client.api.Api``, certificates verified.

No Kubernetes binaries here (tests/integration/upgrade runs them): a real HTTPS server on loopback
stands in for a component that writes its self-signed serving certificate while it starts.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turbok.client.kubeconfig import ClusterConfig
from turbok.upgrade.errors import ScratchError
from turbok.upgrade.scratch import ScratchControlPlane, _Process


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS /healthz on 127.0.0.1 and the certificate it serves."""
    crt, key = _self_signed(tmp_path, "server")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], crt
    server.shutdown()
    server.server_close()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[ScratchControlPlane]:
    with ScratchControlPlane(Path("/nonexistent/etcd"), workdir=tmp_path / "scratch") as cp:
        yield cp


def test_no_client_and_no_config_before_kube_apiserver_wrote_its_certificate(scratch: ScratchControlPlane) -> None:
    assert scratch.config() is None
    with pytest.raises(ScratchError, match="kube-apiserver is not running"):
        scratch.client()
    scratch.ca_file.parent.mkdir()
    scratch.ca_file.write_bytes(b"")  # created, not yet written
    assert scratch.config() is None
    whole = _self_signed(scratch.dir, "whole")[0].read_bytes()
    scratch.ca_file.write_bytes(whole[: len(whole) // 2])  # half written
    assert scratch.config() is None
    scratch.ca_file.write_bytes(whole)
    config = scratch.config()
    assert isinstance(config, ClusterConfig)
    assert (config.server, config.token, config.ca_pem, config.insecure) == (scratch.server, scratch.token, whole, False)


def test_the_probe_verifies_the_certificate_and_reads_it_again_until_it_is_the_served_one(
        https_server: tuple[int, Path], scratch: ScratchControlPlane, tmp_path: Path) -> None:
    port, served = https_server
    other = _self_signed(tmp_path, "other")[0]  # what a half-finished start could leave: a certificate, not this one
    reads: list[bytes] = []

    def config() -> ClusterConfig:
        reads.append((served if len(reads) >= 2 else other).read_bytes())
        return ClusterConfig(server=f"https://127.0.0.1:{port}", ca_pem=reads[-1])

    proc = _Process("stand-in", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "stand-in.log")
    try:
        scratch._wait(proc, "/healthz", config)
    finally:
        proc.stop()
    # refused while the wrong certificate was trusted (TLS verified), accepted once the served one was read
    assert reads == [other.read_bytes(), other.read_bytes(), served.read_bytes()]


def test_a_probe_that_never_succeeds_names_the_last_failure(https_server: tuple[int, Path],
                                                            scratch: ScratchControlPlane, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import turbok.upgrade.scratch as scratch_module

    monkeypatch.setattr(scratch_module, "_READY_TIMEOUT_S", 1.0)
    port, served = https_server
    proc = _Process("stand-in", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "stand-in.log")
    with pytest.raises(ScratchError, match=r"stand-in was not ready within 1 s \(last answer 404\)"):
        scratch._wait(proc, "/missing", lambda: ClusterConfig(server=f"https://127.0.0.1:{port}",
                                                              ca_pem=served.read_bytes()))
    assert not proc.alive(), "a component that never became ready is stopped"
