"""Multi-tier checkpointing: memory, local disk, peer agents, object storage.

The training process uses ``CheckpointManager`` (manager.py); each machine
runs a node agent (agent.py, ``turbok checkpoint agent``). Tiers share one
interface (tiers/base.py) checked by ``testing.check_tier``. PyTorch users go
through DCP with ``turbok.checkpoint.torch``; JAX users through
``turbok.checkpoint.jax``. ``docs/checkpoint.md`` tells the whole story.

This package never imports the sandbox parts of turbok.
"""

from turbok.checkpoint.errors import (
    AgentUnavailableError,
    CapacityError,
    CheckpointError,
    ConfigError,
    IntegrityError,
    JobNotFoundError,
    ManifestError,
    NotFoundError,
    StagingBusyError,
    StepNotFoundError,
    TierUnavailableError,
    UnsupportedStateError,
)
from turbok.checkpoint.manager import CheckpointManager, Restored, SaveResult
from turbok.checkpoint.manifest import Manifest, PartKey, Shard

__all__ = [
    "AgentUnavailableError",
    "CapacityError",
    "CheckpointError",
    "CheckpointManager",
    "ConfigError",
    "IntegrityError",
    "JobNotFoundError",
    "Manifest",
    "ManifestError",
    "NotFoundError",
    "PartKey",
    "Restored",
    "SaveResult",
    "Shard",
    "StagingBusyError",
    "StepNotFoundError",
    "TierUnavailableError",
    "UnsupportedStateError",
]
