"""Errors of the checkpointing part; every one is a ``TurbokError``.

The tree::

    CheckpointError
    ├── ConfigError            bad settings or CheckpointConfiguration
    ├── ManifestError          a manifest that cannot be parsed or does not match its data
    ├── NotFoundError
    │   ├── JobNotFoundError   no tier knows the job
    │   └── StepNotFoundError  the step is absent or not complete for every rank
    ├── IntegrityError         every copy of a shard failed its hash check
    ├── CapacityError          the memory tier can never hold this save
    ├── StagingBusyError       the memory tier is full of steps still being drained
    ├── UnsupportedStateError  the state holds an object that cannot be checkpointed
    ├── StateChangedError      the state changed in place while a save was copying it
    ├── TierUnavailableError   a tier (object store, peer agent) could not be reached
    └── AgentUnavailableError  the local node agent could not be reached

Each carries the context that helps (tier, job, step, rank) in its message;
third-party errors are chained with ``raise ... from``.
"""

from __future__ import annotations

from turbok.errors import TurbokError

__all__ = [
    "AgentUnavailableError",
    "CapacityError",
    "CheckpointError",
    "ConfigError",
    "IntegrityError",
    "JobNotFoundError",
    "ManifestError",
    "NotFoundError",
    "StagingBusyError",
    "StateChangedError",
    "StepNotFoundError",
    "TierUnavailableError",
    "UnsupportedStateError",
    "error_from_wire",
]


class CheckpointError(TurbokError):
    """Something the checkpointing part could not do."""


class ConfigError(CheckpointError):
    """Settings or a CheckpointConfiguration that cannot be used."""


class ManifestError(CheckpointError):
    """A manifest that is malformed, or that does not describe its data."""


class NotFoundError(CheckpointError):
    """Something asked for is not stored anywhere reachable."""


class JobNotFoundError(NotFoundError):
    """No tier holds any step of the job."""


class StepNotFoundError(NotFoundError):
    """The step is not stored, or not complete for every rank."""


class IntegrityError(CheckpointError):
    """No copy of a shard matched the hash in its manifest."""


class CapacityError(CheckpointError):
    """A save is larger than the memory tier could ever hold; nothing was evicted."""


class StagingBusyError(CheckpointError):
    """The memory tier is full of steps the agent is still draining; try again or grow it."""


class UnsupportedStateError(CheckpointError):
    """The state holds an object the checkpoint format does not carry."""


class StateChangedError(CheckpointError):
    """A tensor being saved was modified in place before the save had copied it."""


class TierUnavailableError(CheckpointError):
    """A tier could not be reached (after retries)."""


class AgentUnavailableError(CheckpointError):
    """The node agent did not answer."""


_BY_NAME: dict[str, type[CheckpointError]] = {
    cls.__name__: cls
    for cls in (
        CheckpointError,
        ConfigError,
        ManifestError,
        NotFoundError,
        JobNotFoundError,
        StepNotFoundError,
        IntegrityError,
        CapacityError,
        StagingBusyError,
        UnsupportedStateError,
        StateChangedError,
        TierUnavailableError,
        AgentUnavailableError,
    )
}


def error_from_wire(name: str, message: str) -> CheckpointError:
    """Rebuild an error an agent sent back, keeping its class when it is one of ours."""
    return _BY_NAME.get(name, CheckpointError)(message)
