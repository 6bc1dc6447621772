"""JAX integration: sharded ``jax.Array`` pytrees saved shard by shard, restored into given shardings.

``save(manager, step, tree)`` keeps references to the arrays' shards and
returns: JAX arrays are immutable, so nothing is copied while training waits
(as Orbax does on CPU). The stager thread of the manager moves each shard to
the memory tier in the background (``np.asarray`` of a CPU shard is a view;
on an accelerator it is the device-to-host transfer). Each distinct shard of
an array is saved once, by the process owning the first device that holds it
(``devices_indices_map`` order, the same answer in every process), as the
shard ``a/<path>@<index>``; a JSON shard ``__jax__`` records every array's
shape, dtype and which process (rank) holds which index.

``restore(manager, like)`` rebuilds the tree of ``like`` (arrays, or
``jax.ShapeDtypeStruct`` with shardings): for every device of the target
sharding it fills one aligned host buffer straight from the memory tier's
mapping (one copy, all of them on a few threads and each checked in the same
pass; on CPU ``jax.device_put`` then uses that buffer as the device buffer)
and assembles the array with
``jax.make_array_from_single_device_arrays``. A target index saved by this
process comes from its own part; any other (a new mesh, another process
count) is assembled from the overlapping saved shards, reading only the rows
it needs from the other ranks' parts (``CheckpointManager.read``).

Multi-process JAX (``jax.distributed``): one manager per process with
``rank=jax.process_index()``, ``world_size=jax.process_count()``, each with
its node's agent; ``restore`` agrees on the step across processes
(``multihost_utils``). Used directly, or through orbax.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from turbok.checkpoint.copying import parallel_map
from turbok.checkpoint.errors import CheckpointError, IntegrityError, StepNotFoundError
from turbok.checkpoint.manager import CheckpointManager, OpenPart
from turbok.checkpoint.manifest import Shard
from turbok.checkpoint.packing import Deferred, _np_dtype
from turbok.checkpoint.saving import SaveFuture

__all__ = ["restore", "save"]

META = "__jax__"
_ALIGN = 64
_owners: dict[tuple[Any, tuple[int, ...]], dict[str, Any]] = {}


def _leaves(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat], treedef


def _box(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for i, dim in enumerate(shape):
        s = index[i] if i < len(index) else slice(None)
        start, stop, _ = s.indices(dim)
        out.append((start, stop))
    return tuple(out)


def _box_key(box: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{a}:{b}" for a, b in box)


def _parse_key(key: str) -> tuple[tuple[int, int], ...]:
    if not key:
        return ()
    return tuple((int(a), int(b)) for a, b in (part.split(":") for part in key.split(",")))


def _owner_map(arr: jax.Array) -> dict[str, Any]:
    """index key -> the device that saves it (the first holding it), cached per sharding and shape."""
    cache_key = (arr.sharding, tuple(arr.shape))
    owners = _owners.get(cache_key)
    if owners is None:
        owners = {}
        for device, index in arr.sharding.devices_indices_map(tuple(arr.shape)).items():
            owners.setdefault(_box_key(_box(index, tuple(arr.shape))), device)
        if len(_owners) > 4096:
            _owners.clear()
        _owners[cache_key] = owners
    return owners


def _fetcher(data: Any) -> Any:
    def fetch() -> np.ndarray:
        return np.asarray(data)  # blocks until computed; a view of a CPU buffer

    return fetch


def save(manager: CheckpointManager, step: int, tree: Any, *, metrics: dict[str, float] | None = None) -> SaveFuture:
    """Save a pytree of jax arrays (sharded or not), numpy arrays and scalars; returns at once."""
    leaves, _ = _leaves(tree)
    meta: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    rank = manager.rank
    for path, leaf in leaves:
        if isinstance(leaf, jax.Array):
            shape = tuple(int(d) for d in leaf.shape)
            dtype = np.dtype(leaf.dtype)
            owners = _owner_map(leaf)
            local = {s.device: s for s in leaf.addressable_shards}
            meta[path] = {"kind": "array", "shape": list(shape), "dtype": dtype.name,
                          "shards": {k: int(d.process_index) for k, d in owners.items()}}
            for key, device in owners.items():
                if device in local:
                    data = local[device].data
                    arrays[f"{path}@{key}"] = Deferred(tuple(int(d) for d in data.shape), dtype, _fetcher(data))
        elif isinstance(leaf, np.ndarray | np.generic):
            value = np.asarray(leaf)
            meta[path] = {"kind": "numpy", "shape": list(value.shape), "dtype": value.dtype.name, "rank": rank}
            arrays[f"{path}@"] = value
        elif leaf is None or isinstance(leaf, bool | int | float | str):
            meta[path] = {"kind": "value", "value": leaf}
        else:
            raise CheckpointError(f"{path}: cannot checkpoint a {type(leaf).__name__} (arrays and scalars only)")
    state = {META: json.dumps({"version": 1, "leaves": meta}).encode(), "a": arrays}
    return manager.save(step, state, metrics=metrics)


def _agree(manager: CheckpointManager, step: int | None) -> int:
    """The step every process restores: ``step``, or the newest complete one they can all verify
    (a step whose part is corrupt on every tier is quarantined and the next older one tried)."""
    if step is not None:
        return step

    def all_min(value: int) -> int:
        if jax.process_count() == 1:
            return value
        from jax.experimental import multihost_utils

        return int(np.min(multihost_utils.process_allgather(np.int64(value))))

    for _ in range(8):
        latest = manager.latest_step()
        chosen = all_min(-1 if latest is None else latest)
        if chosen < 0:
            raise StepNotFoundError(f"job {manager.job!r} has no step complete for every process")
        # 0 when quarantined: the next round's latest_step is older
        if all_min(int(manager.part_is_good(chosen))) == 1:
            return chosen
    raise IntegrityError(f"job {manager.job!r}: no step every process could verify")


class _Corrupt(Exception):
    pass


def restore(manager: CheckpointManager, like: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, tree) with the structure, shardings and devices of ``like``.

    The part is lent by the agent (``open_part(lend=True)``): every whole shard of this process's
    part becomes its array's memory in place, mapped copy-on-write, checked but not copied (JAX
    takes an aligned host buffer as a CPU device's buffer as it is); only a resharded piece is
    assembled into a new buffer."""
    chosen = _agree(manager, step)
    for repair in (False, True):
        try:
            with manager.open_part(chosen, repair=repair, lend=True) as part:
                return chosen, _rebuild(manager, part, like)
        except _Corrupt:
            if repair:
                break
    raise IntegrityError(f"job {manager.job!r} step {chosen}: the memory copy stays corrupt after a repair")


def _aligned(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + _ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start : start + n].view(dtype).reshape(shape)


@dataclass
class _Placed:
    """A sharded array being rebuilt: one host buffer per addressable device, put after the copy."""

    shape: tuple[int, ...]
    sharding: Any
    buffers: list[tuple[np.ndarray, Any]]


def _rebuild(manager: CheckpointManager, part: OpenPart, like: Any) -> Any:
    meta = json.loads(bytes(part.bytes_of(META)))["leaves"]
    leaves, treedef = _leaves(like)
    out: list[Any] = []
    whole: list[str] = []  # shards of this part used in place: checked at once
    for path, target in leaves:
        info = meta.get(path)
        if info is None:
            raise CheckpointError(f"{path}: not in the checkpoint (it holds {', '.join(sorted(meta)[:10])})")
        if info["kind"] == "value":
            out.append(info["value"])
            continue
        shape = tuple(int(d) for d in info["shape"])
        dtype = _np_dtype(Shard("", 0, 0, dtype=info["dtype"]))
        if info["kind"] == "numpy":
            name = f"a/{path}@"
            out.append(_lent(part, name, shape, dtype))
            whole.append(name)
            continue
        sharding = getattr(target, "sharding", None)
        if sharding is None:  # no sharding asked for: the whole array on the host
            buf = _aligned(shape, dtype)
            _assemble(manager, part, path, info, tuple((0, d) for d in shape), buf)
            out.append(buf)
            continue
        placed = _Placed(shape, sharding, [])
        for device, index in sharding.addressable_devices_indices_map(shape).items():
            box = _box(index, shape)
            key = _box_key(box)
            if info["shards"].get(key) == manager.rank and part.manifest.has(f"a/{path}@{key}"):
                buf = _lent(part, f"a/{path}@{key}", tuple(b - a for a, b in box), dtype)
                whole.append(f"a/{path}@{key}")
            else:
                buf = _aligned(tuple(b - a for a, b in box), dtype)
                _assemble(manager, part, path, info, box, buf)
            placed.buffers.append((buf, device))
        out.append(placed)
    _check_all(part, whole)
    return jax.tree_util.tree_unflatten(treedef, [
        jax.make_array_from_single_device_arrays(o.shape, o.sharding, [jax.device_put(b, d) for b, d in o.buffers])
        if isinstance(o, _Placed) else o for o in out])


def _lent(part: OpenPart, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """Shard ``name`` of the lent part as an array of ``shape``, in place (64-byte aligned in the part)."""
    src = part.bytes_of(name)
    if src.nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise CheckpointError(f"{name}: stored {src.nbytes} bytes, the target {shape} {dtype} needs another size")
    return src.view(dtype).reshape(shape)


def _check_all(part: OpenPart, names: list[str]) -> None:
    """Check the shards used in place (XXH3, on a few threads) unless the agent already did."""
    if part.verified or not names:
        return
    for name, ok in zip(names, parallel_map(lambda n: part.check(n, part.bytes_of(n)), names), strict=True):
        if not ok:
            raise _Corrupt(name)


def _assemble(manager: CheckpointManager, part: OpenPart, path: str, info: dict[str, Any],
              box: tuple[tuple[int, int], ...], buf: np.ndarray) -> None:
    """Fill ``buf`` (the target ``box`` of the array) from every saved shard overlapping it."""
    dtype = buf.dtype
    covered = 0
    for key, rank in info["shards"].items():
        stored = _parse_key(key)
        inter = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(box, stored, strict=True))
        if any(lo >= hi for lo, hi in inter):
            continue
        name = f"a/{path}@{key}"
        stored_shape = tuple(b - a for a, b in stored)
        dst = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inter, box, strict=True))
        if not stored:  # a scalar array
            rows = np.empty((), dtype=dtype)
            _read_rows(manager, part, int(rank), name, 0, dtype.itemsize, rows.reshape(-1).view(np.uint8), stored_shape)
            buf[...] = rows
            covered += 1
            continue
        r0, r1 = inter[0][0] - stored[0][0], inter[0][1] - stored[0][0]
        row = int(np.prod(stored_shape[1:], dtype=np.int64)) * dtype.itemsize
        rows = np.empty((r1 - r0, *stored_shape[1:]), dtype=dtype)
        _read_rows(manager, part, int(rank), name, r0 * row, r1 * row, rows.reshape(-1).view(np.uint8), stored_shape)
        src = (slice(None), *(slice(lo - c, hi - c) for (lo, hi), (c, _) in zip(inter[1:], stored[1:], strict=True)))
        np.copyto(buf[dst], rows[src])
        covered += int(np.prod([hi - lo for lo, hi in inter], dtype=np.int64))
    if covered < int(np.prod([b - a for a, b in box], dtype=np.int64)):
        raise CheckpointError(f"{path}: the saved shards do not cover the target index {_box_key(box)}")


def _read_rows(manager: CheckpointManager, part: OpenPart, rank: int, name: str, start: int, end: int,
               dest: np.ndarray, stored_shape: tuple[int, ...]) -> None:
    if rank == manager.rank and part.manifest.has(name):
        src = part.bytes_of(name)
        np.copyto(dest, src[start:end])
        if not part.verified and not part.check(name, src):
            raise _Corrupt(name)
        return
    manager.read(part.manifest.key.step, rank, [(name, start, end, memoryview(dest.data))])
