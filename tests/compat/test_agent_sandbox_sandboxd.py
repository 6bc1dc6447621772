"""The official ``k8s-agent-sandbox`` client, unchanged, in its sandboxd modes, against a real control plane.

In these modes the client does not use the router: it talks to the sandbox's own
sandboxd (gRPC ``ProcessService`` on 9090, the REST filesystem on 8080), which
turbok's agent serves inside every Sandbox's Pod (``turbok.sandboxd.agent``):

- ``SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip")``: straight to
  ``Sandbox.status.podIPs`` (the host reaches the pod network);
- ``SandboxdPodTunnelConnectionConfig()``: ``kubectl port-forward pod/<pod>
  <l1>:8080 <l2>:9090``, through the API server's ``pods/portforward`` into the
  Pod's network namespace.

Needs runsc (Pods run) and a pod network (root and nft: the Pods get an address);
the tunnel mode also kubectl.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from k8s_agent_sandbox.exceptions import SandboxRequestError
from k8s_agent_sandbox.models import SandboxdInClusterConnectionConfig, SandboxdPodTunnelConnectionConfig
from k8s_agent_sandbox.sandbox_client import SandboxClient
from kubernetes import client as kclient
from kubernetes import config

from tests.conftest import ControlPlaneProcess

NS = "compat-sandboxd"
EXT = ("extensions.agents.x-k8s.io", "v1beta1")

pytestmark = [pytest.mark.compat,
              pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc (gVisor) is not installed: no Pod runs"),
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                                 reason="no pod network without root and nft: sandboxd is reached on the Pod's address")]


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
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxtemplates", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
        "metadata": {"name": "eager-template"},
        "spec": {"podTemplate": {"metadata": {"annotations": {"turbok.dev/sandboxd": "eager"}},
                                 "spec": {"containers": [{"name": "python-runtime", "image": "python-runtime-sandbox"}]}}}})
    objects.create_namespaced_custom_object(*EXT, NS, "sandboxwarmpools", {
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
        "metadata": {"name": "eager-pool"},
        "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "eager-template"}}})
    yield api
    core.delete_namespace(NS)
    api.close()


def _exercise(sb: Any) -> None:
    """What a user does with a sandbox: commands (output, exit codes, env, cwd, timeouts) and files."""
    r = sb.commands.run("python3 -c 'print(6*7)'; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("42\n", "err\n", 3)
    r = sb.commands.run("echo $GREETING; pwd", env={"GREETING": "hi"}, cwd="/app")
    assert r.stdout == "hi\n/app\n"
    slow = sb.commands.run("sleep 10", command_timeout=1)
    assert slow.timed_out and slow.exit_code == 124
    data = os.urandom(200_000)
    sb.files.write("notes/blob.bin", data)
    assert sb.files.read("notes/blob.bin") == data
    entries = {e.name: e for e in sb.files.list("notes")}
    assert entries["blob.bin"].size == len(data) and entries["blob.bin"].mode is not None
    assert sb.files.exists("notes/blob.bin") and not sb.files.exists("notes/none")
    # The command sees what the files API wrote: one work directory, /app.
    assert sb.commands.run("wc -c < /app/notes/blob.bin").stdout.strip() == str(len(data))
    with pytest.raises(SandboxRequestError) as e:
        sb.files.delete("notes")  # not empty, not recursive
    assert e.value.status_code == 409
    sb.files.delete("notes", recursive=True)
    assert not sb.files.exists("notes")
    # A symlink the sandbox's code planted that leads out of /app: refused (403), not followed.
    sb.commands.run("ln -s /etc /app/etc-link")
    with pytest.raises(SandboxRequestError) as e:
        sb.files.read("etc-link/passwd")
    assert e.value.status_code == 403


def _wait_no_claims(api: kclient.ApiClient) -> None:
    objects: Any = kclient.CustomObjectsApi(api)
    deadline = time.monotonic() + 30
    while objects.list_namespaced_custom_object(*EXT, NS, "sandboxclaims")["items"]:
        assert time.monotonic() < deadline, "the client's claim was not deleted"
        time.sleep(0.1)


def test_sandboxd_in_cluster_pod_ip(api: kclient.ApiClient) -> None:
    # A client on the Pod's address goes around the router and port-forwards, which start the agent on demand:
    # its template says `turbok.dev/sandboxd: eager`, so the agent serves when the Pod is Ready.
    c: Any
    with SandboxClient(connection_config=SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip"),
                       api_client=api) as c:
        sb = c.create_sandbox("eager-pool", namespace=NS, sandbox_ready_timeout=60)
        if not sb.get_pod_ip():
            pytest.skip("the control plane started without a pod network (its log says why)")
        _exercise(sb)
    _wait_no_claims(api)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (the client runs it)")
def test_sandboxd_pod_tunnel(control_plane: ControlPlaneProcess, api: kclient.ApiClient,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    c: Any
    with SandboxClient(connection_config=SandboxdPodTunnelConnectionConfig(), api_client=api) as c:
        sb = c.create_sandbox("python-pool", namespace=NS, sandbox_ready_timeout=60)
        if not sb.get_pod_ip():
            pytest.skip("the control plane started without a pod network (its log says why)")
        _exercise(sb)
    _wait_no_claims(api)
