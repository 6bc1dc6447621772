"""Fixtures of the client tests: a clean environment (autouse) and exec credential plugins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.client.support import PluginFactory


@pytest.fixture(autouse=True)
def _no_ambient_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No $KUBECONFIG, no ~/.kube/config, no turbok home and no service account leak into a test."""
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TURBOK_HOME", str(tmp_path / "turbok-home"))
    monkeypatch.setattr("turbok.client.kubeconfig.SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")


@pytest.fixture
def exec_plugin(tmp_path: Path) -> PluginFactory:
    """``exec_plugin(tokens=[...], expiry=...)``: a user entry whose plugin prints the next token of the
    list on each run, appends a line to ``runs`` and copies ``KUBERNETES_EXEC_INFO`` to ``info.json``."""

    def make(tokens: list[str] | None = None, *, expiry: str | None = None, status: dict[str, Any] | None = None,
             **spec: Any) -> dict[str, Any]:
        script = tmp_path / "plugin.py"
        script.write_text(
            "import json, os, pathlib, sys\n"
            "here = pathlib.Path(sys.argv[1])\n"
            "runs = here / 'runs'\n"
            "n = len(runs.read_text().splitlines()) if runs.exists() else 0\n"
            "runs.write_text((runs.read_text() if runs.exists() else '') + os.getcwd() + '\\n')\n"
            "(here / 'info.json').write_text(os.environ['KUBERNETES_EXEC_INFO'])\n"
            "tokens, extra = json.loads(sys.argv[2]), json.loads(sys.argv[3])\n"
            "status = dict(extra)\n"
            "if tokens: status['token'] = tokens[min(n, len(tokens) - 1)]\n"
            "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
            " 'status': status}))\n")
        extra = dict(status or {})
        if expiry:
            extra["expirationTimestamp"] = expiry
        return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                         "args": [str(script), str(tmp_path), json.dumps(tokens or []), json.dumps(extra)],
                         **spec}}

    return make
