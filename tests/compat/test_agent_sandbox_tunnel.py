"""The official ``k8s-agent-sandbox`` client, unchanged, in its default LocalTunnel mode.

LocalTunnel is what ``SandboxClient()`` does without a connection config: it
runs ``kubectl port-forward svc/sandbox-router-svc <local>:8080 -n
agent-sandbox-system`` against the cluster of its ``api_client`` and talks to
the router through that tunnel, sending no router token. turbok answers with
the router's mirror Pod and Service (``turbok.node.routerpod``): the tunnel
ends on the router's Unix socket, which trusts what the API server already
authenticated. Needs kubectl on PATH (the client runs it) and a node that runs
Pods (runsc).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from k8s_agent_sandbox.sandbox_client import SandboxClient
from kubernetes import client as kclient
from kubernetes import config

from tests.conftest import ControlPlaneProcess

NS = "compat-tunnel"
EXT = ("extensions.agents.x-k8s.io", "v1beta1")

pytestmark = [pytest.mark.compat,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (the client runs it)"),
              pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc (gVisor) is not installed: no Pod runs")]


@pytest.fixture(scope="module")
def api(control_plane: ControlPlaneProcess) -> Iterator[kclient.ApiClient]:
    api = config.new_client_from_config(str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    core: Any = kclient.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    objects: Any = kclient.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxtemplates", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
        "metadata": {"name": "python-template"},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "python-runtime", "image": "python-runtime-sandbox"}]}}}})
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxwarmpools", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
        "metadata": {"name": "python-pool"},
        "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "python-template"}}})
    yield api
    core.delete_namespace(NS)
    api.close()


def test_the_router_service_is_where_the_client_looks(api: kclient.ApiClient) -> None:
    core: Any = kclient.CoreV1Api(api)
    svc = core.read_namespaced_service("sandbox-router-svc", "agent-sandbox-system")
    assert [p.port for p in svc.spec.ports] == [8080]
    pods = core.list_namespaced_pod("agent-sandbox-system", label_selector=",".join(
        f"{k}={v}" for k, v in svc.spec.selector.items())).items
    assert len(pods) == 1 and pods[0].status.phase == "Running"
    assert "kubernetes.io/config.mirror" in pods[0].metadata.annotations


def test_a_port_forward_to_the_router_service_needs_no_router_token(control_plane: ControlPlaneProcess) -> None:
    proc = subprocess.Popen(["kubectl", "port-forward", "svc/sandbox-router-svc", ":8080", "-n", "agent-sandbox-system",
                             "--address=127.0.0.1"], env=control_plane.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        match = re.search(r"127\.0\.0\.1:(\d+) -> 8080", proc.stdout.readline())
        assert match, "kubectl port-forward did not start"
        url = f"http://127.0.0.1:{match.group(1)}"
        assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
        r = requests.post(f"{url}/execute", json={"command": "true"}, headers={"X-Sandbox-ID": "nobody"}, timeout=10)
        assert r.status_code == 404 and r.json()["reason"] == "SandboxNotFound"  # past auth: no 401
        # The router's own TCP port still wants its token.
        assert requests.get(f"{control_plane.router_url}/healthz", timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_local_tunnel_the_clients_default(control_plane: ControlPlaneProcess, api: kclient.ApiClient) -> None:
    objects: Any = kclient.CustomObjectsApi(api)
    c: Any
    with SandboxClient(api_client=api) as c:  # no connection config: LocalTunnel, no router token
        sb = c.create_sandbox("python-pool", namespace=NS, sandbox_ready_timeout=60)
        result = sb.commands.run("python3 -c 'print(6*7)'")
        assert result.stdout == "42\n" and result.exit_code == 0
        failing = sb.commands.run("sh -c 'echo oops >&2; exit 7'")
        assert failing.exit_code == 7 and failing.stderr == "oops\n"
        sb.files.write("notes/a.txt", b"through the tunnel")
        assert sb.files.read("notes/a.txt") == b"through the tunnel"
        assert [e.name for e in sb.files.list("notes")] == ["a.txt"]
    deadline = time.monotonic() + 30
    while objects.list_namespaced_custom_object(*EXT, NS, "sandboxclaims")["items"]:
        assert time.monotonic() < deadline, "the client's claim was not deleted"
        time.sleep(0.1)
