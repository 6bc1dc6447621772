"""Fixtures of the conformance unit tests: the conformant and non-conformant cluster doubles on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.conformance.support import Cluster, serve_double


@pytest.fixture
def conformant_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """DOUBLE of a conformant AI cluster (Kubernetes 1.35, NVIDIA GPUs) on loopback."""
    yield from serve_double("conformant-cluster-double", True, tmp_path)


@pytest.fixture
def nonconformant_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """DOUBLE of a non-conformant AI cluster on loopback."""
    yield from serve_double("nonconformant-cluster-double", False, tmp_path)
