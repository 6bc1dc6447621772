"""The kubeconfig ``turbok serve`` writes: server URL, bearer token, router URL and token.

The router travels as a cluster extension named ``turbok.dev/router``
(``{url, token}``: the plain URL and the router's own token, sent as
``Authorization: Bearer``), so any tool holding the kubeconfig can reach the
runtime API without asking turbok. The file is written atomically with mode
0600: it holds both tokens.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import yaml

from turbok.client.kubeconfig import ROUTER_EXTENSION

__all__ = ["write_kubeconfig"]

CONTEXT = "turbok"


def write_kubeconfig(path: Path, *, api_url: str, token: str, router_url: str, router_token: str,
                     ca_file: Path) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {
            "server": api_url,
            "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
            "extensions": [{"name": ROUTER_EXTENSION, "extension": {"url": router_url, "token": router_token}}],
        }}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": "default"}}],
        "current-context": CONTEXT,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kubeconfig.")
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        yaml.safe_dump(doc, f, sort_keys=False)
    os.replace(tmp, path)
