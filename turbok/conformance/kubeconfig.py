"""Find the cluster to check and the credentials to reach it, as kubectl would.

Order: ``--kubeconfig``; else ``$KUBECONFIG`` (several files joined by ``:``,
merged the way kubectl merges them: the first file to name a cluster, user or
context wins, the first ``current-context`` wins); else ``~/.kube/config``;
else the in-cluster service account (when running as a Pod). ``--context``
picks a context; otherwise ``current-context``.

Supported credentials: bearer ``token`` and ``tokenFile``, client certificates
(``client-certificate``/``client-key`` files or ``-data``), basic auth, and
``exec`` plugins (``gke-gcloud-auth-plugin``, ``aws eks get-token``,
``kubelogin``...). The legacy ``auth-provider`` stanza is refused with a hint.
Cluster trust: ``certificate-authority`` (file or ``-data``),
``insecure-skip-tls-verify``, ``tls-server-name``, ``proxy-url``.

turbok's embedded control plane publishes its sandbox router in a cluster
extension named ``turbok.dev/router`` (``extension: {url: ...}``); it is
exposed as ``ClusterConfig.router_url``. Only ``kube.KubeClient`` uses this module.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from turbok.conformance.errors import KubeconfigError

__all__ = ["ROUTER_EXTENSION", "ClusterConfig", "ExecPlugin", "load_kubeconfig"]

ROUTER_EXTENSION = "turbok.dev/router"
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class ExecPlugin:
    """A client-go credential plugin: runs a command that prints an ExecCredential."""

    command: str
    args: list[str]
    env: dict[str, str]
    api_version: str
    base_dir: Path
    _cached: dict[str, Any] | None = field(default=None, repr=False)
    _expires: float = field(default=0.0, repr=False)

    def credential(self) -> dict[str, Any]:
        """``status`` of the ExecCredential (token or client cert data), cached until it expires."""
        if self._cached is not None and time.time() < self._expires - 30:
            return self._cached
        request = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(request)}
        try:
            done = subprocess.run(
                [self.command, *self.args], env=env, cwd=self.base_dir, capture_output=True, text=True, timeout=60, check=False
            )
        except FileNotFoundError as e:
            raise KubeconfigError(f"credential plugin {self.command!r} is not installed or not on PATH") from e
        except subprocess.TimeoutExpired as e:
            raise KubeconfigError(f"credential plugin {self.command!r} did not answer within 60 s") from e
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise KubeconfigError(f"credential plugin {self.command!r} failed ({done.returncode}): {last}")
        try:
            status = json.loads(done.stdout)["status"]
        except (ValueError, KeyError, TypeError) as e:
            raise KubeconfigError(f"credential plugin {self.command!r} printed no ExecCredential status") from e
        self._cached = dict(status)
        expiry = status.get("expirationTimestamp")
        self._expires = _parse_time(expiry) if expiry else time.time() + 300
        return self._cached


@dataclass
class ClusterConfig:
    """Everything needed to talk to one cluster as one user."""

    server: str
    context: str
    cluster_name: str = ""
    user_name: str = ""
    namespace: str = "default"
    token: str | None = None
    token_file: Path | None = None
    username: str | None = None
    password: str | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    ca_pem: bytes | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = None
    exec_plugin: ExecPlugin | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def router_url(self) -> str | None:
        """turbok's sandbox router, when the cluster is turbok's embedded control plane."""
        ext = self.extensions.get(ROUTER_EXTENSION)
        if isinstance(ext, dict) and isinstance(ext.get("url"), str):
            return str(ext["url"]).rstrip("/")
        return None

    def bearer_token(self) -> str | None:
        """The token to send, read fresh from ``tokenFile`` or the exec plugin each time."""
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as e:
                raise KubeconfigError(f"cannot read tokenFile {self.token_file}: {e.strerror}") from e
        if self.exec_plugin is not None:
            token = self.exec_plugin.credential().get("token")
            return str(token) if token else None
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx should verify with: False, or a context with the CA and client certificate."""
        if not self.server.startswith("https://"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_pem:
            ctx = ssl.create_default_context(cadata=self.ca_pem.decode("ascii", "replace"))
        else:
            ctx = ssl.create_default_context()
        cert, key = self.client_cert_pem, self.client_key_pem
        if self.exec_plugin is not None and cert is None:
            status = self.exec_plugin.credential()
            if status.get("clientCertificateData"):
                cert = str(status["clientCertificateData"]).encode()
                key = str(status.get("clientKeyData", "")).encode()
        if cert:
            _load_cert_chain(ctx, cert, key or b"")
        return ctx


def _load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl only loads certificates from files: write them to a private directory for the call.
    with tempfile.TemporaryDirectory(prefix="turbok-kc-") as tmp:
        cert_path, key_path = Path(tmp, "client.crt"), Path(tmp, "client.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path) if key else None)
        except ssl.SSLError as e:
            raise KubeconfigError(f"client certificate or key in the kubeconfig is unusable: {e.reason}") from e


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time() + 300


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise KubeconfigError(f"kubeconfig {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a kubeconfig (top level is not a mapping)")
    return data


def _merge(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Path]]:
    """kubectl's merge: first file naming an entry wins. Returns the config and each entry's home dir."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": ""}
    homes: dict[str, Path] = {}
    for path in paths:
        data = _read_yaml(path)
        for kind, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in data.get(kind) or []:
                name = entry.get("name") if isinstance(entry, dict) else None
                if not name or name in merged[kind]:
                    continue
                merged[kind][name] = entry.get(inner) or {}
                homes[f"{kind}/{name}"] = path.parent
        if not merged["current-context"] and data.get("current-context"):
            merged["current-context"] = data["current-context"]
    return merged, homes


def _file_or_data(entry: dict[str, Any], key: str, home: Path) -> bytes | None:
    data = entry.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data)
        except ValueError as e:
            raise KubeconfigError(f"{key}-data in the kubeconfig is not base64") from e
    name = entry.get(key)
    if name:
        path = Path(os.path.expanduser(str(name)))
        path = path if path.is_absolute() else home / path
        try:
            return path.read_bytes()
        except OSError as e:
            raise KubeconfigError(f"cannot read {key} {path}: {e.strerror}") from e
    return None


def _in_cluster() -> ClusterConfig | None:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (_SA_DIR / "token").exists():
        return None
    host = f"[{host}]" if ":" in host else host
    ns_file = _SA_DIR / "namespace"
    return ClusterConfig(
        server=f"https://{host}:{port}",
        context="in-cluster",
        namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        token_file=_SA_DIR / "token",
        ca_pem=(_SA_DIR / "ca.crt").read_bytes() if (_SA_DIR / "ca.crt").exists() else None,
        source="in-cluster service account",
    )


def _candidate_paths(explicit: str | os.PathLike[str] | None) -> list[Path]:
    if explicit:
        path = Path(os.path.expanduser(os.fspath(explicit)))
        if not path.exists():
            raise KubeconfigError(f"kubeconfig {path} does not exist")
        return [path]
    env = os.environ.get("KUBECONFIG")
    if env:
        paths = [Path(os.path.expanduser(p)) for p in env.split(os.pathsep) if p]
        existing = [p for p in paths if p.exists()]
        if not existing:
            raise KubeconfigError(f"none of the files in $KUBECONFIG exist: {env}")
        return existing
    default = Path(os.path.expanduser("~/.kube/config"))
    return [default] if default.exists() else []


def load_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None) -> ClusterConfig:
    """The cluster and credentials for ``context`` (default: current-context)."""
    paths = _candidate_paths(path)
    if not paths:
        found = _in_cluster()
        if found is not None and context in (None, "in-cluster"):
            return found
        raise KubeconfigError("no kubeconfig found: pass --kubeconfig, set $KUBECONFIG or create ~/.kube/config")
    merged, homes = _merge(paths)
    name = context or merged["current-context"]
    if not name:
        raise KubeconfigError(f"kubeconfig {paths[0]} has no current-context: pass --context")
    ctx = merged["contexts"].get(name)
    if ctx is None:
        known = ", ".join(sorted(merged["contexts"])) or "none"
        raise KubeconfigError(f"context {name!r} not found in the kubeconfig (contexts: {known})")
    cluster_name, user_name = ctx.get("cluster", ""), ctx.get("user", "")
    cluster = merged["clusters"].get(cluster_name)
    if cluster is None:
        raise KubeconfigError(f"context {name!r} names cluster {cluster_name!r}, which the kubeconfig does not define")
    if not cluster.get("server"):
        raise KubeconfigError(f"cluster {cluster_name!r} in the kubeconfig has no server")
    user = merged["users"].get(user_name) or {}
    chome = homes.get(f"clusters/{cluster_name}", paths[0].parent)
    uhome = homes.get(f"users/{user_name}", paths[0].parent)
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name", "?")
        raise KubeconfigError(
            f"user {user_name!r} uses the removed auth-provider {provider!r}: switch to its exec plugin "
            "(for GKE: gke-gcloud-auth-plugin, then `gcloud container clusters get-credentials`)"
        )
    exec_plugin = None
    if user.get("exec"):
        spec = user["exec"]
        exec_plugin = ExecPlugin(
            command=str(spec.get("command", "")),
            args=[str(a) for a in spec.get("args") or []],
            env={str(e["name"]): str(e.get("value", "")) for e in spec.get("env") or [] if "name" in e},
            api_version=str(spec.get("apiVersion", "client.authentication.k8s.io/v1")),
            base_dir=uhome,
        )
    token_file = None
    if user.get("tokenFile"):
        tf = Path(os.path.expanduser(str(user["tokenFile"])))
        token_file = tf if tf.is_absolute() else uhome / tf
    extensions = {
        str(e.get("name")): e.get("extension") for e in cluster.get("extensions") or [] if isinstance(e, dict)
    }
    return ClusterConfig(
        server=str(cluster["server"]).rstrip("/"),
        context=name,
        cluster_name=cluster_name,
        user_name=user_name,
        namespace=str(ctx.get("namespace") or "default"),
        token=user.get("token"),
        token_file=token_file,
        username=user.get("username"),
        password=user.get("password"),
        client_cert_pem=_file_or_data(user, "client-certificate", uhome),
        client_key_pem=_file_or_data(user, "client-key", uhome),
        ca_pem=_file_or_data(cluster, "certificate-authority", chome),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=cluster.get("tls-server-name"),
        proxy_url=cluster.get("proxy-url"),
        exec_plugin=exec_plugin,
        extensions=extensions,
        source=os.pathsep.join(str(p) for p in paths),
    )
