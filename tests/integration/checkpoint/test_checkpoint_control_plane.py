"""The agent takes its settings from a CheckpointConfiguration served by the embedded control plane.

Needs the ``control_plane`` fixture from tests/conftest.py (``turbok serve`` on a
temporary TURBOK_HOME, yielding ``kubeconfig``, ``api_url`` and ``token``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from turbok.checkpoint import CheckpointManager
from turbok.checkpoint.config import GROUP, PLURAL, Settings, fetch_configuration

from .conftest import free_port


def test_agent_reads_its_checkpoint_configuration_from_the_control_plane(control_plane: Any, tmp_path: Path) -> None:
    port = free_port()
    obj = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "CheckpointConfiguration",
        "metadata": {"name": "training"},
        "spec": {
            "storageURL": f"file://{tmp_path}/bucket",
            "inMemoryVolumeSize": "64Mi",
            "inMemoryPath": f"/dev/shm/turbok-cp-{port}",
            "localDiskPath": str(tmp_path / "disk"),
            "replicationFactor": 0,
            "backupEverySteps": 1,
            "retention": {"inMemory": 1, "localDisk": 2},
        },
    }
    headers = {"Authorization": f"Bearer {control_plane.token}"}
    url = f"{control_plane.api_url}/apis/{GROUP}/v1/{PLURAL}"
    created = httpx.post(url, json=obj, headers=headers, verify=False, timeout=10)
    assert created.status_code in (200, 201), created.text
    invalid = {**obj, "metadata": {"name": "invalid"}, "spec": {"replicationFactor": -1}}
    assert httpx.post(url, json=invalid, headers=headers, verify=False, timeout=10).status_code == 422

    s = Settings.from_dict(fetch_configuration("training", kubeconfig=control_plane.kubeconfig))
    assert s.memory_size == 64 << 20 and s.backup_every_steps == 1

    proc = subprocess.Popen(
        [sys.executable, "-m", "turbok", "checkpoint", "agent", "--from-cluster", "training",
         "--kubeconfig", str(control_plane.kubeconfig), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        with CheckpointManager("cp", agent=f"127.0.0.1:{port}") as m:
            m.save(1, {"w": np.arange(10)})
            assert m.wait(1, "object", timeout=60) == "done"
        assert (tmp_path / "disk" / "cp").is_dir() and (tmp_path / "bucket" / "cp").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(f"/dev/shm/turbok-cp-{port}", ignore_errors=True)
