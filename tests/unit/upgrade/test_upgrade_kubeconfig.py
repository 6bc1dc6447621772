"""kubeconfig handling: contexts, tokens, token files, basic auth, exec plugins, and clear refusals."""

from __future__ import annotations

import base64
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from turbok.upgrade.errors import ClusterError
from turbok.upgrade.kubeconfig import connect


def write(tmp_path: Path, user: dict[str, Any], *, server: str = "http://127.0.0.1:1", extra: dict[str, Any] | None = None,
          current: str | None = "main") -> Path:
    config: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}, {"name": "other", "cluster": {"server": "http://127.0.0.1:2"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}},
                     {"name": "second", "context": {"cluster": "other", "user": "u"}}],
    }
    if current:
        config["current-context"] = current
    config.update(extra or {})
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(config))
    return p


def test_current_context_and_explicit_context(tmp_path: Path) -> None:
    path = write(tmp_path, {"token": "t0k"})
    conn = connect(path)
    with conn.client:
        assert (conn.server, conn.context) == ("http://127.0.0.1:1", "main")
        assert conn.client.headers["Authorization"] == "Bearer t0k"
    with connect(path, context="second").client as c:
        assert str(c.base_url).startswith("http://127.0.0.1:2")


def test_token_file_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    with connect(write(tmp_path, {"tokenFile": "token"})).client as c:
        assert c.headers["Authorization"] == "Bearer from-file"


def test_basic_auth(tmp_path: Path) -> None:
    with connect(write(tmp_path, {"username": "admin", "password": "pw"})).client as c:
        assert isinstance(c.auth, httpx.BasicAuth)


def test_exec_plugin_token(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os, sys\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['spec']['interactive'] is False\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "                  'status': {'token': os.environ['PREFIX'] + sys.argv[1]}}))\n")
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                     "args": [str(plugin), "-abc"], "env": [{"name": "PREFIX", "value": "exec"}]}}
    with connect(write(tmp_path, user)).client as c:
        assert c.headers["Authorization"] == "Bearer exec-abc"


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"exec": {"command": "/nonexistent/turbok-plugin", "installHint": "install it"}}, "not found: install it"),
        ({"exec": {"command": sys.executable, "args": ["-c", "import sys; sys.exit('no credentials')"]}},
         "failed \\(exit 1\\): no credentials"),
        ({"exec": {"command": sys.executable, "args": ["-c", "print('hello')"]}}, "did not print an ExecCredential"),
        ({"auth-provider": {"name": "gcp"}}, "auth-provider 'gcp' is not supported"),
        ({"tokenFile": "missing-token"}, "cannot read tokenFile"),
    ],
)
def test_credential_problems_are_clear(tmp_path: Path, user: dict[str, Any], message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        connect(write(tmp_path, user))


def test_kubeconfig_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cannot read kubeconfig"):
        connect(tmp_path / "missing")
    with pytest.raises(ClusterError, match="no current-context: pass --context"):
        connect(write(tmp_path, {"token": "x"}, current=None))
    with pytest.raises(ClusterError, match="no context named 'nope'"):
        connect(write(tmp_path, {"token": "x"}), context="nope")
    with pytest.raises(ClusterError, match="no http\\(s\\) server URL"):
        connect(write(tmp_path, {"token": "x"}, server="127.0.0.1:6443"))
    bad = tmp_path / "bad"
    bad.write_text("clusters: [")
    with pytest.raises(ClusterError, match="not valid YAML"):
        connect(bad)


def test_bad_certificate_data_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"token": "x"}, server="https://127.0.0.1:1")
    config = yaml.safe_load(path.read_text())
    config["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(b"not a cert").decode()
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ClusterError, match="certificate authority is not a PEM certificate"):
        connect(path)


def test_exec_plugin_runs_in_the_kubeconfig_directory(tmp_path: Path) -> None:
    script = tmp_path / "cwd-plugin.sh"
    script.write_text("#!/bin/sh\nprintf '{\"status\": {\"token\": \"%s\"}}' \"$(basename \"$PWD\")\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with connect(write(tmp_path, {"exec": {"command": "./cwd-plugin.sh"}})).client as c:
        assert c.headers["Authorization"] == f"Bearer {tmp_path.name}"
