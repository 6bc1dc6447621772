"""dra_support and gpu_sharing for real: against turbok's embedded control plane with simulated GPUs.

``turbok serve --simulated-gpus 2`` publishes two simulated GPUs through turbok's ``gpu.nvidia.com`` DRA
driver (whole GPUs, partitions consuming shared counters, time-sliced shares); the conformance checker must
find the DRA APIs served and usable, a complete pool and a DeviceClass selecting the driver, and
partitionable devices as a GPU sharing mechanism.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def kubelet_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short plugin directory of this control plane's own (a Unix socket path has 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kubelet", dir="/tmp"))
    monkeypatch.setenv("TURBOK_KUBELET_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_dra_support_and_gpu_sharing_pass_on_simulated_gpus(make_control_plane: Callable[..., Any],
                                                           kubelet_dir: Path, tmp_path: Path) -> None:
    cp = make_control_plane(args=("--simulated-gpus", "2"))
    assert (kubelet_dir / "plugins_registry" / "gpu.nvidia.com-reg.sock").exists()
    done = subprocess.run(
        [sys.executable, "-m", "turbok", "conformance", "run", "--kubeconfig", str(cp.kubeconfig),
         "--focus", "dra_support|gpu_sharing", "--version", "1.35", "--output-dir", str(tmp_path / "out"),
         "--timeout", "120", "-o", "json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    results = {r["id"]: r for r in report["results"] if r["selected"]}
    assert results["dra_support"]["status"] == "Passed", results["dra_support"]["reason"]
    assert "gpu.nvidia.com" in results["dra_support"]["reason"]
    assert results["gpu_sharing"]["status"] == "Passed", results["gpu_sharing"]["reason"]
    assert "partitionable" in results["gpu_sharing"]["reason"]
