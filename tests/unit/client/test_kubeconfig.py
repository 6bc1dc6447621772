"""Finding and reading kubeconfigs: search order, $KUBECONFIG merging, contexts, paths, in-cluster, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.client.support import b64, kubeconfig
from turbok.client.errors import (
    ContextNotFoundError,
    CredentialError,
    KubeconfigError,
    KubeconfigFormatError,
    KubeconfigNotFoundError,
    TlsConfigError,
)
from turbok.client.kubeconfig import ClusterConfig, kubeconfig_paths, load_kubeconfig
from turbok.errors import TurbokError


def test_every_kubeconfig_error_is_a_turbok_error() -> None:
    for cls in (KubeconfigNotFoundError, KubeconfigFormatError, ContextNotFoundError, CredentialError, TlsConfigError):
        assert issubclass(cls, KubeconfigError) and issubclass(cls, TurbokError)


def test_merged_kubeconfig_list_first_entry_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = kubeconfig(tmp_path / "a", server="https://a.example", user={"token": "ta"}, name="a")
    b = kubeconfig(tmp_path / "b", server="https://b.example", user={"token": "tb"}, name="b")
    # b also defines a cluster "a", which must lose to a's: the first file naming an entry wins
    b.write_text(b.read_text().replace("clusters:\n", "clusters:\n- cluster: {server: 'https://loser'}\n  name: a\n"))
    monkeypatch.setenv("KUBECONFIG", f"{a}:{tmp_path / 'missing'}:{b}")
    cfg = load_kubeconfig()
    assert (cfg.context, cfg.server, cfg.bearer_token(), cfg.source) == ("a", "https://a.example", "ta", f"{a}:{b}")
    cfg = load_kubeconfig(context="b")
    assert (cfg.context, cfg.cluster_name, cfg.user_name, cfg.server, cfg.bearer_token()) == (
        "b", "b", "b", "https://b.example", "tb")
    with pytest.raises(ContextNotFoundError, match=r"context 'c' not found in the kubeconfig \(contexts: a, b\)"):
        load_kubeconfig(context="c")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'x'}:{tmp_path / 'y'}")
    with pytest.raises(KubeconfigNotFoundError, match=r"none of the files in \$KUBECONFIG exist"):
        load_kubeconfig()


def test_explicit_path_beats_kubeconfig_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "env", server="https://env.example")))
    explicit = kubeconfig(tmp_path / "explicit", server="https://explicit.example/")
    assert load_kubeconfig(explicit).server == "https://explicit.example"  # trailing slash dropped
    assert load_kubeconfig(str(explicit)).server == "https://explicit.example"
    with pytest.raises(KubeconfigNotFoundError, match="kubeconfig .*nope does not exist"):
        load_kubeconfig(tmp_path / "nope")


def test_default_search_order(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigNotFoundError, match="no kubeconfig found: pass --kubeconfig") as err:
        load_kubeconfig()
    assert "turbok up" not in str(err.value)
    with pytest.raises(KubeconfigNotFoundError, match="turbok up"):
        load_kubeconfig(turbok_home=True)
    kube = kubeconfig(tmp_path / "home" / ".kube" / "config", server="https://kube.example")
    assert load_kubeconfig().server == "https://kube.example"
    assert load_kubeconfig(turbok_home=True).server == "https://kube.example"
    own = kubeconfig(tmp_path / "turbok-home" / "kubeconfig", server="https://127.0.0.1:6443")
    # turbok's own comes first only when asked for (the CLI's get/apply/delete/sandbox ask)
    assert kubeconfig_paths(turbok_home=True) == [own]
    assert kubeconfig_paths() == [kube]
    assert load_kubeconfig(turbok_home=True).server == "https://127.0.0.1:6443"


def test_contexts_namespaces_and_missing_pieces(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", namespace="team-a", user={"token": "x"})
    cfg = load_kubeconfig(path)
    assert (cfg.context, cfg.namespace) == ("c", "team-a")
    assert load_kubeconfig(kubeconfig(tmp_path / "kc2")).namespace == "default"
    with pytest.raises(ContextNotFoundError, match="has no current-context: pass --context"):
        load_kubeconfig(kubeconfig(tmp_path / "noctx", current=""))
    assert load_kubeconfig(kubeconfig(tmp_path / "noctx2", current=""), "c").context == "c"
    dangling = kubeconfig(tmp_path / "dangling")
    dangling.write_text(dangling.read_text().replace("cluster: c", "cluster: elsewhere"))
    with pytest.raises(ContextNotFoundError, match="names cluster 'elsewhere'"):
        load_kubeconfig(dangling)
    nouser = kubeconfig(tmp_path / "nouser")
    nouser.write_text(nouser.read_text().replace("user: c", "user: ghost"))
    with pytest.raises(ContextNotFoundError, match="names user 'ghost'"):
        load_kubeconfig(nouser)


def test_malformed_files_are_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("clusters: [\n")
    with pytest.raises(KubeconfigFormatError, match="is not valid YAML") as err:
        load_kubeconfig(bad)
    assert "\n" not in str(err.value)
    listed = tmp_path / "list"
    listed.write_text("- a\n- b\n")
    with pytest.raises(KubeconfigFormatError, match="top level is not a mapping"):
        load_kubeconfig(listed)
    (tmp_path / "dir").mkdir()
    with pytest.raises(KubeconfigFormatError, match="cannot read kubeconfig"):
        load_kubeconfig(tmp_path / "dir")
    with pytest.raises(KubeconfigFormatError, match=r"no http\(s\) server URL \(it says '127.0.0.1:6443'\)"):
        load_kubeconfig(kubeconfig(tmp_path / "scheme", server="127.0.0.1:6443"))
    with pytest.raises(KubeconfigFormatError, match=r"no http\(s\) server URL$"):
        load_kubeconfig(kubeconfig(tmp_path / "noserver", server=""))
    with pytest.raises(KubeconfigFormatError, match="certificate-authority-data in the kubeconfig is not base64"):
        load_kubeconfig(kubeconfig(tmp_path / "b64", cluster={"certificate-authority-data": "abc"}))
    with pytest.raises(KubeconfigFormatError, match="cannot read client-key .*missing.key"):
        load_kubeconfig(kubeconfig(tmp_path / "key", user={"client-key": "missing.key"}))


def test_paths_are_relative_to_the_kubeconfig_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cfg"
    (folder / "creds").mkdir(parents=True)
    (folder / "creds" / "token").write_text("from-file\n")
    (folder / "ca.crt").write_bytes(b"---CA---")
    (folder / "client.crt").write_bytes(b"---CERT---")
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    cfg = load_kubeconfig(kubeconfig(folder / "kc", cluster={"certificate-authority": "ca.crt"}, user={
        "tokenFile": "creds/token", "client-certificate": "client.crt", "client-key-data": b64(b"---KEY---")}))
    assert cfg.bearer_token() == "from-file"
    assert (cfg.ca_pem, cfg.client_cert_pem, cfg.client_key_pem) == (b"---CA---", b"---CERT---", b"---KEY---")
    assert cfg.token_file == folder / "creds" / "token"


def test_inline_data_wins_over_paths(tmp_path: Path) -> None:
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", cluster={
        "certificate-authority-data": b64(b"inline"), "certificate-authority": "missing.crt"}))
    assert cfg.ca_pem == b"inline"


def test_cluster_settings_and_router_extension(tmp_path: Path) -> None:
    cluster = {"insecure-skip-tls-verify": True, "tls-server-name": "api.internal", "proxy-url": "http://proxy:3128",
               "extensions": [{"name": "turbok.dev/router",
                               "extension": {"url": "http://127.0.0.1:7777/", "token": "router-secret"}}]}
    cfg = load_kubeconfig(kubeconfig(tmp_path / "kc", server="http://127.0.0.1:7000", cluster=cluster))
    assert (cfg.insecure, cfg.tls_server_name, cfg.proxy_url) == (True, "api.internal", "http://proxy:3128")
    assert (cfg.router_url, cfg.router_token) == ("http://127.0.0.1:7777", "router-secret")
    plain = load_kubeconfig(kubeconfig(tmp_path / "kc2"))
    assert (plain.router_url, plain.router_token) == (None, None)


def test_legacy_auth_provider_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="removed auth-provider 'gcp'.*gke-gcloud-auth-plugin"):
        load_kubeconfig(kubeconfig(tmp_path / "kc", user={"auth-provider": {"name": "gcp"}}))


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token-1\n")
    (sa / "namespace").write_text("jobs\n")
    (sa / "ca.crt").write_bytes(b"---CA---")
    monkeypatch.setattr("turbok.client.kubeconfig.SERVICE_ACCOUNT_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    cfg = load_kubeconfig()
    assert (cfg.server, cfg.context, cfg.namespace, cfg.ca_pem) == ("https://10.96.0.1:443", "in-cluster", "jobs",
                                                                      b"---CA---")
    assert cfg.bearer_token() == "sa-token-1"
    (sa / "token").write_text("sa-token-2\n")  # the kubelet rotates projected tokens: read afresh
    assert cfg.bearer_token() == "sa-token-2"
    assert load_kubeconfig(context="in-cluster").server == "https://10.96.0.1:443"
    with pytest.raises(KubeconfigNotFoundError, match="no kubeconfig found"):
        load_kubeconfig(context="other")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert load_kubeconfig().server == "https://[fd00::1]:443"
    # a kubeconfig, when there is one, wins over the service account
    kubeconfig(tmp_path / "home" / ".kube" / "config", server="https://kube.example")
    assert load_kubeconfig().server == "https://kube.example"


def test_config_can_be_built_by_hand() -> None:
    cfg = ClusterConfig(server="https://x", token="t")
    assert (cfg.namespace, cfg.bearer_token(), cfg.headers()) == ("default", "t", {"Authorization": "Bearer t"})
