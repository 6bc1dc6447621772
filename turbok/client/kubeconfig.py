"""Reading kubeconfigs as kubectl does: which server, which credentials, which router.

The one kubeconfig reader of turbok: the CLI (``get``/``apply``/``delete``,
``sandbox``), ``rest.RestClient``, the conformance checker's ``KubeClient`` and
the upgrade planner's ``connect`` build on it. How credentials are produced
(exec plugins, the httpx auth, client certificates) lives in ``credentials``.

Where from (``kubeconfig_paths``): ``--kubeconfig``; else ``$KUBECONFIG``
(several files joined by ``:``, merged as kubectl merges them: the first file
to name a cluster, user or context wins, the first ``current-context`` wins);
else turbok's own kubeconfig when the caller asks for it (``turbok_home``);
else ``~/.kube/config``; else the in-cluster service account, in a Pod.
``context`` picks a context, otherwise ``current-context``.

Credentials: bearer ``token`` and ``tokenFile`` (read again on each request),
client certificates and keys, basic auth, and ``exec`` credential plugins
(``gke-gcloud-auth-plugin``, ``aws eks get-token``, ``kubelogin``...: run in
the kubeconfig's folder, cached until the credential expires, run again when
the server answers 401). The removed ``auth-provider`` stanza is refused with
what to use instead. Cluster trust: ``certificate-authority``, inline
(``-data``) or a path relative to the kubeconfig's folder, like every path in
it; ``insecure-skip-tls-verify``; ``tls-server-name``; ``proxy-url``.

turbok's control plane publishes its sandbox router in the cluster extension
``turbok.dev/router`` (``extension: {url: ..., token: ...}``), exposed as
``ClusterConfig.router_url`` and ``ClusterConfig.router_token`` (the router's own
bearer token, not the API's). For httpx, ``ClusterConfig.http_client()`` gives
a ready client; ``ssl_context()``, ``auth()`` and ``headers()`` are its parts.
Every failure is a ``turbok.client.errors.KubeconfigError``.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from turbok.client.credentials import CredentialAuth, ExecPlugin, load_cert_chain
from turbok.client.errors import (
    ContextNotFoundError,
    CredentialError,
    KubeconfigError,
    KubeconfigFormatError,
    KubeconfigNotFoundError,
    TlsConfigError,
)

__all__ = [
    "IN_CLUSTER_CONTEXT",
    "ROUTER_EXTENSION",
    "SERVICE_ACCOUNT_DIR",
    "ClusterConfig",
    "ExecPlugin",
    "KubeconfigError",
    "kubeconfig_paths",
    "load_kubeconfig",
]

log = logging.getLogger(__name__)

ROUTER_EXTENSION = "turbok.dev/router"
IN_CLUSTER_CONTEXT = "in-cluster"
# Where a Pod finds its service account; read at call time, so tests can point it elsewhere.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_EXEC_EXTENSION = "client.authentication.k8s.io/exec"  # cluster extension handed to exec plugins


@dataclass(frozen=True)
class ClusterConfig:
    """Everything needed to talk to one cluster as one user; built by ``load_kubeconfig``."""

    server: str
    context: str = ""
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
        """turbok's sandbox router, when the cluster is turbok's control plane."""
        ext = self.extensions.get(ROUTER_EXTENSION)
        if isinstance(ext, dict) and isinstance(ext.get("url"), str):
            return str(ext["url"]).rstrip("/")
        return None

    @property
    def router_token(self) -> str | None:
        """The router's bearer token (``Authorization: Bearer``), when the extension carries one."""
        ext = self.extensions.get(ROUTER_EXTENSION)
        if isinstance(ext, dict) and isinstance(ext.get("token"), str) and ext["token"]:
            return str(ext["token"])
        return None

    def bearer_token(self) -> str | None:
        """The token to send now: ``tokenFile`` read afresh, else ``token``, else the exec plugin's."""
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as e:
                raise CredentialError(f"cannot read tokenFile {self.token_file}: {e.strerror}") from e
        if self.token:
            return self.token
        if self.exec_plugin is not None:
            token = self.exec_plugin.credential().get("token")
            return str(token) if token else None
        return None

    def authorization(self) -> str | None:
        """The ``Authorization`` header value to send now (bearer, else basic), or None."""
        token = self.bearer_token()
        if token:
            return f"Bearer {token}"
        if self.username:
            pair = f"{self.username}:{self.password or ''}".encode()
            return f"Basic {base64.b64encode(pair).decode('ascii')}"
        return None

    def headers(self) -> dict[str, str]:
        """Headers with the credential of this moment; ``auth()`` keeps them fresh instead."""
        value = self.authorization()
        return {"Authorization": value} if value else {}

    def auth(self) -> httpx.Auth | None:
        """An ``httpx.Auth`` that sets the credential on every request (None when there is none)."""
        if self.token or self.token_file or self.exec_plugin or self.username:
            return CredentialAuth(self.authorization, self.exec_plugin)
        return None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx should verify with: a context with the CA and client certificate (https), else False."""
        if not self.server.startswith("https://"):
            return False  # plain HTTP: nothing to verify, and httpx need not load a CA bundle
        if self.insecure:
            log.warning("kubeconfig context %r sets insecure-skip-tls-verify: the server's certificate is not "
                        "checked", self.context)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            try:
                ctx = ssl.create_default_context(cadata=self.ca_pem.decode("ascii") if self.ca_pem else None)
            except (ssl.SSLError, UnicodeDecodeError) as e:
                raise TlsConfigError(f"the certificate authority of cluster {self.cluster_name!r} is not a PEM "
                                     f"certificate: {e}") from e
        cert, key = self.client_cert_pem, self.client_key_pem
        if cert is None and self.exec_plugin is not None:
            status = self.exec_plugin.credential()
            if status.get("clientCertificateData"):
                cert = str(status["clientCertificateData"]).encode()
                key = str(status.get("clientKeyData", "")).encode()
        if cert:
            load_cert_chain(ctx, cert, key or b"")
        return ctx

    def http_client(self, *, timeout: float = 30.0, headers: Mapping[str, str] | None = None,
                    **options: Any) -> httpx.Client:
        """An ``httpx.Client`` for this cluster as this user; the caller closes it.

        Base URL, TLS, credentials (refreshed per request), proxy and SNI name are
        set; ``options`` go to ``httpx.Client`` as they are (``trust_env=False``...).
        The credentials are produced once here, so a broken token file or exec
        plugin fails now, with a ``KubeconfigError``, not on the first request.
        """
        self.bearer_token()
        hooks: dict[str, list[Any]] = {"request": [self._set_sni]} if self.tls_server_name else {}
        kwargs: dict[str, Any] = {"base_url": self.server, "verify": self.ssl_context(), "auth": self.auth(),
                                  "timeout": timeout, "headers": dict(headers or {}), "proxy": self.proxy_url,
                                  "event_hooks": hooks}
        kwargs.update(options)
        return httpx.Client(**kwargs)

    def async_http_client(self, *, timeout: float = 30.0, headers: Mapping[str, str] | None = None,
                          **options: Any) -> httpx.AsyncClient:
        """``http_client``'s asynchronous twin (the operator, the cluster router); the caller closes it."""
        self.bearer_token()
        hooks: dict[str, list[Any]] = {"request": [self._set_sni_async]} if self.tls_server_name else {}
        kwargs: dict[str, Any] = {"base_url": self.server, "verify": self.ssl_context(), "auth": self.auth(),
                                  "timeout": timeout, "headers": dict(headers or {}), "proxy": self.proxy_url,
                                  "event_hooks": hooks}
        kwargs.update(options)
        return httpx.AsyncClient(**kwargs)

    async def _set_sni_async(self, request: httpx.Request) -> None:
        self._set_sni(request)

    def _set_sni(self, request: httpx.Request) -> None:
        # tls-server-name: the name the server's certificate is checked against, when the URL holds another
        request.extensions["sni_hostname"] = self.tls_server_name


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise KubeconfigFormatError(f"cannot read kubeconfig {path}: {e.strerror}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise KubeconfigFormatError(f"kubeconfig {path} is not valid YAML: {' '.join(str(e).split())}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KubeconfigFormatError(f"kubeconfig {path} is not a kubeconfig (the top level is not a mapping)")
    return data


def _merge(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Path]]:
    """kubectl's merge: the first file naming an entry wins. Also returns each entry's folder."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": ""}
    homes: dict[str, Path] = {}
    for path in paths:
        data = _read_yaml(path)
        for kind, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            entries = data.get(kind) or []
            for entry in entries if isinstance(entries, list) else []:
                name = entry.get("name") if isinstance(entry, dict) else None
                if not name or name in merged[kind]:
                    continue
                value = entry.get(inner) or {}
                merged[kind][name] = value if isinstance(value, dict) else {}
                homes[f"{kind}/{name}"] = path.absolute().parent
        if not merged["current-context"] and data.get("current-context"):
            merged["current-context"] = str(data["current-context"])
    return merged, homes


def _resolve(name: Any, home: Path) -> Path:
    path = Path(os.path.expanduser(str(name)))
    return path if path.is_absolute() else home / path


def _file_or_data(entry: dict[str, Any], key: str, home: Path) -> bytes | None:
    """``key-data`` (base64) or ``key`` (a path, relative to the kubeconfig's folder), as bytes."""
    data = entry.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data)
        except ValueError as e:
            raise KubeconfigFormatError(f"{key}-data in the kubeconfig is not base64") from e
    if entry.get(key):
        path = _resolve(entry[key], home)
        try:
            return path.read_bytes()
        except OSError as e:
            raise KubeconfigFormatError(f"cannot read {key} {path} named by the kubeconfig: {e.strerror}") from e
    return None


def _in_cluster() -> ClusterConfig | None:
    """The Pod's service account, as client-go's ``InClusterConfig``; None outside a Pod."""
    sa = SERVICE_ACCOUNT_DIR
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (sa / "token").exists():
        return None
    host = f"[{host}]" if ":" in host else host
    ns_file = sa / "namespace"
    return ClusterConfig(
        server=f"https://{host}:{port}",
        context=IN_CLUSTER_CONTEXT,
        namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        token_file=sa / "token",
        ca_pem=(sa / "ca.crt").read_bytes() if (sa / "ca.crt").exists() else None,
        source="in-cluster service account",
    )


def kubeconfig_paths(path: str | os.PathLike[str] | None = None, *, turbok_home: bool = False) -> list[Path]:
    """The files to merge, in kubectl's order; [] when there are none (then only in-cluster is left).

    ``turbok_home`` puts turbok's own kubeconfig (written by ``turbok up``) before ``~/.kube/config``.
    """
    if path:
        explicit = Path(os.path.expanduser(os.fspath(path)))
        if not explicit.exists():
            raise KubeconfigNotFoundError(f"kubeconfig {explicit} does not exist")
        return [explicit]
    env = os.environ.get("KUBECONFIG")
    if env:
        existing = [p for p in (Path(os.path.expanduser(s)) for s in env.split(os.pathsep) if s) if p.exists()]
        if not existing:
            raise KubeconfigNotFoundError(f"none of the files in $KUBECONFIG exist: {env}")
        return existing
    defaults = [Path(os.path.expanduser("~/.kube/config"))]
    if turbok_home:
        from turbok.home import home

        defaults.insert(0, home().kubeconfig)
    return [p for p in defaults if p.exists()][:1]


def _exec_plugin(spec: dict[str, Any], user_name: str, home: Path, server: str, cluster: dict[str, Any],
                 ca_pem: bytes | None) -> ExecPlugin:
    if not spec.get("command"):
        raise CredentialError(f"user {user_name!r}: the exec credential plugin has no command")
    info: dict[str, Any] = {"server": server}
    if spec.get("provideClusterInfo"):
        info.update({k: cluster[k] for k in ("tls-server-name", "insecure-skip-tls-verify", "proxy-url")
                     if k in cluster})
        if ca_pem:
            info["certificate-authority-data"] = base64.b64encode(ca_pem).decode("ascii")
        ext = next((e.get("extension") for e in cluster.get("extensions") or []
                    if isinstance(e, dict) and e.get("name") == _EXEC_EXTENSION), None)
        if ext is not None:
            info["config"] = ext
    return ExecPlugin(
        command=str(spec["command"]),
        args=[str(a) for a in spec.get("args") or []],
        env={str(e["name"]): str(e.get("value", "")) for e in spec.get("env") or []
             if isinstance(e, dict) and "name" in e},
        api_version=str(spec.get("apiVersion") or "client.authentication.k8s.io/v1"),
        base_dir=home,
        install_hint=str(spec.get("installHint") or ""),
        cluster=info,
    )


def load_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None, *,
                    turbok_home: bool = False) -> ClusterConfig:
    """The cluster and credentials of ``context`` (default: ``current-context``).

    Files are found by ``kubeconfig_paths(path, turbok_home=...)``; with none, the
    in-cluster service account is used (context ``in-cluster``). Reads the files
    a kubeconfig names (CA, client certificate and key); runs no exec plugin.
    """
    paths = kubeconfig_paths(path, turbok_home=turbok_home)
    if not paths:
        found = _in_cluster()
        if found is not None and context in (None, IN_CLUSTER_CONTEXT):
            return found
        also = ", start turbok (`turbok up`)" if turbok_home else ""
        raise KubeconfigNotFoundError(f"no kubeconfig found: pass --kubeconfig, set $KUBECONFIG{also} "
                                      "or create ~/.kube/config")
    merged, homes = _merge(paths)
    where = paths[0] if len(paths) == 1 else "$KUBECONFIG"
    name = context or merged["current-context"]
    if not name:
        raise ContextNotFoundError(f"kubeconfig {where} has no current-context: pass --context")
    ctx = merged["contexts"].get(name)
    if ctx is None:
        known = ", ".join(sorted(merged["contexts"])) or "none"
        raise ContextNotFoundError(f"context {name!r} not found in the kubeconfig (contexts: {known})")
    cluster_name, user_name = str(ctx.get("cluster") or ""), str(ctx.get("user") or "")
    cluster = merged["clusters"].get(cluster_name)
    if cluster is None:
        raise ContextNotFoundError(f"context {name!r} names cluster {cluster_name!r}, which the kubeconfig "
                                   "does not define")
    user = merged["users"].get(user_name) if user_name else {}
    if user is None:
        raise ContextNotFoundError(f"context {name!r} names user {user_name!r}, which the kubeconfig does not define")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise KubeconfigFormatError(f"cluster {cluster_name!r} in kubeconfig {where} has no http(s) server URL"
                                    + (f" (it says {server!r})" if server else ""))
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name", "?")
        raise CredentialError(
            f"user {user_name!r} uses the removed auth-provider {provider!r}: switch to its exec plugin "
            "(for GKE: gke-gcloud-auth-plugin, then `gcloud container clusters get-credentials`)")
    chome = homes.get(f"clusters/{cluster_name}", paths[0].absolute().parent)
    uhome = homes.get(f"users/{user_name}", paths[0].absolute().parent)
    ca_pem = _file_or_data(cluster, "certificate-authority", chome)
    cert_pem = _file_or_data(user, "client-certificate", uhome)
    # client-go runs the exec plugin only when no other credential is given.
    static = user.get("token") or user.get("tokenFile") or user.get("username") or cert_pem
    exec_plugin = None
    if isinstance(user.get("exec"), dict) and not static:
        exec_plugin = _exec_plugin(user["exec"], user_name, uhome, server, cluster, ca_pem)
    return ClusterConfig(
        server=server,
        context=name,
        cluster_name=cluster_name,
        user_name=user_name,
        namespace=str(ctx.get("namespace") or "default"),
        token=str(user["token"]) if user.get("token") else None,
        token_file=_resolve(user["tokenFile"], uhome) if user.get("tokenFile") else None,
        username=str(user["username"]) if user.get("username") else None,
        password=str(user["password"]) if user.get("password") else None,
        client_cert_pem=cert_pem,
        client_key_pem=_file_or_data(user, "client-key", uhome),
        ca_pem=ca_pem,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=str(cluster["tls-server-name"]) if cluster.get("tls-server-name") else None,
        proxy_url=str(cluster["proxy-url"]) if cluster.get("proxy-url") else None,
        exec_plugin=exec_plugin,
        extensions={str(e.get("name")): e.get("extension") for e in cluster.get("extensions") or []
                    if isinstance(e, dict)},
        source=os.pathsep.join(str(p) for p in paths),
    )
