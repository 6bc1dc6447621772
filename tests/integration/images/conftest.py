"""Fixtures for pulling images: registries on loopback (anonymous, basic, bearer token) and a fresh store.

The registries are Debian's ``docker-registry`` (tests/oci_registry.py), one per module and
auth mode, each with its own storage; the images are built and pushed by the tests. The
store is a fresh ``OciStore`` per test whose mounts are undone at the end. Needs root
(mounts, whiteout devices, ``trusted.*`` xattrs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import oci_registry
from turbok.runtime import mounts
from turbok.runtime.images import ImageStore
from turbok.runtime.imagestore import OciStore

pytestmark = pytest.mark.integration


def _need() -> None:
    if (why := oci_registry.missing()) is not None:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("unpacking image layers needs root (owners, whiteout devices, trusted.* xattrs, mounts)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_registry.Registry]:
    _need()
    with oci_registry.registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_registry.Registry]:
    _need()
    with oci_registry.registry(tmp_path_factory.mktemp("registry-basic"), auth="basic") as reg:
        yield reg


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[oci_registry.Registry]:
    _need()
    with oci_registry.registry(tmp_path_factory.mktemp("registry-token"), auth="token") as reg:
        yield reg


def unmount_all(store: OciStore) -> None:
    if store.images_dir.is_dir():
        for entry in store.images_dir.iterdir():
            rootfs = entry / "rootfs"
            if rootfs.is_dir() and mounts.is_mount_root(rootfs):
                mounts.unmount(rootfs, lazy=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OciStore]:
    _need()
    s = OciStore(tmp_path / "store")
    yield s
    unmount_all(s)


@pytest.fixture
def images(tmp_path: Path, store: OciStore) -> ImageStore:
    """An ImageStore with an empty table directory (no built-ins built) over ``store``."""
    (tmp_path / "table").mkdir()
    return ImageStore(tmp_path / "table", store=store)
