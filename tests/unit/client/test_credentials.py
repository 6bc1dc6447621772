"""Credentials and TLS from a kubeconfig: tokens, basic auth, exec plugins, ssl contexts, the httpx client."""

from __future__ import annotations

import base64
import json
import ssl
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.unit.client.support import PluginFactory, b64, kubeconfig, pki, runs
from turbok.client.errors import CredentialError, TlsConfigError
from turbok.client.kubeconfig import ClusterConfig, load_kubeconfig


@dataclass(frozen=True)
class Seen:
    """What a request carried when it was sent (httpx reuses the request object for a retry)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


def recording(seen: list[Seen], *, accept: str | None = None) -> httpx.MockTransport:
    """A transport that records requests and answers 200, or 401 unless ``Authorization == accept``."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(Seen(str(request.url), dict(request.headers), dict(request.extensions)))
        if accept is not None and request.headers.get("Authorization") != accept:
            return httpx.Response(401, json={"kind": "Status", "code": 401})
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handle)


def test_token_file_is_read_on_every_request(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one\n")
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", server="http://127.0.0.1:1", user={"tokenFile": "token"}))
    seen: list[Seen] = []
    with cfg.http_client(transport=recording(seen)) as client:
        client.get("/a")
        (tmp_path / "token").write_text("two\n")
        client.get("/b")
    assert [r.headers["authorization"] for r in seen] == ["Bearer one", "Bearer two"]
    assert seen[0].url == "http://127.0.0.1:1/a"


def test_token_file_beats_token_and_missing_file_fails_early(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    both = load_kubeconfig(kubeconfig(tmp_path / "kc", user={"token": "inline", "tokenFile": "token"}))
    assert both.headers() == {"Authorization": "Bearer from-file"}  # as client-go: the file wins
    gone = load_kubeconfig(kubeconfig(tmp_path / "kc2", user={"tokenFile": "missing-token"}))
    with pytest.raises(CredentialError, match="cannot read tokenFile .*missing-token"):
        gone.http_client()


def test_basic_auth(tmp_path: Path) -> None:
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", user={"username": "admin", "password": "pw"}))
    seen: list[Seen] = []
    with cfg.http_client(transport=recording(seen)) as client:
        client.get("/")
    assert seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"admin:pw").decode()
    assert ClusterConfig(server="http://x").auth() is None and ClusterConfig(server="http://x").headers() == {}


def test_exec_plugin_args_env_and_request(tmp_path: Path, exec_plugin: PluginFactory) -> None:
    user = exec_plugin(["exec-abc"], env=[{"name": "PREFIX", "value": "p"}])
    user["exec"]["args"].append("ignored-extra-arg")
    cfg = load_kubeconfig(kubeconfig(tmp_path / "cfg" / "kc", server="https://k.example:6443", user=user))
    assert cfg.exec_plugin is not None and cfg.bearer_token() == "exec-abc"
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["kind"] == "ExecCredential" and info["apiVersion"] == "client.authentication.k8s.io/v1"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"] == {"server": "https://k.example:6443"}
    assert runs(tmp_path) == [str(tmp_path / "cfg")]  # run in the kubeconfig's folder


def test_exec_plugin_gets_cluster_info_when_it_asks(tmp_path: Path, exec_plugin: PluginFactory) -> None:
    cluster = {"certificate-authority-data": b64(b"CA"), "tls-server-name": "api.internal",
               "extensions": [{"name": "client.authentication.k8s.io/exec", "extension": {"audience": "k8s"}}]}
    user = exec_plugin(["t"], provideClusterInfo=True)
    load_kubeconfig(kubeconfig(tmp_path / "kc", user=user, cluster=cluster)).bearer_token()
    spec = json.loads((tmp_path / "info.json").read_text())["spec"]
    assert spec["cluster"] == {"server": "https://k.example", "certificate-authority-data": b64(b"CA"),
                               "tls-server-name": "api.internal", "config": {"audience": "k8s"}}


def test_relative_exec_command_resolves_in_the_kubeconfig_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    script = folder / "cwd-plugin.sh"
    script.write_text("#!/bin/sh\nprintf '{\"status\": {\"token\": \"%s\"}}' \"$(basename \"$PWD\")\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    cfg = load_kubeconfig(kubeconfig(folder / "kc", user={"exec": {"command": "./cwd-plugin.sh"}}))
    assert cfg.bearer_token() == "cfg"


@pytest.mark.parametrize(
    ("expiry", "expected_runs"),
    [("2999-01-01T00:00:00Z", 1), (None, 1), ("2000-01-01T00:00:00Z", 3)],
    ids=["cached-until-expiry", "no-expiry-cached-for-a-while", "expired-runs-again"],
)
def test_exec_credential_cache(tmp_path: Path, exec_plugin: PluginFactory, expiry: str | None,
                               expected_runs: int) -> None:
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", user=exec_plugin(["t1", "t2", "t3"], expiry=expiry)))
    tokens = [cfg.bearer_token() for _ in range(3)]
    assert len(runs(tmp_path)) == expected_runs
    assert tokens == (["t1"] * 3 if expected_runs == 1 else ["t1", "t2", "t3"])


def test_a_401_asks_the_exec_plugin_again_once(tmp_path: Path, exec_plugin: PluginFactory) -> None:
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", user=exec_plugin(["stale", "fresh"])))
    seen: list[Seen] = []
    with cfg.http_client(transport=recording(seen, accept="Bearer fresh")) as client:
        assert len(runs(tmp_path)) == 1  # run once when the client is made
        assert client.get("/version").status_code == 200
        assert client.get("/version").status_code == 200  # the fresh token is cached now
    assert [r.headers["authorization"] for r in seen] == ["Bearer stale", "Bearer fresh", "Bearer fresh"]
    assert len(runs(tmp_path)) == 2
    # a static token that the server refuses is not retried: the 401 reaches the caller
    seen.clear()
    with ClusterConfig(server="http://x", token="wrong").http_client(transport=recording(seen, accept="Bearer right")) \
            as client:
        assert client.get("/").status_code == 401
    assert len(seen) == 1


def test_static_credentials_win_over_exec(tmp_path: Path, exec_plugin: PluginFactory) -> None:
    user = {**exec_plugin(["from-exec"]), "token": "static"}
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", user=user))
    assert cfg.exec_plugin is None and cfg.bearer_token() == "static" and runs(tmp_path) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"command": "/nonexistent/turbok-plugin", "installHint": "install it\n"},
         "'/nonexistent/turbok-plugin' is not installed or not on PATH: install it$"),
        ({"command": "turbok-no-such-plugin"}, "'turbok-no-such-plugin' is not installed or not on PATH$"),
        ({"command": sys.executable, "args": ["-c", "import sys; sys.exit('no credentials')"]},
         r"failed \(exit 1\): no credentials"),
        ({"command": sys.executable, "args": ["-c", "print('hello')"]}, "did not print an ExecCredential"),
        ({"command": sys.executable, "args": ["-c", "print('{\"status\": 3}')"]}, "did not print an ExecCredential"),
    ],
)
def test_exec_plugin_failures_are_clear(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", user={"exec": spec}))  # plugins run on use, not on load
    with pytest.raises(CredentialError, match=message):
        cfg.bearer_token()
    with pytest.raises(CredentialError, match=message):
        cfg.http_client()


def test_exec_plugin_without_command_and_slow_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CredentialError, match="user 'c': the exec credential plugin has no command"):
        load_kubeconfig(kubeconfig(tmp_path / "kc", user={"exec": {"args": ["x"]}}))
    monkeypatch.setattr("turbok.client.credentials._EXEC_TIMEOUT_S", 0.3)
    slow = load_kubeconfig(kubeconfig(tmp_path / "kc2", user={"exec": {
        "command": sys.executable, "args": ["-c", "import time; time.sleep(5)"]}}))
    with pytest.raises(CredentialError, match="did not answer within 0 s"):
        slow.bearer_token()


# -- TLS ------------------------------------------------------------------------------------------


def test_plain_http_needs_no_tls() -> None:
    assert ClusterConfig(server="http://127.0.0.1:8080", insecure=True).ssl_context() is False


def test_insecure_skip_tls_verify(caplog: pytest.LogCaptureFixture) -> None:
    ctx = ClusterConfig(server="https://x", insecure=True, context="lab").ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_NONE, False)
    assert "insecure-skip-tls-verify" in caplog.text


def test_ca_and_client_certificate_inline_or_as_files(tmp_path: Path) -> None:
    keys = pki()
    (tmp_path / "client.crt").write_bytes(keys["cert"])  # one as a file, one inline: both forms work
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", cluster={"certificate-authority-data": b64(keys["ca"])},
                                     user={"client-certificate": "client.crt", "client-key-data": b64(keys["key"])}))
    ctx = cfg.ssl_context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    assert not list(tmp_path.glob("turbok-kubeconfig-*"))  # the key was written nowhere lasting


def test_unusable_tls_material_is_refused(tmp_path: Path) -> None:
    keys = pki()
    with pytest.raises(TlsConfigError, match="certificate authority of cluster 'c' is not a PEM certificate"):
        load_kubeconfig(kubeconfig(tmp_path / "kc", cluster={"certificate-authority-data": b64(b"not a cert")}
                                   )).ssl_context()
    other_key = pki()["key"]
    mismatched = load_kubeconfig(kubeconfig(tmp_path / "kc2", user={
        "client-certificate-data": b64(keys["cert"]), "client-key-data": b64(other_key)}))
    with pytest.raises(TlsConfigError, match="client certificate or key in the kubeconfig is not usable"):
        mismatched.ssl_context()
    with pytest.raises(TlsConfigError):
        mismatched.http_client()


def test_exec_plugin_client_certificate(tmp_path: Path, exec_plugin: PluginFactory) -> None:
    keys = pki()
    user = exec_plugin(status={"clientCertificateData": keys["cert"].decode(), "clientKeyData": keys["key"].decode()})
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", user=user, cluster={"certificate-authority-data": b64(keys["ca"])}))
    assert cfg.bearer_token() is None
    assert isinstance(cfg.ssl_context(), ssl.SSLContext) and len(runs(tmp_path)) == 1
    bad = exec_plugin(status={"clientCertificateData": keys["cert"].decode(), "clientKeyData": pki()["key"].decode()})
    with pytest.raises(TlsConfigError):
        load_kubeconfig(kubeconfig(tmp_path / "kc2", user=bad)).ssl_context()


# -- the httpx client -----------------------------------------------------------------------------


def test_http_client_options_headers_and_tls_server_name(tmp_path: Path) -> None:
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", server="http://10.0.0.1:6443", user={"token": "t"},
                                     cluster={"tls-server-name": "api.internal"}))
    seen: list[Seen] = []
    with cfg.http_client(timeout=7.0, headers={"User-Agent": "turbok-test"}, follow_redirects=False,
                         transport=recording(seen)) as client:
        assert client.timeout.read == 7.0 and client.follow_redirects is False
        client.get("/version")
    request = seen[0]
    assert request.headers["user-agent"] == "turbok-test" and request.headers["authorization"] == "Bearer t"
    assert request.extensions["sni_hostname"] == "api.internal"
    with ClusterConfig(server="http://10.0.0.1").http_client(transport=recording(seen)) as client:
        client.get("/")
    assert "sni_hostname" not in seen[-1].extensions and "authorization" not in seen[-1].headers
