"""Fixtures of the Kubernetes engine's tests: a real control plane per module (tests/kube_cluster.py).

``kube``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback, with
turbok's CRDs, the ``gvisor`` RuntimeClass, one kwok node and the ``turbok-system`` namespace.
``operator``: turbok's operator on a thread, as the admin. ``cluster``: the embedded test ``Cluster``'s
interface over them (tests/kube/engine.py), in a namespace of the test's own. Every test here is
skipped, naming what is missing, without the Kubernetes binaries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.kube.engine import KubeEngineCluster, OperatorThread
from tests.kube_cluster import KubeCluster, kube_cluster, missing
from turbok.kube.manifests import Install

pytestmark = pytest.mark.skipif(missing("kube-controller-manager", "kube-scheduler", "kwok") is not None,
                                reason=str(missing("kube-controller-manager", "kube-scheduler", "kwok")))


def prepare(kube: KubeCluster) -> None:
    """CRDs and RuntimeClass from deploy/'s generator, the operator's namespace, one kwok node, 8 PVs."""
    install = Install()
    kube.apply(*install.crds(), *install.runtime_classes(),
               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "turbok-system"}})
    kube.add_kwok_node()
    # volumeClaimTemplates' claims need volumes to bind to (no provisioner here): kube-controller-manager's
    # binder binds them, kube-scheduler then binds their Pods, kwok never mounts anything
    kube.apply(*({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"pv-{i}"},
                  "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                           "hostPath": {"path": f"/nonexistent/turbok-pv-{i}"}}} for i in range(8)))
    for crd in install.crds():
        name = crd["metadata"]["name"]
        kube.wait(f"CRD {name} established", lambda n=name: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in kube.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}")
            .json().get("status", {}).get("conditions", [])))


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeCluster]:
    reason = missing("kube-controller-manager", "kube-scheduler", "kwok")
    if reason:
        pytest.skip(reason)
    with kube_cluster(prepare=prepare) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def operator(kube: KubeCluster) -> Iterator[OperatorThread]:
    op = OperatorThread(kube.kubeconfig).start()
    yield op
    op.stop()


@pytest.fixture
def cluster(kube: KubeCluster, operator: OperatorThread, request: pytest.FixtureRequest) -> Iterator[KubeEngineCluster]:
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower().removeprefix("test_"))[:50].strip("-")
    r = kube.client.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": name}})
    assert r.status_code == 201, r.text
    kube.wait("the namespace's default ServiceAccount", lambda: kube.client.get(
        f"/api/v1/namespaces/{name}/serviceaccounts/default").status_code == 200)
    yield KubeEngineCluster(kube, name)
    kube.client.delete(f"/api/v1/namespaces/{name}")
