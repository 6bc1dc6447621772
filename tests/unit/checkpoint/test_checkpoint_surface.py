"""The public surface is what was meant, and the part keeps its import rule."""

from __future__ import annotations

import subprocess
import sys

import turbok.checkpoint


def test_public_surface() -> None:
    assert sorted(turbok.checkpoint.__all__) == sorted([
        "AgentUnavailableError", "CapacityError", "CheckpointError", "CheckpointManager", "ConfigError",
        "IntegrityError", "JobNotFoundError", "Manifest", "ManifestError", "NotFoundError", "PartKey",
        "Restored", "SaveResult", "Shard", "StagingBusyError", "StepNotFoundError", "TierUnavailableError",
        "UnsupportedStateError",
    ])
    for name in turbok.checkpoint.__all__:
        assert getattr(turbok.checkpoint, name) is not None


def test_checkpoint_never_imports_the_sandbox_parts_or_torch_eagerly() -> None:
    code = (
        "import sys, turbok.checkpoint, turbok.checkpoint.agent, turbok.checkpoint.inventory, turbok.cli.checkpoint\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in (['turbok', s] for s in "
        "('controllers', 'runtime', 'sandboxd', 'sdk', 'apiserver', 'store'))]\n"
        "assert not bad, bad\nassert 'torch' not in sys.modules and 'jax' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
