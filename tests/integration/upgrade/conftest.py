"""A double of a kubeadm cluster at 1.31.4, served by the shared Kubernetes API double on 127.0.0.1.

``kubeadm_131_double`` is not a cluster: it replays what a real one reports
(``/version``, nodes, control-plane pods, ``/metrics``, objects with
last-applied annotations and managedFields, a Helm release secret) so that
``turbok upgrade`` can read it over real HTTP with a bearer token. Each object
is there for one behaviour the tests check; the comments say which.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.doubles import KubeApiDouble

TOKEN = "upgrade-test-token"

METRICS = """# HELP apiserver_request_total [STABLE] Counter of apiserver requests.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",verb="GET"} 42
# HELP kubernetes_feature_enabled [BETA] This metric records the data about the stage and enablement of a k8s feature.
# TYPE kubernetes_feature_enabled gauge
kubernetes_feature_enabled{name="AllAlpha",stage="ALPHA"} 0
kubernetes_feature_enabled{name="InPlacePodVerticalScaling",stage="ALPHA"} 1
kubernetes_feature_enabled{name="AllowServiceLBStatusOnNonLB",stage="DEPRECATED"} 1
kubernetes_feature_enabled{name="ConsistentListFromCache",stage="BETA"} 1
kubernetes_feature_enabled{name="AnyVolumeDataSource",stage=""} 1
"""


def _applied(obj: dict[str, Any]) -> dict[str, str]:
    return {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(obj)}


def _helm_secret(name: str, version: int, status: str, manifest: str) -> dict[str, Any]:
    release = {"name": name, "namespace": "shop", "version": version, "manifest": manifest}
    inner = base64.b64encode(gzip.compress(json.dumps(release).encode())).decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
            "metadata": {"name": f"sh.helm.release.v1.{name}.v{version}", "namespace": "shop",
                         "labels": {"owner": "helm", "name": name, "status": status, "version": str(version)}},
            "data": {"release": base64.b64encode(inner.encode()).decode()}}


def _control_plane_pod(component: str, version: str, *args: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{component}-cp1", "namespace": "kube-system",
                         "labels": {"component": component, "tier": "control-plane"}},
            "spec": {"containers": [{"name": component, "image": f"registry.k8s.io/{component}:{version}",
                                     "command": [component, *args]}]}}


def _node(name: str, kubelet: str, proxy: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"nodeInfo": {"kubeletVersion": kubelet, "kubeProxyVersion": proxy}}}


def kubeadm_131_fixture() -> dict[str, Any]:
    deployment_written_long_ago = {"apiVersion": "apps/v1beta2", "kind": "Deployment",
                                   "metadata": {"name": "web", "namespace": "shop"}}
    return {
        "version": {"major": "1", "minor": "31", "gitVersion": "v1.31.4", "platform": "linux/amd64"},
        "resources": [
            {"apiVersion": "v1", "kind": "Node", "name": "nodes", "namespaced": False},
            {"apiVersion": "v1", "kind": "Pod", "name": "pods", "namespaced": True},
            {"apiVersion": "v1", "kind": "Secret", "name": "secrets", "namespaced": True},
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "deployments", "namespaced": True},
            {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "ingresses", "namespaced": True},
            {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "name": "flowschemas",
             "namespaced": False},
            {"apiVersion": "batch/v1", "kind": "CronJob", "name": "cronjobs", "namespaced": True},
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "name": "poddisruptionbudgets",
             "namespaced": True},
        ],
        "objects": [
            _node("n1", "v1.31.4", "v1.31.4"),
            _node("n2", "v1.29.10", "v1.29.10"),  # fine at 1.31, too old for a 1.33 control plane
            _node("n3", "v1.30.1", ""),  # kube-proxy version unreported (DisableNodeKubeProxyVersion)
            _control_plane_pod("kube-apiserver", "v1.31.4", "--advertise-address=10.0.0.1"),
            _control_plane_pod("kube-controller-manager", "v1.31.4"),
            _control_plane_pod("kube-scheduler", "v1.30.2"),  # one minor behind: allowed
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "coredns-1", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
             "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3"}]}},
            # last-applied says apps/v1beta2: the next `kubectl apply` of that manifest fails
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "web", "namespace": "shop", "uid": "u-web",
                          "annotations": _applied(deployment_written_long_ago)}},
            # an old writer's managedFields entry for a version this cluster no longer serves: history only
            {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
             "metadata": {"name": "web", "namespace": "shop", "uid": "u-ing",
                          "annotations": _applied({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                                   "metadata": {"name": "web", "namespace": "shop"}}),
                          "managedFields": [{"manager": "old-ingress-controller", "operation": "Update",
                                             "apiVersion": "networking.k8s.io/v1beta1"}]}},
            # a client still writing flowcontrol v1beta3, served (deprecated) at 1.31, removed in 1.32
            {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
             "metadata": {"name": "batch-jobs", "uid": "u-fs",
                          "managedFields": [{"manager": "flow-operator", "operation": "Apply",
                                             "apiVersion": "flowcontrol.apiserver.k8s.io/v1beta3"}]}},
            {"apiVersion": "batch/v1", "kind": "CronJob",
             "metadata": {"name": "nightly", "namespace": "shop", "uid": "u-cron",
                          "annotations": _applied({"apiVersion": "batch/v1", "kind": "CronJob",
                                                   "metadata": {"name": "nightly"}})}},
            # a broken annotation becomes a note, not a crash
            {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
             "metadata": {"name": "web", "namespace": "shop", "uid": "u-pdb",
                          "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{not json"}}},
            _helm_secret("shop", 3, "deployed",
                         "---\n# Source: shop/templates/psp.yaml\napiVersion: policy/v1beta1\nkind: PodSecurityPolicy\n"
                         "metadata:\n  name: shop-restricted\n---\n# Source: shop/templates/svc.yaml\n"
                         "apiVersion: v1\nkind: Service\nmetadata:\n  name: shop\n"),
            # a superseded revision is not what runs: never reported
            _helm_secret("shop", 2, "superseded",
                         "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata:\n  name: old\n"),
        ],
    }


async def _metrics(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return web.Response(status=401)
    return web.Response(text=METRICS, content_type="text/plain")


@pytest.fixture
def kubeadm_131_double(tmp_path: Path) -> Iterator[tuple[KubeApiDouble, Path]]:
    """The double, running, and a kubeconfig with the right token."""
    api = KubeApiDouble(kubeadm_131_fixture(), token=TOKEN, routes=[("GET", "/metrics", _metrics)])
    with api.running():
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(scope="session")
def kube_assets() -> Path:
    """../shared/kube's binaries unpacked, every release the rehearsal steps through (``unpack.sh``'s layout:
    ``DIR/<version>/kube-apiserver``...); skipped, naming them, where they are absent."""
    from tests.kube_cluster import CACHE, missing

    for version in ("1.35.4", "1.36.3", "1.37.2"):
        reason = missing("kube-controller-manager", "kube-scheduler", version=version)
        if reason:
            pytest.skip(reason)
    return CACHE
