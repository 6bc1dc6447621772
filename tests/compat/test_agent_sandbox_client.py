"""The official ``k8s-agent-sandbox`` client, unchanged, against turbok's embedded control plane."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from k8s_agent_sandbox import SandboxClient
from k8s_agent_sandbox.exceptions import SandboxWarmPoolNotFoundError
from k8s_agent_sandbox.models import SandboxDirectConnectionConfig
from kubernetes import client as kclient
from kubernetes import config

from tests.conftest import ControlPlaneProcess

NS = "compat-client"
EXT = ("extensions.agents.x-k8s.io", "v1beta1")


@pytest.fixture(scope="module")
def api(control_plane: ControlPlaneProcess) -> Iterator[kclient.ApiClient]:
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    core = kclient.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    objects = kclient.CustomObjectsApi(api)
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


def _client(cp: ControlPlaneProcess, api: kclient.ApiClient) -> SandboxClient:
    # Direct mode, unchanged: the router URL and its own token in a header (extra_headers), never in the URL.
    config = SandboxDirectConnectionConfig(api_url=cp.router_url, extra_headers=cp.router_headers)
    return SandboxClient(connection_config=config, api_client=api)


def test_create_run_and_files_with_the_official_client(control_plane: ControlPlaneProcess,
                                                        api: kclient.ApiClient) -> None:
    objects = kclient.CustomObjectsApi(api)
    with _client(control_plane, api) as c:
        sb = c.create_sandbox("python-pool", namespace=NS, sandbox_ready_timeout=60)
        result = sb.commands.run("python3 -c 'print(6*7)'")
        assert result.stdout == "42\n" and result.exit_code == 0
        failing = sb.commands.run("sh -c 'echo oops >&2; exit 7'")
        assert failing.exit_code == 7 and failing.stderr == "oops\n"
        slow = sb.commands.run("sleep 10", command_timeout=1)
        assert slow.timed_out and slow.exit_code == 124
        sb.files.write("notes/a.txt", b"hi")
        assert sb.files.read("notes/a.txt") == b"hi"
        assert [e.name for e in sb.files.list("notes")] == ["a.txt"]
        assert sb.files.exists("notes/a.txt") and not sb.files.exists("notes/b.txt")
        claims = objects.list_namespaced_custom_object(*EXT, NS, "sandboxclaims")["items"]
        assert len(claims) == 1
        claim_name = claims[0]["metadata"]["name"]
    # Leaving the client deletes the claims it made; the sandbox follows by garbage collection.
    deadline = time.monotonic() + 30
    while objects.list_namespaced_custom_object(*EXT, NS, "sandboxclaims")["items"]:
        assert time.monotonic() < deadline, f"claim {claim_name} was not deleted"
        time.sleep(0.1)


def test_a_missing_warm_pool_fails_fast(control_plane: ControlPlaneProcess, api: kclient.ApiClient) -> None:
    started = time.monotonic()
    with _client(control_plane, api) as c, pytest.raises(SandboxWarmPoolNotFoundError):
        c.create_sandbox("no-such-pool", namespace=NS, sandbox_ready_timeout=60)
    assert time.monotonic() - started < 10, "a terminal reason must not wait for the timeout"


def test_a_server_in_the_sandbox_through_the_router(control_plane: ControlPlaneProcess,
                                                    api: kclient.ApiClient) -> None:
    """Any port of the sandbox's Pod through the control plane's router (``X-Sandbox-Port``), the token kept out
    of the sandbox; gRPC to the sandbox's sandboxd ``ProcessService`` on the same router port."""
    import grpc
    import requests
    from k8s_agent_sandbox.commands._process_stubs import process_pb2 as pb
    from k8s_agent_sandbox.commands._process_stubs import process_pb2_grpc as pb_grpc

    with _client(control_plane, api) as c:
        sb = c.create_sandbox("python-pool", namespace=NS, sandbox_ready_timeout=60)
        if not sb.get_pod_ip():
            pytest.skip("the control plane has no pod network here (root and nft): only the runtime API reaches Pods")
        sb.files.write("site/hello.txt", b"served from the sandbox")
        sb.commands.run("cd /app/site && nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        headers = {**control_plane.router_headers, "X-Sandbox-ID": sb.sandbox_id, "X-Sandbox-Namespace": NS,
                   "X-Sandbox-Port": "8000"}
        deadline = time.monotonic() + 20
        while True:
            r = requests.get(f"{control_plane.router_url}/hello.txt", headers=headers, timeout=10)
            if r.status_code != 502 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server is still starting
        assert (r.status_code, r.content) == (200, b"served from the sandbox")
        r = requests.get(f"{control_plane.router_url}/hello.txt", headers={**headers, "X-Sandbox-Port": "8001"},
                         timeout=10)
        assert r.status_code == 502 and r.json()["reason"] == "BadGateway"
        host = control_plane.router_url.removeprefix("http://")
        with grpc.insecure_channel(host) as channel:
            stub = pb_grpc.ProcessServiceStub(channel)
            meta = [("authorization", f"Bearer {control_plane.router_token}"), ("x-sandbox-id", sb.sandbox_id),
                    ("x-sandbox-namespace", NS)]
            done = stub.Execute(pb.ExecuteRequest(config=pb.ProcessConfig(command=["cat", "/app/site/hello.txt"])),
                                metadata=meta, timeout=30)
            assert (done.stdout, done.exit_code) == (b"served from the sandbox", 0)
