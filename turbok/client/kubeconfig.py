"""Reading kubeconfig files: which server, which credentials, which router.

Handles what turbok and common clusters write: bearer tokens (inline or
``tokenFile``), client certificates and CAs (inline ``*-data`` or paths),
``insecure-skip-tls-verify``, contexts and their namespaces, and the
``turbok.dev/router`` cluster extension published by ``turbok serve``.
Exec and auth-provider plugins are not run: a clear error says so.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from turbok.errors import TurbokError

__all__ = ["ROUTER_EXTENSION", "KubeconfigError", "Credentials", "default_kubeconfig", "load_kubeconfig"]

ROUTER_EXTENSION = "turbok.dev/router"


class KubeconfigError(TurbokError):
    """A kubeconfig that cannot be read or lacks what is needed."""


@dataclass(frozen=True)
class Credentials:
    server: str
    namespace: str = "default"
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    router: str | None = None
    context: str = ""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def verify(self) -> bool | str:
        if self.insecure:
            return False
        return self.ca_file or True

    def cert(self) -> tuple[str, str] | None:
        return (self.cert_file, self.key_file) if self.cert_file and self.key_file else None


def default_kubeconfig() -> Path:
    """``$KUBECONFIG`` (first entry), else turbok's own, else ``~/.kube/config``."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0]).expanduser()
    from turbok.home import home

    own = home().kubeconfig
    return own if own.exists() else Path("~/.kube/config").expanduser()


def _materialise(data: str | None, path: str | None, base: Path, suffix: str) -> str | None:
    if path:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else base / p)
    if data:
        fd, name = tempfile.mkstemp(prefix="turbok-kube-", suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))
        return name
    return None


def _named(items: list[dict[str, Any]], name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return item.get(what) or {}
    raise KubeconfigError(f"{what} {name!r} not found in kubeconfig {path}")


def load_kubeconfig(path: Path | str | None = None, context: str | None = None) -> Credentials:
    path = Path(path).expanduser() if path else default_kubeconfig()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise KubeconfigError(f"kubeconfig {path} does not exist (is the control plane up? run `turbok up`)") from None
    except (OSError, yaml.YAMLError) as e:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {e}") from e
    name = context or doc.get("current-context")
    if not name:
        raise KubeconfigError(f"kubeconfig {path} has no current-context; pass --context")
    ctx = _named(doc.get("contexts", []), name, "context", path)
    cluster = _named(doc.get("clusters", []), ctx.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users", []), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise KubeconfigError(f"context {name!r} uses an exec/auth-provider plugin, which turbok does not run; "
                              "use a token or client-certificate kubeconfig")
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).expanduser().read_text().strip()
    base = path.parent
    router = next((e.get("extension", {}).get("url") for e in cluster.get("extensions") or []
                   if e.get("name") == ROUTER_EXTENSION), None)
    if not cluster.get("server"):
        raise KubeconfigError(f"cluster of context {name!r} has no server in {path}")
    return Credentials(
        server=cluster["server"].rstrip("/"),
        namespace=ctx.get("namespace") or "default",
        token=token,
        ca_file=_materialise(cluster.get("certificate-authority-data"), cluster.get("certificate-authority"),
                             base, ".crt"),
        cert_file=_materialise(user.get("client-certificate-data"), user.get("client-certificate"), base, ".crt"),
        key_file=_materialise(user.get("client-key-data"), user.get("client-key"), base, ".key"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        router=router,
        context=name,
    )
