"""Integration tests of the conformance checker: real processes and servers on loopback.

``control_plane`` (turbok's embedded control plane, ``turbok serve`` on loopback)
comes from tests/conftest.py; the cluster doubles from tests/doubles.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube_cluster import RELEASE, KubeCluster, kube_cluster, missing


@pytest.fixture(scope="module")
def real_apiserver() -> Iterator[tuple[Path, KubeCluster]]:
    """A real kube-apiserver 1.37.2 with etcd and kube-controller-manager (namespaces really go away).

    From tests/kube_cluster.py (skipped, naming what is missing, without the binaries). Yields its admin
    kubeconfig and the cluster.
    """
    reason = missing("kube-controller-manager", version=RELEASE)
    if reason:
        pytest.skip(reason)
    with kube_cluster(scheduler=False, kwok=False, version=RELEASE) as cluster:
        yield cluster.kubeconfig, cluster
