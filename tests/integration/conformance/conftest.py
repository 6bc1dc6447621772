"""Integration tests of the conformance checker: real processes and servers on loopback.

``control_plane`` (turbok's embedded control plane, ``turbok serve`` on loopback)
comes from tests/conftest.py; the cluster doubles from tests/doubles.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def real_apiserver() -> Iterator[tuple[Path, object]]:
    """A real kube-apiserver 1.37.2 with etcd and kube-controller-manager (namespaces really go away).

    The binaries come from ../shared/kube (unpacked as tests/integration/upgrade/kube_assets.py does;
    skipped, naming them, where they are absent). Yields its admin kubeconfig and the ScratchControlPlane.
    """
    from tests.integration.upgrade.kube_assets import kube_assets_dir
    from turbok.upgrade.assets import find_assets
    from turbok.upgrade.scratch import ScratchControlPlane
    from turbok.upgrade.versions import Version

    assets = find_assets([kube_assets_dir()])
    binaries = assets.get(Version(1, 37))
    assert assets.etcd is not None and binaries.controller_manager is not None
    with ScratchControlPlane(assets.etcd) as cp:
        cp.start_etcd()
        cp.start_apiserver(binaries.apiserver)
        cp.start_controller_manager(binaries.controller_manager)
        yield cp.kubeconfig, cp
