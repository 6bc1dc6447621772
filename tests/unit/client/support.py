"""Helpers of the client tests: kubeconfig files, the exec plugin's record of runs, a small PKI."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

PluginFactory = Callable[..., dict[str, Any]]  # the ``exec_plugin`` fixture: a kubeconfig user entry


def kubeconfig(path: Path, *, server: str = "https://k.example", user: dict[str, Any] | None = None,
               cluster: dict[str, Any] | None = None, name: str = "c", current: str | None = None,
               namespace: str | None = None) -> Path:
    """A kubeconfig with one context, cluster and user, all called ``name``."""
    context: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": name if current is None else current,
           "clusters": [{"name": name, "cluster": {"server": server, **(cluster or {})}}],
           "users": [{"name": name, "user": user or {}}],
           "contexts": [{"name": name, "context": context}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def runs(tmp_path: Path) -> list[str]:
    """The working directories of the exec plugin's runs so far."""
    f = tmp_path / "runs"
    return f.read_text().splitlines() if f.exists() else []


def pki() -> dict[str, bytes]:
    """A CA and a client certificate with its key, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "user")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {"ca": ca.public_bytes(pem), "cert": cert.public_bytes(pem),
            "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}
