"""PyTorch integration through Distributed Checkpoint's own plugin contract.

``TurbokStorageWriter`` / ``TurbokStorageReader`` implement DCP's
``StorageWriter`` / ``StorageReader``, so ``torch.distributed.checkpoint.save``
and ``load`` (and DCP's planners and resharding) drive turbok:

    import torch.distributed.checkpoint as dcp
    from turbok.checkpoint import CheckpointManager
    from turbok.checkpoint.torch import TurbokStorageReader, TurbokStorageWriter

    mgr = CheckpointManager("llama-7b", rank=rank, world_size=world)
    dcp.save(model.state_dict(), storage_writer=TurbokStorageWriter(mgr), checkpoint_id=step)
    dcp.load(sd, storage_reader=TurbokStorageReader(mgr))  # newest good step, in place

Saving: each rank's write items become the shards of that rank's part (one
``manager.save`` per rank and step, so ``dcp.save`` returns as soon as the
snapshot is scheduled: the manager's copy runs while training goes on, see
saving.py); the coordinator also stores DCP's global ``Metadata`` as the
shard ``__dcp_metadata__``, pickled as DCP itself stores it (so loading trusts
the checkpoint as much as DCP's FileSystemReader does). ``writer.future`` is
the last save's ``SaveFuture``.

Loading, in place and by ranges: every read item is copied straight into the
tensor DCP's planner hands out (the caller's own, for the default planner).
This rank's part is brought into the memory tier and read from its mapping;
items stored in other ranks' parts (resharding: another world size, FSDP to
DDP...) are fetched as byte ranges: only the rows of the stored chunk the
item needs, checked block by block (``CheckpointManager.read``).

Without ``checkpoint_id`` the reader picks the newest step complete for
every rank, and when ``torch.distributed`` is initialised every rank agrees
on it: the minimum of what each rank sees, retried with an older step when a
rank finds its part corrupt on every tier (the agent quarantines it). Works
single-process without ``init_process_group``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from turbok.checkpoint.copying import copy_checked
from turbok.checkpoint.errors import CheckpointError, IntegrityError, NotFoundError, StepNotFoundError
from turbok.checkpoint.manager import CheckpointManager, OpenPart
from turbok.checkpoint.manifest import Shard
from turbok.checkpoint.saving import SaveFuture

__all__ = ["TurbokStorageReader", "TurbokStorageWriter", "agree_step"]

_METADATA = "__dcp_metadata__"
_AGREE_ROUNDS = 8


def _step(checkpoint_id: str | os.PathLike[str] | int | None, current: int | None) -> int:
    if checkpoint_id is None:
        if current is None:
            raise CheckpointError("DCP with turbok needs the step: pass checkpoint_id=STEP or step= to the writer/reader")
        return current
    text = str(checkpoint_id)
    if not text.isdigit():
        raise CheckpointError(f"DCP checkpoint_id {text!r} must be the step number")
    return int(text)


def _name(index: Any) -> str:
    offset = ",".join(str(o) for o in index.offset) if index.offset is not None else ""
    return f"{index.fqn}@{offset}" if offset else index.fqn


def _distributed() -> bool:
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def _all_min(value: int) -> int:
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def agree_step(manager: CheckpointManager) -> int:
    """The step every rank restores: the newest complete step all ranks see and can verify.

    A rank whose own part of the candidate is corrupt on every tier makes the agent
    quarantine it; every rank then tries again with what is now the newest complete step.
    """
    for _ in range(_AGREE_ROUNDS):
        latest = manager.latest_step()
        chosen = _all_min(-1 if latest is None else latest)
        if chosen < 0:
            raise StepNotFoundError(f"job {manager.job!r} has no step complete for every rank")
        ok = 1
        # NotFoundError: this rank has no part of that step (a larger world than the one that saved)
        with contextlib.suppress(NotFoundError):
            # every shard checked: DCP reads other ranks' items from this rank's part too
            ok = int(manager.part_is_good(chosen))
        if _all_min(ok) == 1:
            return chosen
    raise IntegrityError(f"job {manager.job!r}: no step every rank could verify after {_AGREE_ROUNDS} tries")


class TurbokStorageWriter(StorageWriter):
    """DCP writer: stages each rank's items into the memory tier through ``manager``."""

    def __init__(self, manager: CheckpointManager, step: int | None = None, *,
                 metrics: dict[str, float] | None = None) -> None:
        super().__init__()
        self.manager = manager
        self.step = step
        self.metrics = metrics
        self.is_coordinator = True
        self.future: SaveFuture | None = None
        self._items: dict[str, Any] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.step = _step(checkpoint_id, self.step)
        self._items = {}

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return plans

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        results = []
        for item in plan.items:
            data = planner.resolve_data(item)
            name = _name(item.index)
            if isinstance(data, io.BytesIO):
                payload: Any = data.getvalue()
                size = len(payload)
            else:
                payload = data.detach()
                size = payload.numel() * payload.element_size()
            self._items[name] = payload
            results.append(WriteResult(index=item.index, size_in_bytes=size, storage_data=(self.manager.rank, name)))
        if not self.is_coordinator:
            self.future = self.manager.save(_step(None, self.step), self._items, metrics=self.metrics)
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.storage_data = {wr.index: wr.storage_data for wrs in results for wr in wrs}
        self._items[_METADATA] = pickle.dumps(metadata)
        self.future = self.manager.save(_step(None, self.step), self._items, metrics=self.metrics)
        self._items = {}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return str(checkpoint_id).isdigit()

    def storage_meta(self) -> Any:
        return None


class TurbokStorageReader(StorageReader):
    """DCP reader: fills DCP's target tensors in place, from this rank's part or byte ranges of others."""

    def __init__(self, manager: CheckpointManager, step: int | None = None) -> None:
        super().__init__()
        self.manager = manager
        self.step = step
        self.storage_data: dict[Any, Any] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.step = _step(checkpoint_id, self.step) if checkpoint_id is not None or self.step is not None else None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.step is None:
            self.step = agree_step(self.manager)
        raw = self.manager.read_shard(self.step, 0, _METADATA)
        metadata = pickle.loads(raw)
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self.manager.job} step {self.step}: {_METADATA} is not DCP metadata")
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        assert self.step is not None
        by_rank: dict[int, list[ReadItem]] = defaultdict(list)
        for req in plan.items:
            rank, _ = self.storage_data[req.storage_index]
            by_rank[int(rank)].append(req)
        own = by_rank.pop(self.manager.rank, [])
        if own:
            self._read_own(own, planner)
        for rank, reqs in sorted(by_rank.items()):
            self._read_ranges(rank, reqs, planner)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _read_own(self, reqs: list[ReadItem], planner: LoadPlanner) -> None:
        assert self.step is not None
        for repair in (False, True):
            with self.manager.open_part(self.step, repair=repair) as part:
                # whole stored tensors into contiguous CPU targets: copied and checked in one pass
                # on a few threads (copy_checked); anything else: checked, then copied by torch
                whole: list[tuple[ReadItem, Shard, torch.Tensor]] = []
                rest: list[ReadItem] = []
                for req in reqs:
                    shard = self._shard(part, req)
                    target = None if req.type == LoadItemType.BYTE_IO else planner.resolve_tensor(req).detach()
                    if target is not None and _whole(shard, req, target) and (part.verified or shard.check):
                        whole.append((req, shard, target))
                    else:
                        rest.append(req)
                if not part.verified and not all(part.check(self._shard(part, r).name, part.bytes_of(self._shard(part, r).name))
                                                 for r in rest):
                    continue  # a corrupt memory copy: open it again, verified and repaired by the agent
                if whole:
                    digests = copy_checked([(target.reshape(-1).view(torch.uint8).numpy(), part.bytes_of(shard.name))
                                            for _, shard, target in whole])
                    if not part.verified and any(d != shard.check for d, (_, shard, _) in zip(digests, whole, strict=True)):
                        continue  # copied bytes that failed their check: repaired and copied again
                    for req, _, target in whole:
                        planner.commit_tensor(req, target)
                for req in rest:
                    shard = self._shard(part, req)
                    raw = part.bytes_of(shard.name)
                    if req.type == LoadItemType.BYTE_IO:
                        planner.load_bytes(req, io.BytesIO(raw.tobytes()))
                        continue
                    stored = _tensor(raw, shard)
                    self._copy_into(planner, req, _narrow(stored, req.storage_offsets, req.lengths))
                return
        raise IntegrityError(f"{self.manager.job} step {self.step}: this rank's memory copy stays corrupt after a repair")

    def _shard(self, part: OpenPart, req: ReadItem) -> Shard:
        _, name = self.storage_data[req.storage_index]
        return part.manifest.shard(name)

    def _read_ranges(self, rank: int, reqs: list[ReadItem], planner: LoadPlanner) -> None:
        """Items stored in another rank's part: fetch only the rows each needs."""
        assert self.step is not None
        layout = self._layout(rank)
        for req in reqs:
            _, name = self.storage_data[req.storage_index]
            shard = layout.shard(name)
            if req.type == LoadItemType.BYTE_IO:
                planner.load_bytes(req, io.BytesIO(self.manager.read_shard(self.step, rank, name)))
                continue
            shape = shard.shape
            dtype = getattr(torch, shard.dtype)
            itemsize = torch.empty((), dtype=dtype).element_size()
            offsets = list(req.storage_offsets)
            lengths = list(req.lengths)
            if not shape:  # a scalar tensor
                rows = torch.empty((), dtype=dtype)
                self.manager.read(self.step, rank, [(name, 0, itemsize, _bytes(rows))])
                self._copy_into(planner, req, rows)
                continue
            r0, r1 = offsets[0], offsets[0] + lengths[0]
            row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
            rows = torch.empty((r1 - r0, *shape[1:]), dtype=dtype)
            self.manager.read(self.step, rank, [(name, r0 * row, r1 * row, _bytes(rows))])
            self._copy_into(planner, req, _narrow(rows, [0, *offsets[1:]], lengths))

    def _layout(self, rank: int) -> Any:
        """The manifest of another rank's part (its shards' shapes and dtypes), from a tiny read."""
        assert self.step is not None
        return self.manager.read(self.step, rank, [])

    @staticmethod
    def _copy_into(planner: LoadPlanner, req: ReadItem, source: torch.Tensor) -> None:
        target = planner.resolve_tensor(req).detach()
        if target.size() != source.size():
            raise CheckpointError(f"{req.storage_index}: stored size {tuple(source.size())} != target {tuple(target.size())}")
        with torch.no_grad():
            target.copy_(source)
        planner.commit_tensor(req, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return str(checkpoint_id).isdigit()


def _whole(shard: Shard, req: ReadItem, target: torch.Tensor) -> bool:
    """Whether ``req`` asks for the whole stored tensor, into a contiguous CPU tensor of its bytes."""
    return (target.device.type == "cpu" and target.is_contiguous() and getattr(torch, shard.dtype, None) == target.dtype
            and list(req.lengths) == list(shard.shape) and not any(req.storage_offsets)
            and target.numel() * target.element_size() == shard.size)


def _tensor(raw: np.ndarray, shard: Shard) -> torch.Tensor:
    import warnings

    dtype = getattr(torch, shard.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"shard {shard.name!r}: unknown torch dtype {shard.dtype!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only mapping: we only read from it
        return torch.from_numpy(raw).view(dtype).view(shard.shape)


def _bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy().data)


def _narrow(tensor: torch.Tensor, offsets: Any, lengths: Any) -> torch.Tensor:
    """The slice of a stored chunk a load request asks for (DCP resharding)."""
    for dim, (off, length) in enumerate(zip(offsets, lengths, strict=True)):
        if off != 0 or length != tensor.size(dim):
            tensor = tensor.narrow(dim, off, length)
    return tensor
