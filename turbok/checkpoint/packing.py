"""How a training state becomes a part's blob, and back.

``plan(state)`` walks a nested structure of dicts (str or int keys), lists and
tuples whose leaves are torch tensors (any dtype, bfloat16 included, any
device), numpy arrays, bytes-like objects or plain scalars (int, float, bool,
str, None). Array-like leaves become shards at 64-byte aligned offsets; the
scalars and the shape of the structure stay in the manifest's ``tree``.
Anything else (arbitrary objects) is refused with UnsupportedStateError: the
format never unpickles, so restoring a checkpoint cannot run code.

``Packing.copy_into(buf)`` is the copy into the memory tier: one memcpy of
every leaf into memory that is already touched, spread over a few threads
(copying.py says why); saving.py decides whether training waits for it.
A ``Deferred`` leaf is an array known by shape and dtype now and fetched at
copy time (a JAX array: its device-to-host transfer runs in the background). ``unpack(buf, manifest)`` builds new
objects; ``unpack(..., into=state)`` copies into the caller's existing tensors
and arrays instead (the fast path: their memory is already touched, as with
DCP's in-place load).

Called by manager.py in the training process and by the torch/jax adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from turbok.checkpoint.copying import copy_checked, parallel_copy
from turbok.checkpoint.errors import ManifestError, UnsupportedStateError
from turbok.checkpoint.manifest import SHARD_ALIGN, Manifest, PartKey, Shard, align_up, check_bytes

__all__ = ["Deferred", "Packing", "Unpacker", "plan", "unpack", "unpack_checked"]


@dataclass(frozen=True)
class Deferred:
    """An array leaf whose bytes are fetched only when the save copies it (``fetch()``)."""

    shape: tuple[int, ...]
    dtype: Any  # a numpy dtype
    fetch: Any  # Callable[[], np.ndarray]: C-contiguous, of this shape and dtype

    @property
    def nbytes(self) -> int:
        n = int(np.dtype(self.dtype).itemsize)
        for d in self.shape:
            n *= int(d)
        return n


@dataclass
class Packing:
    """The layout of one save: shards, tree, and the leaves to copy."""

    shards: list[Shard]
    tree: Any
    leaves: list[Any]
    data_size: int

    def manifest(self, key: PartKey, world_size: int) -> Manifest:
        return Manifest(key=key, world_size=world_size, data_size=self.data_size, shards=tuple(self.shards), tree=self.tree)

    def copy_into(self, buf: memoryview, indices: Any = None) -> None:
        """Copy every leaf (or those of ``indices``) into ``buf`` at its shard's offset."""
        dst = np.frombuffer(buf, dtype=np.uint8)
        flat: list[tuple[np.ndarray, np.ndarray]] = []
        wanted = range(len(self.shards)) if indices is None else indices
        for i in wanted:
            shard, leaf = self.shards[i], self.leaves[i]
            if isinstance(leaf, Deferred):
                leaf = np.ascontiguousarray(leaf.fetch())
            target = dst[shard.offset : shard.offset + shard.size]
            raw = _raw_bytes(leaf, shard)
            if raw is not None:
                flat.append((target, raw))
            else:
                _copy_leaf(leaf, target, shard)
        parallel_copy(flat)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "untyped_storage")


def plan(state: Any) -> Packing:
    """Lay the state out; no bytes are copied yet."""
    shards: list[Shard] = []
    leaves: list[Any] = []
    offset = 0

    def leaf(path: str, x: Any) -> dict[str, Any]:
        nonlocal offset
        if _is_torch(x):
            x = x.detach()
            shard = Shard(path, offset, x.numel() * x.element_size(), kind="tensor", dtype=str(x.dtype).removeprefix("torch."), shape=tuple(x.shape))
        elif isinstance(x, Deferred):
            dt = np.dtype(x.dtype)
            dtype = dt.name if dt.kind == "V" and dt.names is None else dt.str
            shard = Shard(path, offset, x.nbytes, kind="ndarray", dtype=dtype, shape=tuple(int(d) for d in x.shape))
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise UnsupportedStateError(f"{path or '<root>'}: numpy arrays of Python objects cannot be checkpointed")
            # Extension dtypes (ml_dtypes' bfloat16, float8...) have no portable .str ("<V2"): keep their name.
            dtype = x.dtype.name if x.dtype.kind == "V" and x.dtype.names is None else x.dtype.str
            shard = Shard(path, offset, x.nbytes, kind="ndarray", dtype=dtype, shape=tuple(x.shape))
        else:
            mv = memoryview(x)
            shard = Shard(path, offset, mv.nbytes, kind="bytes")
            x = mv.cast("B") if mv.contiguous else bytes(mv)
        shards.append(shard)
        leaves.append(x)
        offset = align_up(offset + shard.size, SHARD_ALIGN)
        return {"t": "leaf", "i": len(shards) - 1}

    def walk(path: str, x: Any) -> Any:
        if x is None or isinstance(x, bool | int | float | str):
            return {"t": "value", "v": x}
        if isinstance(x, dict):
            keys = list(x)
            for k in keys:
                if not isinstance(k, str | int) or isinstance(k, bool):
                    raise UnsupportedStateError(f"{path or '<root>'}: dict keys must be str or int, got {type(k).__name__}")
            return {"t": "dict", "k": keys, "v": [walk(f"{path}/{k}" if path else str(k), x[k]) for k in keys]}
        if isinstance(x, list | tuple):
            return {"t": "list" if isinstance(x, list) else "tuple", "v": [walk(f"{path}/{i}" if path else str(i), v) for i, v in enumerate(x)]}
        if _is_torch(x) or isinstance(x, np.ndarray | bytes | bytearray | memoryview | Deferred):
            return leaf(path, x)
        raise UnsupportedStateError(
            f"{path or '<root>'}: cannot checkpoint a {type(x).__module__}.{type(x).__qualname__}; "
            "use tensors, numpy arrays, bytes, scalars, dicts and lists (serialize other objects to bytes first)"
        )

    tree = walk("", state)
    return Packing(shards=shards, tree=tree, leaves=leaves, data_size=align_up(max(offset, 1)))


def _raw_bytes(leaf: Any, shard: Shard) -> np.ndarray | None:
    """The leaf's bytes as a flat uint8 array without a copy, or None when that needs a copy."""
    if shard.size == 0:
        return None
    if shard.kind == "tensor":
        import torch

        if leaf.is_contiguous() and leaf.device.type == "cpu":
            raw: np.ndarray = leaf.reshape(-1).view(torch.uint8).numpy()
            return raw
        return None
    if shard.kind == "ndarray":
        if leaf.flags.c_contiguous:
            flat: np.ndarray = leaf.reshape(-1).view(np.uint8)
            return flat
        return None
    return np.frombuffer(leaf, dtype=np.uint8)


def _copy_leaf(leaf: Any, dst: np.ndarray, shard: Shard) -> None:
    """The slow path: strided arrays and tensors on other devices."""
    if shard.size == 0:
        return
    if shard.kind == "tensor":
        import torch

        target = torch.from_numpy(dst).view(leaf.dtype).view(leaf.shape)
        target.copy_(leaf)
    elif shard.kind == "ndarray":
        np.copyto(dst.view(leaf.dtype).reshape(leaf.shape), leaf)
    else:
        dst[:] = np.frombuffer(leaf, dtype=np.uint8)


def _leaf_view(buf: memoryview, shard: Shard) -> Any:
    raw = np.frombuffer(buf, dtype=np.uint8, count=shard.size, offset=shard.offset)
    if shard.kind == "tensor":
        import torch

        dtype = getattr(torch, shard.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ManifestError(f"shard {shard.name!r}: unknown torch dtype {shard.dtype!r}")
        return torch.from_numpy(raw).view(dtype).view(shard.shape)
    if shard.kind == "ndarray":
        return raw.view(_np_dtype(shard)).reshape(shard.shape)
    return raw


def _np_dtype(shard: Shard) -> np.dtype[Any]:
    try:
        return np.dtype(shard.dtype)
    except TypeError:
        try:
            import ml_dtypes  # bfloat16, float8_*: what JAX arrays carry

            found: np.dtype[Any] = np.dtype(getattr(ml_dtypes, shard.dtype))
            return found
        except (ImportError, AttributeError):
            raise ManifestError(f"shard {shard.name!r}: unknown numpy dtype {shard.dtype!r}") from None


def unpack(buf: memoryview, manifest: Manifest, into: Any = None, *, device: Any = None) -> Any:
    """Rebuild the state from a part's blob (copying: ``buf`` may be reused later).

    With ``into``, leaves that exist there with the same shape and dtype are
    filled in place and kept; the returned structure is otherwise new. The
    copies run at the end, together, over a few threads.
    """
    return unpack_checked(buf, manifest, into, check=False, device=device)[0]


def unpack_checked(buf: memoryview, manifest: Manifest, into: Any = None, *, check: bool = True,
                   device: Any = None) -> tuple[Any, list[Shard]]:
    """``unpack``, also returning the shards whose XXH3 ``check`` fails (``check=True``).

    Each leaf copied into place is checked in the same pass, 1 MiB at a time
    while the bytes are still in cache (copying.copy_checked); the shards not
    copied that way (bytes, strided or device targets) are checked in ``buf``.
    """
    u = Unpacker(buf, manifest, into, device=device)
    bad = u.copy(range(len(manifest.shards)), check=check)
    return u.state(), bad


class Unpacker:
    """``unpack`` in steps, for a blob that is still arriving: make the destinations, copy the
    shards whose bytes are in (``copy``), in any number of calls, then ``state()``.

    Destinations are the caller's tensors and arrays (``into``) where they fit, else new ones;
    the caller's tensors on an accelerator are filled straight from ``buf`` through ``device``
    (a device.DeviceStager), with no host tensor in between.
    """

    def __init__(self, buf: memoryview, manifest: Manifest, into: Any = None, *, device: Any = None) -> None:
        self.buf, self.manifest = buf, manifest
        self.device = device
        self.dests: dict[int, Any] = {}  # shard index -> the object returned for it
        self._fast: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._slow: dict[int, tuple[Any, Any]] = {}
        self._device: dict[int, tuple[np.ndarray, Any]] = {}
        self._walk(manifest.tree, into)

    def _view(self, shard: Shard) -> Any:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about read-only numpy views
            return _leaf_view(self.buf, shard)

    def _walk(self, node: Any, target: Any) -> None:
        t = node.get("t") if isinstance(node, dict) else None
        if t == "dict":
            tgt = target if isinstance(target, dict) else {}
            for k, v in zip(node["k"], node["v"], strict=True):
                self._walk(v, tgt.get(k))
        elif t in ("list", "tuple"):
            seq = target if isinstance(target, list | tuple) and len(target) == len(node["v"]) else [None] * len(node["v"])
            for i, v in enumerate(node["v"]):
                self._walk(v, seq[i])
        elif t == "leaf":
            index = node["i"]
            shard = self.manifest.shards[index]
            if shard.kind == "bytes":
                return  # made from the blob in state()
            view = self._view(shard)
            if target is not None and _fits(target, view):
                dest, returned = (target.detach() if shard.kind == "tensor" else target), target
            elif shard.kind == "tensor":
                import torch

                dest = returned = torch.empty(shard.shape, dtype=view.dtype)
            else:
                dest = returned = np.empty(view.shape, dtype=view.dtype)
            self.dests[index] = returned
            if self.device is not None and shard.kind == "tensor" and shard.size and self.device.backend.is_device(dest):
                self._device[index] = (np.frombuffer(self.buf, dtype=np.uint8, count=shard.size, offset=shard.offset), dest)
                return
            raw = _raw_bytes(dest, shard) if shard.size else None
            if raw is not None:
                self._fast[index] = (raw, np.frombuffer(self.buf, dtype=np.uint8, count=shard.size, offset=shard.offset))
            elif shard.size:
                self._slow[index] = (dest, view)
        elif t != "value":
            raise ManifestError(f"{self.manifest.key}: malformed tree node {node!r}")

    def copy(self, indices: Any, *, check: bool = False) -> list[Shard]:
        """Copy the given shards into their destinations; with ``check``, the ones failing their XXH3."""
        shards = self.manifest.shards
        wanted = list(indices)
        fast = [i for i in wanted if i in self._fast]
        bad: list[Shard] = []
        if check:
            digests = copy_checked([self._fast[i] for i in fast])
            bad = [shards[i] for i, d in zip(fast, digests, strict=True) if d != shards[i].check]
            done = set(fast)
            bad += [shards[i] for i in wanted if i not in done and check_bytes(self.buf[shards[i].offset : shards[i].offset + shards[i].size]) != shards[i].check]
        else:
            parallel_copy([self._fast[i] for i in fast])
        on_device = [self._device[i] for i in wanted if i in self._device]
        if on_device:
            if check:
                bad += [shards[i] for i in wanted if i in self._device and check_bytes(self._device[i][0]) != shards[i].check]
            self.device.restore_into(np.frombuffer(self.buf, dtype=np.uint8), on_device)
        for i in wanted:  # strided targets, tensors on other devices
            if i in self._slow:
                dest, view = self._slow[i]
                if isinstance(dest, np.ndarray):
                    np.copyto(dest, view)
                else:
                    dest.copy_(view)
        return bad

    def state(self) -> Any:
        """The restored structure (call once every shard is copied)."""

        def build(node: Any) -> Any:
            t = node["t"]
            if t == "value":
                return node["v"]
            if t == "dict":
                return {k: build(v) for k, v in zip(node["k"], node["v"], strict=True)}
            if t in ("list", "tuple"):
                items = [build(v) for v in node["v"]]
                return items if t == "list" else tuple(items)
            index = node["i"]
            if index in self.dests:
                return self.dests[index]
            return self._view(self.manifest.shards[index]).tobytes()

        return build(self.manifest.tree)


def _fits(target: Any, view: Any) -> bool:
    if isinstance(view, np.ndarray):
        return isinstance(target, np.ndarray) and target.shape == view.shape and target.dtype == view.dtype and target.flags.writeable
    return _is_torch(target) and tuple(target.shape) == tuple(view.shape) and target.dtype == view.dtype
