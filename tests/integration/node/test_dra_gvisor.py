"""DRA under gVisor: Pods with claims for simulated GPUs see exactly their devices, a shared claim the same
ones, a claim beyond the capacity stays Pending; and the NVIDIA path, on a machine with a GPU."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.node.test_node_gvisor import _c, _log
from tests.integration.runtime.conftest import images_dir
from tests.unit.node.conftest import NodeHarness, condition, pod
from tests.unit.node.dra.conftest import dra_settings
from turbok.api.kinds import default_registry
from turbok.node.clock import MonotonicClock
from turbok.node.dra.nvidia import probe_gpus
from turbok.node.node import NodeSettings
from turbok.runtime.images import BASE_IMAGE, ImageStore
from turbok.runtime.pods import release_root
from turbok.store.registry import ObjectRegistry
from turbok.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration
RES = "resource.k8s.io/v1"


def _release(root: Path) -> None:
    """The runtime's nosuid bind of its root, undone (it may be stacked: each start of a runtime binds it)."""
    for _ in range(4):
        if not release_root(root):
            return


@pytest.fixture
async def gpu_node(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    """The real node and gVisor runtime (as ``real_node``), with DRA and two simulated GPUs."""
    if shutil.which("runsc") is None:
        pytest.skip("runsc (gVisor) is not installed")
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    images = ImageStore(images_dir())
    if not (images.builtin_dir(BASE_IMAGE) / "rootfs").is_dir():
        pytest.skip(f"the base image is not built in {images_dir()} (scripts/setup.sh builds it)")
    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    runtime = GvisorPodRuntime(tmp_path / "pods", images)
    sockets = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))
    h = NodeHarness(tmp_path, registry, runtime, MonotonicClock())  # type: ignore[arg-type]
    await h.start(settings=NodeSettings(relist_seconds=0.2), dra=dra_settings(sockets, gpus=2))
    try:
        yield h
    finally:
        await h.stop()
        await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                             return_exceptions=True)
        registry.db.close()
        shutil.rmtree(sockets, ignore_errors=True)
        _release(tmp_path / "pods")


def _claimed(name: str, source: dict[str, str]) -> dict[str, object]:
    return pod(name, node=None, resourceClaims=[{"name": "gpu", **source}], containers=[
        _c("main", "echo visible=$TURBOK_VISIBLE_DEVICES; sleep 600", resources={"claims": [{"name": "gpu"}]})])


async def test_pods_under_gvisor_see_exactly_their_simulated_gpus(gpu_node: NodeHarness) -> None:
    h = gpu_node
    h.create({"apiVersion": RES, "kind": "ResourceClaim", "metadata": {"name": "shared", "namespace": "default"},
              "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}})
    h.create({"apiVersion": RES, "kind": "ResourceClaimTemplate", "metadata": {"name": "one", "namespace": "default"},
              "spec": {"spec": {"devices": {"requests": [
                  {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}}})
    h.create(_claimed("first", {"resourceClaimName": "shared"}))
    h.create(_claimed("second", {"resourceClaimName": "shared"}))
    h.create(_claimed("own", {"resourceClaimTemplateName": "one"}))
    for name in ("first", "second", "own"):
        await h.wait_ready(name, timeout=60)
    for name, expected in (("first", "gpu-0"), ("second", "gpu-0"), ("own", "gpu-1")):
        await h.wait(lambda name=name: "visible=" in _log(h, name, "main"), timeout=10)  # type: ignore[misc]
        assert f"visible={expected}\n" in _log(h, name, "main").split(" ", 3)[-1] + "\n"
    h.create(_claimed("third", {"resourceClaimTemplateName": "one"}))
    got = await h.wait_pod("third", lambda p: condition(p, "PodScheduled") == "False", "third unschedulable")
    assert "cannot allocate all claims" in str(got["status"]["conditions"])


@pytest.fixture
async def nvidia_node(tmp_path: Path) -> AsyncIterator[NodeHarness]:
    """The real node with DRA publishing this machine's NVIDIA GPUs (no simulated ones)."""
    if shutil.which("runsc") is None:
        pytest.skip("runsc (gVisor) is not installed")
    from turbok.runtime.pods_gvisor import GvisorPodRuntime

    registry = ObjectRegistry(SqliteStore(tmp_path / "store.db"), default_registry())
    registry.ensure_namespace("default")
    runtime = GvisorPodRuntime(tmp_path / "pods", ImageStore(images_dir()))
    sockets = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))
    settings = dra_settings(sockets, gpus=0)
    h = NodeHarness(tmp_path, registry, runtime, MonotonicClock())  # type: ignore[arg-type]
    await h.start(settings=NodeSettings(relist_seconds=0.2), dra=dataclasses.replace(settings, nvidia=True))
    try:
        yield h
    finally:
        await h.stop()
        await asyncio.gather(*(runtime.remove_pod_sandbox(i) for i in await runtime.list_pod_sandboxes()),
                             return_exceptions=True)
        registry.db.close()
        shutil.rmtree(sockets, ignore_errors=True)
        _release(tmp_path / "pods")


def _runsc_nvproxy() -> str | None:
    """Why this machine's runsc cannot pass a GPU through (None when it can)."""
    runsc = shutil.which("runsc")
    if runsc is None:
        return "runsc (gVisor) is not installed"
    flags = subprocess.run([runsc, "flags"], capture_output=True, text=True, check=False).stdout
    if "nvproxy" not in flags:
        version = subprocess.run([runsc, "--version"], capture_output=True, text=True, check=False).stdout
        return f"this runsc has no --nvproxy ({version.splitlines()[0] if version else 'unknown version'})"
    return None


@pytest.mark.skipif(not probe_gpus(), reason="no NVIDIA GPU on this machine (nvidia-smi finds none): the nvproxy "
                                             "path is covered only by unit tests on nvidia-smi-shaped output")
async def test_nvidia_smi_and_a_cuda_matmul_under_nvproxy(nvidia_node: NodeHarness) -> None:
    """nvidia-smi and a CUDA matmul (tests/integration/node/cuda_matmul.py) in a gVisor sandbox given the GPU
    through turbok's driver. The result is printed, and appended to $TURBOK_GPU_RECORD when set (docs/dra.md)."""
    if (why := _runsc_nvproxy()) is not None:
        pytest.skip(why)
    gpus = probe_gpus()
    h = nvidia_node
    h.create({"apiVersion": RES, "kind": "ResourceClaimTemplate", "metadata": {"name": "gpu", "namespace": "default"},
              "spec": {"spec": {"devices": {"requests": [
                  {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}}})
    matmul = (Path(__file__).parent / "cuda_matmul.py").read_text()
    script = f"nvidia-smi -L && python3 -c {shlex.quote(matmul)}"
    h.create(pod("gpu", node=None, restartPolicy="Never", resourceClaims=[{"name": "gpu",
                                                                           "resourceClaimTemplateName": "gpu"}],
                 containers=[_c("main", script, resources={"claims": [{"name": "gpu"}]})]))
    done = await h.wait_pod("gpu", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), timeout=300)
    out = _log(h, "gpu", "main")
    print(out)
    if record := os.environ.get("TURBOK_GPU_RECORD"):
        with open(record, "a") as f:
            f.write(f"{out}\nphase: {done['status']['phase']}\n")
    assert done["status"]["phase"] == "Succeeded", out
    assert gpus[0].uuid in out
    assert "matmul N=64 max_error=" in out
