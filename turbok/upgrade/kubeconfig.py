"""Turning a kubeconfig into an HTTP client for the cluster it names.

Supports what clusters in the field hand out: a server URL; a CA from a file
or inline data, or ``insecure-skip-tls-verify``; client certificates (file or
inline data); bearer tokens (inline or ``tokenFile``); basic auth; and ``exec``
credential plugins (client.authentication.k8s.io ExecCredential: EKS, GKE,
AKS and OIDC helpers), run with the kubeconfig's directory as working
directory. Legacy ``auth-provider`` entries are refused with what to use instead.

Only ``connect`` does I/O (reading files, running an exec plugin); the
returned ``httpx.Client`` is the caller's to close. Called by ``cluster``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from turbok.upgrade.errors import ClusterError

__all__ = ["Connection", "connect", "load_kubeconfig"]

log = logging.getLogger(__name__)

_EXEC_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Connection:
    """Where the cluster is and which context was used."""

    server: str
    context: str
    client: httpx.Client


def load_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ClusterError(f"cannot read kubeconfig {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ClusterError(f"kubeconfig {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ClusterError(f"kubeconfig {path} is not a kubeconfig (expected a mapping)")
    return data


def _named(config: dict[str, Any], section: str, name: str, path: Path) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(section[:-1]) or {}
            if isinstance(value, dict):
                return value
    raise ClusterError(f"kubeconfig {path} has no {section[:-1]} named {name!r}")


def _file_or_data(section: dict[str, Any], key: str, base: Path) -> bytes | None:
    """``key`` (a path relative to the kubeconfig) or ``key-data`` (base64), as bytes."""
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data)
        except ValueError as e:
            raise ClusterError(f"kubeconfig: {key}-data is not base64") from e
    ref = section.get(key)
    if ref:
        p = Path(ref).expanduser()
        p = p if p.is_absolute() else base / p
        try:
            return p.read_bytes()
        except OSError as e:
            raise ClusterError(f"kubeconfig: cannot read {key} {p}: {e.strerror}") from e
    return None


def _run_exec(spec: dict[str, Any], base: Path, server: str) -> dict[str, Any]:
    command = spec.get("command")
    if not command:
        raise ClusterError("kubeconfig: exec credential plugin has no command")
    env = dict(os.environ)
    for item in spec.get("env") or []:
        env[str(item["name"])] = str(item["value"])
    api_version = spec.get("apiVersion") or "client.authentication.k8s.io/v1"
    env["KUBERNETES_EXEC_INFO"] = json.dumps({
        "apiVersion": api_version, "kind": "ExecCredential",
        "spec": {"interactive": False, "cluster": {"server": server}},
    })
    try:
        proc = subprocess.run([command, *[str(a) for a in spec.get("args") or []]], env=env, cwd=base,
                              capture_output=True, text=True, timeout=_EXEC_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        hint = spec.get("installHint") or ""
        raise ClusterError(f"kubeconfig: exec plugin {command!r} not found{': ' + hint.strip() if hint else ''}") from e
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"kubeconfig: exec plugin {command!r} did not answer within {_EXEC_TIMEOUT_S:.0f}s") from e
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"kubeconfig: exec plugin {command!r} failed (exit {proc.returncode}): {detail}")
    try:
        status = json.loads(proc.stdout)["status"]
        if not isinstance(status, dict):
            raise TypeError("status is not an object")
        return status
    except (ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"kubeconfig: exec plugin {command!r} did not print an ExecCredential with a status") from e


def _ssl_context(cluster: dict[str, Any], user: dict[str, Any], base: Path,
                 cert_pem: bytes | None, key_pem: bytes | None) -> ssl.SSLContext | bool:
    if cluster.get("insecure-skip-tls-verify"):
        log.warning("kubeconfig sets insecure-skip-tls-verify: the server's certificate is not checked")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca = _file_or_data(cluster, "certificate-authority", base)
        try:
            ctx = ssl.create_default_context(cadata=ca.decode("ascii")) if ca else ssl.create_default_context()
        except (ssl.SSLError, UnicodeDecodeError) as e:
            raise ClusterError(f"kubeconfig: the certificate authority is not a PEM certificate: {e}") from e
    cert_pem = cert_pem or _file_or_data(user, "client-certificate", base)
    key_pem = key_pem or _file_or_data(user, "client-key", base)
    if cert_pem and key_pem:
        # ssl wants files; they live only as long as loading takes, in a private directory
        with tempfile.TemporaryDirectory(prefix="turbok-kubeconfig-") as tmp:
            cert_file, key_file = Path(tmp, "client.crt"), Path(tmp, "client.key")
            cert_file.write_bytes(cert_pem)
            key_file.touch(mode=0o600)
            key_file.write_bytes(key_pem)
            try:
                ctx.load_cert_chain(cert_file, key_file)
            except ssl.SSLError as e:
                raise ClusterError(f"kubeconfig: the client certificate or key is not usable: {e}") from e
    return ctx


def connect(path: Path, *, context: str | None = None, timeout_s: float = 30.0) -> Connection:
    """An ``httpx.Client`` authenticated as the kubeconfig's user for ``context`` (default: current)."""
    config = load_kubeconfig(path)
    base = path.resolve().parent
    name = context or config.get("current-context")
    if not name:
        raise ClusterError(f"kubeconfig {path} has no current-context: pass --context")
    ctx = _named(config, "contexts", str(name), path)
    cluster = _named(config, "clusters", str(ctx.get("cluster", "")), path)
    user = _named(config, "users", str(ctx.get("user", "")), path) if ctx.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise ClusterError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no http(s) server URL")
    if user.get("auth-provider"):
        raise ClusterError(f"kubeconfig {path}: auth-provider {user['auth-provider'].get('name')!r} is not supported; "
                           "use an exec credential plugin (e.g. gke-gcloud-auth-plugin, kubelogin)")
    headers: dict[str, str] = {"Accept": "application/json", "User-Agent": "turbok-upgrade"}
    auth: httpx.Auth | None = None
    cert_pem = key_pem = None
    if user.get("exec"):
        status = _run_exec(user["exec"], base, server)
        if status.get("token"):
            headers["Authorization"] = f"Bearer {status['token']}"
        cert_pem = str(status["clientCertificateData"]).encode() if status.get("clientCertificateData") else None
        key_pem = str(status["clientKeyData"]).encode() if status.get("clientKeyData") else None
    elif user.get("token") or user.get("tokenFile"):
        token = user.get("token")
        if not token:
            token_bytes = _file_or_data({"tokenFile": user["tokenFile"]}, "tokenFile", base) or b""
            token = token_bytes.decode().strip()
        headers["Authorization"] = f"Bearer {token}"
    elif user.get("username"):
        auth = httpx.BasicAuth(str(user["username"]), str(user.get("password") or ""))
    verify = _ssl_context(cluster, user, base, cert_pem, key_pem) if server.startswith("https://") else True
    client = httpx.Client(base_url=server, headers=headers, auth=auth, verify=verify, timeout=timeout_s,
                          follow_redirects=False)
    return Connection(server=server, context=str(name), client=client)
