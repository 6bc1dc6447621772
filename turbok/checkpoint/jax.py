"""JAX integration: pytrees of jax arrays saved through the manager as numpy arrays.

``save(manager, step, tree)`` flattens the pytree with ``jax.tree_util``,
pulls each array to host memory (``jax.device_get``: one device-to-host copy,
then one copy into the memory tier), and saves the leaves with their tree
paths as names. ``restore(manager, like=tree)`` rebuilds the same structure
and puts each leaf back on the device and sharding of the corresponding leaf
of ``like`` (``jax.device_put``), so a sharded model restores onto the same
mesh. Non-array leaves (ints, floats, strings) pass through as scalars.

Why not Orbax: orbax-checkpoint is on PyPI, but its handlers write directories
through TensorStore; putting turbok underneath would mean a TensorStore
driver, not a Python plugin. This path keeps turbok's own format and tiers;
an Orbax checkpoint directory restored with ``turbok checkpoint restore --to``
is not produced.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from turbok.checkpoint.manager import CheckpointManager, SaveResult

__all__ = ["restore", "save"]


def _leaves(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat], treedef


def save(manager: CheckpointManager, step: int, tree: Any) -> SaveResult:
    """Save a pytree of jax (or numpy) arrays and scalars."""
    leaves, _ = _leaves(tree)
    host = jax.device_get([leaf for _, leaf in leaves])
    state = {name: np.asarray(value) if isinstance(value, np.ndarray | np.generic) else value for (name, _), value in zip(leaves, host, strict=True)}
    return manager.save(step, state)


def restore(manager: CheckpointManager, like: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, tree) with the structure, devices and shardings of ``like``."""
    restored = manager.restore(step)
    leaves, treedef = _leaves(like)
    out = []
    for name, leaf in leaves:
        value = restored.state[name]
        if isinstance(leaf, jax.Array):
            value = jax.device_put(value, leaf.sharding)
        out.append(value)
    return restored.step, jax.tree_util.tree_unflatten(treedef, out)
