"""``cluster.connect``: the kubeconfig's context as an httpx client, and kubeconfig problems as ``ClusterError``.

How kubeconfigs are read (tokens, exec plugins, TLS) is tested once, in tests/unit/client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from turbok.client.errors import KubeconfigError
from turbok.upgrade.cluster import connect
from turbok.upgrade.errors import ClusterError, UpgradeError


def write(tmp_path: Path, user: dict[str, Any], *, server: str = "http://127.0.0.1:1", current: str | None = "main") -> Path:
    config: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}, {"name": "other", "cluster": {"server": "http://127.0.0.1:2"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}},
                     {"name": "second", "context": {"cluster": "other", "user": "u"}}],
    }
    if current:
        config["current-context"] = current
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(config))
    return p


def test_current_context_and_explicit_context(tmp_path: Path) -> None:
    path = write(tmp_path, {"token": "t0k"})
    conn = connect(path, timeout_s=5)
    with conn.client as api:
        c = api.http
        assert (conn.server, conn.context) == ("http://127.0.0.1:1", "main")
        assert (c.headers["Accept"], c.headers["User-Agent"]) == ("application/json", "turbok-upgrade")
        assert c.follow_redirects is False and c.timeout.read == 5
    conn = connect(path, context="second")
    with conn.client as api:
        assert (conn.context, str(api.http.base_url)) == ("second", "http://127.0.0.1:2")


@pytest.mark.parametrize(
    ("user", "current", "context", "message"),
    [
        ({"token": "x"}, None, None, "no current-context: pass --context"),
        ({"token": "x"}, "main", "nope", "context 'nope' not found"),
        ({"auth-provider": {"name": "gcp"}}, "main", None, "removed auth-provider 'gcp'"),
        ({"tokenFile": "missing-token"}, "main", None, "cannot read tokenFile"),
        ({"exec": {"command": "/nonexistent/turbok-plugin", "installHint": "install it"}}, "main", None,
         "not installed or not on PATH: install it"),
    ],
)
def test_kubeconfig_problems_are_cluster_errors(tmp_path: Path, user: dict[str, Any], current: str | None,
                                                context: str | None, message: str) -> None:
    with pytest.raises(ClusterError, match=message) as err:
        connect(write(tmp_path, user, current=current), context=context)
    assert isinstance(err.value, UpgradeError) and isinstance(err.value.__cause__, KubeconfigError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="kubeconfig .*missing does not exist"):
        connect(tmp_path / "missing")
