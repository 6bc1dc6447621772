"""kubectl against core/v1 on ``turbok serve``: typed creates (protobuf), get, describe, explain, graceful delete.

Each test runs with every kubectl found: the one on PATH, the current one
(kube assets' ``bin/kubectl``, 1.37) and Debian's 1.20
(``TURBOK_LEGACY_KUBECTL``, or the repository's .cache/kubernetes-client);
the ones absent are skipped, naming the path looked at. Pods here are bound
to a node name no node has, so they stay Pending whatever node runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.compat.kubectl import KUBECTL, Kubectl, client_minor, make_kubectl
from tests.conftest import ControlPlaneProcess
from tests.kube_cluster import CACHE

REPO = Path(__file__).resolve().parents[2]
NOWHERE = "compat-nowhere"
_CANDIDATES = {
    "path": KUBECTL,
    "current": str(CACHE / "bin" / "kubectl"),
    "debian-1.20": os.environ.get("TURBOK_LEGACY_KUBECTL") or str(REPO / ".cache" / "kubernetes-client" / "usr" /
                                                                   "bin" / "kubectl"),
}

pytestmark = [pytest.mark.compat]


def _binaries() -> list[object]:
    out: list[object] = []
    for name, path in _CANDIDATES.items():
        present = path is not None and Path(path).exists()
        out.append(pytest.param(path, id=name, marks=pytest.mark.skipif(
            not present, reason=f"no kubectl at {path or 'PATH'}")))
    return out


@pytest.fixture(params=_binaries())
def kube(request: pytest.FixtureRequest, control_plane: ControlPlaneProcess,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kubectl, int, str]]:
    """A kubectl (and its minor version) with a fresh namespace, deleted afterwards."""
    binary = request.param
    run = make_kubectl(control_plane, tmp_path_factory.mktemp("kube-cache"), binary)
    test = request.node.name.split("[")[0].removeprefix("test_")[:24].replace("_", "-").strip("-")
    ns = f"core-{request.node.callspec.id.replace('.', '-')}-{test}"
    run("create", "namespace", ns)
    yield run, client_minor(binary), ns
    # Pods bound to a node that does not exist would hold the namespace Terminating: no node deletes them.
    run("delete", "pods", "--all", "-n", ns, "--grace-period=0", "--force", ok=False)
    run("delete", "namespace", ns, "--wait=false", ok=False)


def _pod(name: str, **spec: object) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                           "spec": {"nodeName": NOWHERE, "containers": [{"name": "c", "image": "busybox"}], **spec}})


def test_typed_creates_are_protobuf_bodies_turbok_decodes(kube: tuple[Kubectl, int, str]) -> None:
    run, _, ns = kube
    run("create", "secret", "generic", "s", "--from-literal=a=b", "-n", ns)
    run("create", "configmap", "c", "--from-literal=x=1", "-n", ns)
    run("create", "serviceaccount", "bot", "-n", ns)
    run("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns)
    run("create", "service", "nodeport", "np", "--tcp=443:8443", "-n", ns)
    run("create", "quota", "q", "--hard=pods=10", "-n", ns)
    secret = json.loads(run("get", "secret", "s", "-n", ns, "-o", "json").stdout)
    assert secret["data"] == {"a": "Yg=="} and secret["type"] == "Opaque"
    assert json.loads(run("get", "cm", "c", "-n", ns, "-o", "json").stdout)["data"] == {"x": "1"}
    web = json.loads(run("get", "svc", "web", "-n", ns, "-o", "json").stdout)["spec"]
    assert web["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    assert web["clusterIP"].startswith("127.96.") and web["type"] == "ClusterIP"
    node_port = json.loads(run("get", "svc", "np", "-n", ns, "-o", "json").stdout)["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767


def test_get_every_core_kind_with_kubes_columns(kube: tuple[Kubectl, int, str]) -> None:
    run, minor, ns = kube
    run("create", "secret", "generic", "s", "--from-literal=a=b", "-n", ns)
    run("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns)
    run("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
    kinds = "svc,pvc,secrets,configmaps,serviceaccounts,nodes,events" + (",endpointslices" if minor >= 21 else "")
    out = run("get", kinds, "-n", ns).stdout
    headers = [line.split() for line in out.splitlines() if line.startswith("NAME")]
    assert ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"] in headers
    assert ["NAME", "TYPE", "DATA", "AGE"] in headers
    assert ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS", "MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS",
            "AGE"] in headers
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and not line.startswith("NAME")}
    assert rows["service/web"][:1] == ["ClusterIP"] and rows["service/web"][3] == "80/TCP"
    assert rows["secret/s"][:2] == ["Opaque", "1"]
    assert rows["persistentvolumeclaim/data"][0] in ("Pending", "Bound")  # a node's provisioner may bind it


def test_get_pods_wide_and_describe(kube: tuple[Kubectl, int, str]) -> None:
    run, _, ns = kube
    run("apply", "-n", ns, "-f", "-", stdin=_pod("p", initContainers=[{"name": "i", "image": "busybox"}]))
    lines = run("get", "pods", "-n", ns, "-o", "wide").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
                                "READINESS", "GATES"]
    row = lines[1].split()
    assert row[:4] == ["p", "0/1", "Pending", "0"] and row[5:] == ["<none>", NOWHERE, "<none>", "<none>"]
    described = run("describe", "pod", "p", "-n", ns).stdout
    assert f"Node:             {NOWHERE}" in described or f"Node:         {NOWHERE}" in described
    assert "Init Containers:" in described and "Status:" in described
    run("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns)
    assert "Type:" in run("describe", "svc", "web", "-n", ns).stdout


def test_graceful_delete_then_force(kube: tuple[Kubectl, int, str]) -> None:
    run, _, ns = kube
    run("apply", "-n", ns, "-f", "-", stdin=_pod("p", terminationGracePeriodSeconds=120))
    run("delete", "pod", "p", "-n", ns, "--wait=false")
    pod = json.loads(run("get", "pod", "p", "-n", ns, "-o", "json").stdout)
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 120
    assert "Terminating" in run("get", "pod", "p", "-n", ns).stdout
    run("delete", "pod", "p", "-n", ns, "--grace-period=0", "--force")
    assert run("get", "pod", "p", "-n", ns, ok=False).returncode != 0


def test_explain_pod_spec(kube: tuple[Kubectl, int, str]) -> None:
    run, minor, _ = kube
    out = run("explain", "pod.spec.containers").stdout
    assert "KIND:" in out and "Pod" in out and "image" in out
    if minor >= 27:  # OpenAPI v3 by default; v2 (protobuf) on request
        assert "image" in run("explain", "pod.spec.containers", "--output", "plaintext-openapiv2").stdout


def test_bad_pods_get_kubes_field_causes_and_nothing_is_stored(kube: tuple[Kubectl, int, str]) -> None:
    run, _, ns = kube
    done = run("apply", "-n", ns, "-f", "-", ok=False, stdin=_pod("Bad_Name"))
    assert done.returncode != 0 and "metadata.name: Invalid value" in done.stderr
    bad = yaml.safe_load(_pod("p"))
    bad["spec"]["containers"][0]["ports"] = [{"containerPort": 70000}]
    done = run("apply", "-n", ns, "-f", "-", ok=False, stdin=yaml.safe_dump(bad))
    assert "spec.containers[0].ports[0].containerPort: Invalid value: 70000" in done.stderr
    assert "No resources found" in run("get", "pods", "-n", ns).stderr
