"""Fixtures of the kubectl compatibility tests: a kubectl bound to the session's control plane, a namespace per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compat.kubectl import KUBECTL, Kubectl, make_kubectl
from tests.conftest import ControlPlaneProcess


@pytest.fixture(scope="module")
def kubectl(control_plane: ControlPlaneProcess, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    assert KUBECTL is not None
    return make_kubectl(control_plane, tmp_path_factory.mktemp("kube-cache"), KUBECTL)


@pytest.fixture
def ns(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (with its contents) afterwards."""
    name = "compat-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", ok=False)
