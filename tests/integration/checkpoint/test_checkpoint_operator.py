"""The cluster side against a real kube-apiserver 1.37.2: CheckpointConfiguration -> agents.

The operator (turbok/checkpoint/operator.py) reconciles a CheckpointConfiguration
into a DaemonSet (nodeSelector and tolerations from the resource), its RBAC and a
status; kube-controller-manager makes the Pods, kube-scheduler binds them, kwok runs
them on simulated nodes. Real agent processes then stand in for the Pods' containers
on the Pods' loopback IPs, with the agents' own service-account token: they read the
configuration, find each other through the API (no ``peers:`` list), replicate, and
publish their tiers, which the operator folds into the status.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.kube_cluster import RELEASE, KubeCluster, kube_cluster, missing
from turbok.checkpoint import CheckpointManager
from turbok.checkpoint.operator import Reconciler, desired_objects
from turbok.client.kubeconfig import load_kubeconfig
from turbok.client.rest import RestClient

NEEDS = ("kube-controller-manager", "kube-scheduler", "kwok")
pytestmark = pytest.mark.skipif(missing(*NEEDS, version=RELEASE) is not None,
                                reason=str(missing(*NEEDS, version=RELEASE)))

CRD = Path(__file__).parents[3] / "turbok" / "api" / "crds" / "checkpointing.turbok.dev_checkpointconfigurations.yaml"
GROUP_PATH = "/apis/checkpointing.turbok.dev/v1/checkpointconfigurations"
NS = "turbok-checkpoint"


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    with kube_cluster(version=RELEASE) as c:
        crd = yaml.safe_load(CRD.read_text())
        r = c.client.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        assert r.status_code == 201, r.text
        c.wait("the CRD to be established", lambda: any(
            cond["type"] == "Established" and cond["status"] == "True"
            for cond in (c.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}")
                         .json().get("status", {}).get("conditions") or [])), timeout=60)
        c.wait("the resource to be served", lambda: c.client.get(GROUP_PATH).status_code == 200, timeout=60)
        for name, gpu in (("gpu-1", True), ("gpu-2", True), ("cpu-1", False)):
            node: dict[str, Any] = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                             "labels": {"kubernetes.io/hostname": name, "type": "kwok",
                                        **({"node.kubernetes.io/instance-type": "a3-highgpu-8g"} if gpu else {})}},
                "spec": {"taints": [{"key": "checkpoint", "value": "yes", "effect": "NoSchedule"}] if gpu else []},
                "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                           "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
            }
            assert c.client.post("/api/v1/nodes", json=node).status_code == 201
        yield c


def _config(name: str, tmp: Path, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "checkpointing.turbok.dev/v1", "kind": "CheckpointConfiguration",
        "metadata": {"name": name},
        "spec": {
            "storageURL": f"file://{tmp}/bucket", "inMemoryVolumeSize": "256Mi", "replicationFactor": 1,
            "hostNetwork": False, "port": port, "image": "turbok/checkpoint-agent:test",
            "jobMemoryQuota": "128Mi", "diskQuota": "1Gi",
            "nodeSelector": {"node.kubernetes.io/instance-type": "a3-highgpu-8g"},
            "tolerations": [{"key": "checkpoint", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def test_the_real_api_server_accepts_the_crd_and_refuses_bad_configurations(cluster: KubeCluster, tmp_path: Path) -> None:
    bad = _config("bad", tmp_path, 7480)
    bad["spec"]["replicationFactor"] = -1
    bad["spec"]["inMemoryVolumeSize"] = "lots"
    r = cluster.client.post(GROUP_PATH, json=bad)
    assert r.status_code == 422, r.text
    fields = {c["field"] for c in r.json()["details"]["causes"]}
    assert {"spec.replicationFactor", "spec.inMemoryVolumeSize"} <= fields
    # The operator's objects pass the real server's validation (server-side dry run).
    objects = desired_objects({**_config("dry", tmp_path, 7480), "metadata": {"name": "dry", "uid": "u"}},
                              namespace="default", image="x")
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        group, version = (obj["apiVersion"].split("/") if "/" in obj["apiVersion"] else ("", obj["apiVersion"]))
        plural = {"ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
                  "Role": "roles", "RoleBinding": "rolebindings", "DaemonSet": "daemonsets"}[obj["kind"]]
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        ns = f"/namespaces/{obj['metadata']['namespace']}" if "namespace" in obj["metadata"] else ""
        body = {**obj, "metadata": {**obj["metadata"], "ownerReferences": []}}
        r = cluster.client.post(f"{base}{ns}/{plural}", params={"dryRun": "All"}, json=body)
        assert r.status_code in (200, 201), (obj["kind"], r.text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_configuration_becomes_agents_that_find_each_other_and_report_their_tiers(cluster: KubeCluster, tmp_path: Path) -> None:
    port = _free_port()
    assert cluster.client.post(GROUP_PATH, json=_config("training", tmp_path, port)).status_code == 201
    rest = RestClient(load_kubeconfig(cluster.kubeconfig))
    reconciler = Reconciler(rest, namespace=NS, image="unused")
    reconciler.reconcile_all()
    ds = cluster.client.get(f"/apis/apps/v1/namespaces/{NS}/daemonsets/checkpoint-agent-training").json()
    pod_spec = ds["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "a3-highgpu-8g"}
    assert pod_spec["tolerations"][0]["key"] == "checkpoint"
    assert ds["metadata"]["ownerReferences"][0]["kind"] == "CheckpointConfiguration"

    def running() -> list[dict[str, Any]]:
        pods = cluster.client.get(f"/api/v1/namespaces/{NS}/pods",
                                  params={"labelSelector": "checkpointing.turbok.dev/configuration=training"}).json()["items"]
        up = [p for p in pods if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")]
        return up if len(up) == 2 else []

    pods = cluster.wait("two agent pods running on the matching nodes", running, timeout=90)
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-1", "gpu-2"]  # never on cpu-1

    # The agents' own service account, through a TokenRequest: their RBAC must be enough.
    r = cluster.client.post(f"/api/v1/namespaces/{NS}/serviceaccounts/checkpoint-agent-training/token",
                            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    assert r.status_code == 201, r.text
    sa_kubeconfig = cluster.write_kubeconfig(tmp_path / "agent.kubeconfig", r.json()["status"]["token"])
    procs = []
    try:
        for pod in pods:
            ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "turbok", "checkpoint", "agent", "--from-cluster", "training",
                 "--kubeconfig", str(sa_kubeconfig), "--discover", "training", "--discover-namespace", NS,
                 "--listen", f"{ip}:{port}", "--pod-name", name, "--node-name", pod["spec"]["nodeName"],
                 "--memory-dir", f"/dev/shm/turbok-op-{port}-{name}", "--disk-dir", str(tmp_path / name)],
                stdout=log, stderr=subprocess.STDOUT))
        addresses = [f"{p['status']['podIP']}:{port}" for p in pods]

        def peers_found() -> bool:
            from turbok.checkpoint.wire import Client

            for a, other in ((addresses[0], addresses[1]), (addresses[1], addresses[0])):
                try:
                    c = Client(a, timeout=2)
                    ok = other in c.call("describe")["peers"]
                    c.close()
                except Exception:
                    return False
                if not ok:
                    return False
            return True

        cluster.wait("the agents to find each other through the API", peers_found, timeout=60,
                     every=0.5) if all(p.poll() is None for p in procs) else pytest.fail((tmp_path / f"{pods[0]['metadata']['name']}.log").read_text())
        with CheckpointManager("op", agent=addresses[0]) as m:
            m.save(1, {"w": np.arange(1 << 16, dtype=np.float32)}).result()
            assert m.wait(1, "peers", timeout=60) == "done"  # replicated to the peer it discovered
        from turbok.checkpoint.wire import Client

        c = Client(addresses[1])
        parts = c.call("list", job="op")["parts"]
        c.close()
        assert [(p["step"], p["committed"]) for p in parts] == [(1, True)]

        def ready() -> dict[str, Any] | None:
            reconciler.reconcile_all()
            status = cluster.client.get(f"{GROUP_PATH}/training").json().get("status") or {}
            ok = any(cnd["type"] == "Ready" and cnd["status"] == "True" for cnd in status.get("conditions") or [])
            published = all("memory" in n for n in status.get("nodes") or [])
            return status if ok and published and len(status.get("nodes") or []) == 2 else None

        status = cluster.wait("Ready with every node's tiers in the status", ready, timeout=60, every=1.0)
        assert isinstance(status, dict) and status["readyAgents"] == 2
        node = status["nodes"][0]
        assert node["memory"]["capacity"] == 256 << 20 and node["memory"]["jobQuota"] == 128 << 20
        assert node["disk"]["quota"] == 1 << 30 and node["address"] in addresses
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        import shutil

        for pod in pods:
            shutil.rmtree(f"/dev/shm/turbok-op-{port}-{pod['metadata']['name']}", ignore_errors=True)
        rest.close()


def test_a_configuration_matching_no_node_is_not_ready(cluster: KubeCluster, tmp_path: Path) -> None:
    cfg = _config("nowhere", tmp_path, _free_port())
    cfg["spec"]["nodeSelector"] = {"pool": "none"}
    assert cluster.client.post(GROUP_PATH, json=cfg).status_code == 201
    with RestClient(load_kubeconfig(cluster.kubeconfig)) as rest:
        intents = Reconciler(rest, namespace=NS).reconcile_all()
    assert not intents["nowhere"].done

    def status() -> dict[str, Any] | None:
        got = cluster.client.get(f"{GROUP_PATH}/nowhere").json().get("status")
        return got if got and got.get("conditions") else None

    got = cluster.wait("a status", status, timeout=60)
    assert isinstance(got, dict)
    cond = got["conditions"][0]
    assert cond["status"] == "False" and cond["reason"] in ("NoNodes", "AgentsNotReady")
    assert json.dumps(got)  # a plain JSON status
