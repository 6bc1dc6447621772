"""The embedded node over the in-process registry with the real gVisor pod runtime (runsc).

``real_node`` starts a ``turbok.node.Node`` (real clock, the scheduler on) on a
fresh registry and a ``GvisorPodRuntime`` rooted in a temporary directory, without
the pod network (pods get a private loopback: the network has its own tests), and
removes every pod sandbox it made at the end. Images come from ``$TURBOK_IMAGES``
(built by scripts/setup.sh).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.runtime.conftest import images_dir
from tests.integration.runtime.podnet import Networks, require_root_network
from tests.unit.node.conftest import NodeHarness
from turbok.api.kinds import default_registry
from turbok.node.clock import MonotonicClock
from turbok.node.node import NodeSettings
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def _gvisor_node(tmp_path: Path, network: Any = None) -> AsyncIterator[NodeHarness]:
    if shutil.which("runsc") is None:
        pytest.skip("runsc (gVisor) is not installed")
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    images = ImageStore(images_dir())
    if not (images.builtin_dir(BASE_IMAGE) / "rootfs").is_dir():
        pytest.skip(f"the base image is not built in {images_dir()} (scripts/setup.sh builds it)")
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    runtime = GvisorPodRuntime(tmp_path / "pods", images, network=network)
    h = NodeHarness(tmp_path, registry, runtime, MonotonicClock())  # type: ignore[arg-type]
    await h.start(settings=NodeSettings(relist_seconds=0.2))
    try:
        yield h
    finally:
        await h.stop()
        await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                             return_exceptions=True)
        registry.db.close()


@pytest.fixture
async def real_node(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    async with _gvisor_node(tmp_path) as h:
        yield h


@pytest.fixture
async def networked(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    """A real node whose pods are on a pod network of their own (a unique range and bridge)."""
    require_root_network()
    networks = Networks(tmp_path / "net")
    network = networks.make()
    try:
        await asyncio.to_thread(network.ensure_host)
        async with _gvisor_node(tmp_path, network) as h:
            yield h
    finally:
        networks.cleanup()
