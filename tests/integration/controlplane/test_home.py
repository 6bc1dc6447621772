"""The home of a real control plane: private files, no token in logs or URLs, one owner, stable ports."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from k8s_agent_sandbox.exceptions import SandboxRequestError
from k8s_agent_sandbox.models import SandboxDirectConnectionConfig
from k8s_agent_sandbox.sandbox import Sandbox

from tests.conftest import ControlPlaneProcess
from turbok.embedded.daemon import DaemonError, stop_sandboxes
from turbok.home import Home
from turbok.sdk import SandboxConnection, SdkError

from .conftest import Kube, template


def turbok(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TURBOK_HOME": str(home)}
    env.pop("KUBECONFIG", None)
    return subprocess.run([sys.executable, "-m", "turbok", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _assert_private(home: Path) -> None:
    assert _mode(home) == 0o700
    assert _mode(home / "pki") == 0o700
    files = {p.name: _mode(p) for p in home.iterdir() if p.is_file()}
    for name in ("store.db", "token", "router-token", "kubeconfig", "endpoints.json", "turbok.log", "ports.json",
                 "turbok.pid"):
        assert name in files, f"{name} missing from {sorted(files)}"
    # Every file directly in the home, the SQLite -wal/-shm files among them, is its owner's only.
    assert {n: m for n, m in files.items() if m != 0o600} == {}, files


class _NoKubernetes:
    """The official client's Kubernetes helper, unused on the Direct path."""

    injected_api_client = None

    def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {}}


def test_secrets_stay_private_and_no_token_leaves_them(make_control_plane: Callable[..., ControlPlaneProcess],
                                                      tmp_path: Path) -> None:
    home = tmp_path / "home"
    cp = make_control_plane(home)
    _assert_private(home)
    tokens = {"api": cp.token, "router": cp.router_token}
    assert all(tokens.values()) and cp.token != cp.router_token, "the router has its own token"
    status = turbok("status", "-o", "json", home=home)
    assert status.returncode == 0 and json.loads(status.stdout)["router"] == cp.router_url
    for where, text in (("endpoints.json", (home / "endpoints.json").read_text()), ("turbok.log", cp.log()),
                        ("turbok status -o json", status.stdout + status.stderr), ("router URL", cp.router_url)):
        for which, token in tokens.items():
            assert token not in text, f"the {which} token is in {where}"

    ca = str(home / "pki" / "ca.crt")
    with httpx.Client(base_url=cp.router_url, timeout=10) as router:
        assert router.get("/healthz", headers=cp.router_headers).status_code == 200
        refused = router.get("/healthz", headers={"Authorization": f"Bearer {cp.token}"})
        assert refused.status_code == 401, "the API's admin token opens nothing on the router"
        path_form = router.get(f"/t/{cp.router_token}/healthz")
        assert path_form.status_code == 401 and "Authorization: Bearer" in path_form.json()["message"]
    with httpx.Client(base_url=cp.api_url, verify=ca, timeout=10) as api:
        assert api.get("/api/v1/namespaces", headers=cp.router_headers).status_code == 401, \
            "the router's token opens nothing on the API"

    # A failing router call: neither turbok's SDK nor the official client puts the token in its exception.
    with SandboxConnection(cp.router_url, cp.router_token, "default", "ghost") as conn, \
            pytest.raises(SdkError) as sdk_error:
        conn.commands.run("true")
    official = Sandbox(claim_name="c", sandbox_id="ghost", namespace="default",
                       connection_config=SandboxDirectConnectionConfig(api_url=cp.router_url,
                                                                       extra_headers=cp.router_headers),
                       k8s_helper=_NoKubernetes())  # type: ignore[arg-type]
    assert official.commands is not None
    with pytest.raises(SandboxRequestError) as official_error:
        official.commands.run("true")
    official.close_connection()
    for e in (sdk_error.value, official_error.value):
        text = f"{e} {e!r} {e.__cause__} {e.__context__}"
        assert cp.router_url in text or "ghost" in text, text  # the official client quotes the URL it called
        assert cp.router_token not in text and cp.token not in text

    # A home left 0755 with 0644 files by an older turbok is tightened on the next start.
    cp.stop()
    home.chmod(0o755)
    (home / "pki").chmod(0o755)
    for path in home.iterdir():
        if path.is_file():
            path.chmod(0o644)
    cp.start()
    _assert_private(home)


def test_a_second_serve_on_the_same_home_is_refused_and_the_first_keeps_its_objects(
        make_control_plane: Callable[..., ControlPlaneProcess]) -> None:
    cp = make_control_plane()
    kube = Kube(cp, "default")
    kube.create(template("mine"))
    second = turbok("serve", home=cp.home, timeout=60)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert lines[0].startswith("error:") and f"pid {cp.proc.pid}" in lines[0]  # type: ignore[union-attr]
    assert cp.proc is not None and cp.proc.poll() is None
    assert json.loads((cp.home / "endpoints.json").read_text())["pid"] == cp.proc.pid
    kube.create(template("after"))
    assert {t["metadata"]["name"] for t in kube.api.list(kube.template, "default")["items"]} == {"mine", "after"}
    again = turbok("up", home=cp.home)
    assert again.returncode == 0 and cp.api_url in again.stdout, "up reports the serve that holds the home"
    kube.close()


def test_status_and_down_see_a_serve_started_by_hand(make_control_plane: Callable[..., ControlPlaneProcess]) -> None:
    cp = make_control_plane()  # `turbok serve` run directly, as a user would, not through `turbok up`
    assert cp.proc is not None
    status = json.loads(turbok("status", "-o", "json", home=cp.home).stdout)
    assert (status["running"], status["pid"], status["api"], status["router"]) == \
        (True, cp.proc.pid, cp.api_url, cp.router_url)
    Home(cp.home).sandboxes.mkdir(exist_ok=True)
    with pytest.raises(DaemonError, match=f"pid {cp.proc.pid}"):
        stop_sandboxes(Home(cp.home))  # never under a live control plane: it would restart them
    down = turbok("down", "--stop-sandboxes", home=cp.home)
    assert down.returncode == 0 and "turbok is down" in down.stdout, down.stdout + down.stderr
    assert cp.proc.poll() is not None, "down returns once the process is gone"
    gone = turbok("status", "-o", "json", home=cp.home)
    assert gone.returncode == 3 and json.loads(gone.stdout)["running"] is False


def _serving(home: Path) -> dict[str, Any]:
    status = turbok("status", "-o", "json", home=home)
    assert status.returncode == 0, status.stdout + status.stderr
    info: dict[str, Any] = json.loads(status.stdout)
    return info


def test_ports_survive_down_and_up_and_move_only_when_asked(tmp_path: Path) -> None:
    from turbok.client.kubeconfig import load_kubeconfig

    home = tmp_path / "home"
    up = turbok("up", home=home)
    assert up.returncode == 0, up.stderr
    try:
        first = _serving(home)
        router_token = (home / "router-token").read_text().strip()
        assert turbok("down", home=home).returncode == 0
        assert turbok("up", home=home).returncode == 0
        second = _serving(home)
        assert (second["api"], second["router"]) == (first["api"], first["router"])
        kubeconfig = load_kubeconfig(home / "kubeconfig")
        assert (kubeconfig.server, kubeconfig.router_url) == (first["api"], first["router"])
        # A client that held the router URL and token from before keeps working.
        auth = {"Authorization": f"Bearer {router_token}"}
        assert httpx.get(f"{first['router']}/healthz", headers=auth, timeout=10).status_code == 200

        # The kept router port taken by someone else: one line naming it, nothing moves silently.
        assert turbok("down", home=home).returncode == 0
        router_port = int(first["router"].rsplit(":", 1)[1])
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", router_port))
            squatter.listen()
            taken = turbok("up", home=home)
        assert taken.returncode == 1, taken.stdout + taken.stderr
        lines = [line for line in taken.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and str(router_port) in lines[0] and "--router-port" in lines[0], taken.stderr

        # Moved on request, and kept at the new place.
        assert turbok("up", "--router-port", "0", home=home).returncode == 0
        moved = _serving(home)
        assert moved["api"] == first["api"] and moved["router"] != first["router"]
        assert turbok("down", home=home).returncode == 0
        assert turbok("up", home=home).returncode == 0
        assert _serving(home)["router"] == moved["router"]
    finally:
        turbok("down", "--stop-sandboxes", home=home)
