"""The operator and the router on a real control plane: what a cluster adds to the embedded engine's suite.

Pods get ``runtimeClassName`` (gvisor unless the template names one), other field managers' fields
survive the operator's writes, the informer relists after a real 410 and reports what went meanwhile,
lists come in pages, and the official client reaches a stand-in process on a kwok Pod's loopback IP
through ``turbok router``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.kube.engine import KubeEngineCluster
from tests.kube_cluster import KubeCluster, free_port
from turbok.api.kinds import CONFIG_MAP, POD, SERVICE
from turbok.client.api import AsyncApi
from turbok.client.kubeconfig import load_kubeconfig
from turbok.controllers import labels as lb
from turbok.kube.informer import Change, Informer
from turbok.kube.router import ClusterRouter, RouterSettings, create_cluster_router_app

HERE = Path(__file__).parent
Obj = dict[str, Any]


def _sandbox(name: str, **spec: Any) -> Obj:
    pod: Obj = {"spec": {"containers": [{"name": "main", "image": "python-runtime-sandbox"}]}}
    return {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": name},
            "spec": {"podTemplate": pod, **spec}}


async def test_pods_run_under_the_runtime_class_with_upstreams_owner_and_the_kubelets_status(
        cluster: KubeEngineCluster) -> None:
    created = cluster.create(_sandbox("gv", service=True))
    kata = _sandbox("kt")
    kata["spec"]["podTemplate"]["spec"]["runtimeClassName"] = "kata"
    cluster.kube.apply({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "kata"},
                        "handler": "kata"})
    cluster.create(kata)
    obj = await cluster.wait_condition(cluster.sandbox, "gv", "Ready", reason="DependenciesReady")
    await cluster.wait_condition(cluster.sandbox, "kt", "Ready", reason="DependenciesReady")
    pod = cluster.get(POD, "gv")
    assert pod is not None
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert cluster.get(POD, "kt")["spec"]["runtimeClassName"] == "kata"  # type: ignore[index]
    assert pod["metadata"]["ownerReferences"] == [lb.owner_ref(created)]
    assert pod["spec"]["nodeName"] == "kwok-node-0", "bound by kube-scheduler"
    assert obj["status"]["podIPs"] == [pod["status"]["podIP"]] and pod["status"]["podIP"].startswith("127.64.")
    assert obj["status"]["serviceFQDN"] == f"gv.{cluster.namespace}.svc.cluster.local"
    service = cluster.get(SERVICE, "gv")
    assert service is not None and service["spec"]["clusterIP"] == "None"


async def test_fields_of_other_managers_survive_the_operators_writes(cluster: KubeEngineCluster) -> None:
    cluster.create(_sandbox("mine"))
    await cluster.wait_condition(cluster.sandbox, "mine", "Ready")
    # another manager (a user's kubectl, a mesh injector...) owns a label and an annotation on the Pod
    # and an annotation on the Sandbox, by server-side apply
    for kind, name, md in ((POD, "mine", {"labels": {"team": "blue"}, "annotations": {"mesh/injected": "yes"}}),
                           (cluster.sandbox, "mine", {"annotations": {"owner/ticket": "T-1"}})):
        r = cluster.http.patch(f"{kind.base_path(cluster.namespace)}/{name}",
                               params={"fieldManager": "someone-else"},
                               content=json.dumps({"apiVersion": kind.api_version, "kind": kind.kind,
                                                   "metadata": {"name": name, **md}}),
                               headers={"Content-Type": "application/apply-patch+yaml"})
        assert r.status_code == 200, r.text
    # the operator rewrites the Pod's labels (a pod template label change) and the Sandbox's status
    cluster.patch(cluster.sandbox, "mine", {"spec": {"podTemplate": {"metadata": {"labels": {"tier": "gold"}}}}})
    pod = await cluster.wait(lambda: (p := cluster.get(POD, "mine")) and p["metadata"]["labels"].get("tier") == "gold"
                             and p, what="the Pod relabelled")
    assert pod["metadata"]["labels"]["team"] == "blue"
    assert pod["metadata"]["annotations"]["mesh/injected"] == "yes"
    sb = cluster.get(cluster.sandbox, "mine")
    assert sb is not None and sb["metadata"]["annotations"]["owner/ticket"] == "T-1"
    managers = {f["manager"] for f in pod["metadata"]["managedFields"]}
    assert {"someone-else", "turbok-operator"} <= managers


async def test_the_informer_relists_after_410_and_reports_deletions_it_missed(kube: KubeCluster) -> None:
    api = AsyncApi(load_kubeconfig(kube.kubeconfig))
    ns = "relist"
    kube.client.post("/api/v1/namespaces", json={"metadata": {"name": ns}})
    for name in ("a", "b", "c", "d", "e"):
        r = kube.client.post(f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": name}})
        assert r.status_code == 201
    changes: list[Change] = []
    informer = Informer(api, CONFIG_MAP, changes.append, namespace=ns, page=2)
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    names = sorted(o["metadata"]["name"] for o in informer.values() if o["metadata"]["name"] != "kube-root-ca.crt")
    assert names == ["a", "b", "c", "d", "e"], "in pages of 2"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # while nobody watches: one deleted; then the informer resumes from a version etcd no longer serves
    assert kube.client.delete(f"/api/v1/namespaces/{ns}/configmaps/b").status_code == 200
    informer.resource_version = "1"
    changes.clear()
    task = asyncio.create_task(informer.run())
    deadline = time.monotonic() + 20
    while informer.lists < 2:
        assert time.monotonic() < deadline, "no relist after 410"
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await api.close()
    # the controller-manager publishes kube-root-ca.crt into a new namespace when it gets to it: before or after
    # the first list, so the relist may report it ADDED; it is not the test's
    assert [(c.type, c.name) for c in changes if c.name != "kube-root-ca.crt"] == [("DELETED", "b")]
    assert informer.get(ns, "b") is None


# ------------------------------------------------------------------------------------------------- router

class RouterThread:
    def __init__(self, kube: KubeCluster, settings: RouterSettings) -> None:
        self.kube, self.settings = kube, settings
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        api = AsyncApi(load_kubeconfig(self.kube.kubeconfig))
        self.runner = web.AppRunner(create_cluster_router_app(ClusterRouter(api, self.settings)))
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(60)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def standin() -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(host: str, port: int = 8888) -> None:
        proc = subprocess.Popen([sys.executable, str(HERE / "standin.py"), host, str(port)], stdout=subprocess.PIPE)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"serving")

    yield start
    for p in procs:
        p.kill()
        p.wait()


async def test_official_client_through_the_cluster_router_reaches_a_process_on_the_pods_ip(
        cluster: KubeEngineCluster, standin: Any) -> None:
    from k8s_agent_sandbox import SandboxClient
    from k8s_agent_sandbox.models import SandboxDirectConnectionConfig
    from kubernetes import config as kconfig

    ns = cluster.namespace
    cluster.create({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
                    "metadata": {"name": "python-template"},
                    "spec": {"podTemplate": {"spec": {"containers": [{"name": "python-runtime",
                                                                       "image": "python-runtime-sandbox"}]}}}})
    cluster.create({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
                    "metadata": {"name": "python-pool"},
                    "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "python-template"}}})
    warm = await cluster.wait(lambda: [s for s in cluster.sandboxes()
                                       if (s.get("status") or {}).get("podIPs")], what="a warm sandbox with an IP")
    ip = warm[0]["status"]["podIPs"][0]
    standin(ip)  # the container's stand-in, on the Pod's loopback IP and the runtime's port
    token = "router-token-for-tests"
    with RouterThread(cluster.kube, RouterSettings(token=token, token_review=True)) as url:
        api_client = await asyncio.to_thread(kconfig.new_client_from_config, str(cluster.kube.kubeconfig))
        config = SandboxDirectConnectionConfig(api_url=url, extra_headers={"Authorization": f"Bearer {token}"})

        def run() -> Any:
            with SandboxClient(connection_config=config, api_client=api_client) as client:
                sb = client.create_sandbox("python-pool", namespace=ns, sandbox_ready_timeout=60)
                return sb.commands.run("echo $((6*7)); echo oops >&2; exit 3")

        name = warm[0]["metadata"]["name"]
        async with httpx.AsyncClient(base_url=url) as http:
            headers = {"X-Sandbox-ID": name, "X-Sandbox-Namespace": ns}
            seen = (await http.get("/whoami", headers={**headers, "Authorization": f"Bearer {token}"})).json()
            assert seen["address"] == f"{ip}:8888" and seen["authorization"] is None, "the token stays here"
            assert (await http.get("/whoami", headers=headers)).status_code == 401
            assert (await http.get("/whoami", headers={**headers, "Authorization": "Bearer wrong"})).status_code == 401
            # a ServiceAccount's token: allowed only where RBAC lets it get the Sandbox (TokenReview + SAR)
            sa_token = cluster.kube.service_account_token(ns, "default")
            assert (await http.get("/whoami", headers={**headers, "Authorization": f"Bearer {sa_token}"})
                    ).status_code == 403
            cluster.kube.apply(
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "use", "namespace": ns},
                 "rules": [{"apiGroups": ["agents.x-k8s.io"], "resources": ["sandboxes"], "verbs": ["get"]}]},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "use", "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "use"},
                 "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]})
            other = {**headers, "X-Sandbox-ID": "elsewhere-" + name[:20], "Authorization": f"Bearer {sa_token}"}
            deadline = time.monotonic() + 15  # a refusal is remembered for a moment; RBAC caches nothing here
            while (await http.get("/whoami", headers={**headers, "Authorization": f"Bearer {sa_token}"})
                   ).status_code != 200:
                assert time.monotonic() < deadline, "the RoleBinding did not let the ServiceAccount in"
                await asyncio.sleep(0.2)
            assert (await http.get("/whoami", headers=other)).status_code == 404
            missing_id = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/whoami", headers=missing_id)).status_code == 400
        result = await asyncio.to_thread(run)
        assert (result.stdout, result.stderr, result.exit_code) == ("42\n", "oops\n", 3)
        api_client.close()
