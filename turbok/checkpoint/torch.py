"""PyTorch integration through Distributed Checkpoint's own plugin contract.

``TurbokStorageWriter`` / ``TurbokStorageReader`` implement DCP's
``StorageWriter`` / ``StorageReader``, so ``torch.distributed.checkpoint.save``
and ``load`` (and DCP's planners, resharding and ``async_save``) drive turbok:

    import torch.distributed.checkpoint as dcp
    from turbok.checkpoint import CheckpointManager
    from turbok.checkpoint.torch import TurbokStorageReader, TurbokStorageWriter

    mgr = CheckpointManager("llama-7b", rank=rank, world_size=world)
    dcp.save(model.state_dict(), storage_writer=TurbokStorageWriter(mgr), checkpoint_id=step)
    dcp.load(sd, storage_reader=TurbokStorageReader(mgr), checkpoint_id=step)  # in place

Each rank's write items become the shards of that rank's part (one
``manager.save`` per rank and step); the coordinator also stores DCP's global
``Metadata`` as the shard ``__dcp_metadata__``, pickled as DCP itself stores
it (so loading trusts the checkpoint as much as DCP's FileSystemReader does).
Works single-process without ``init_process_group``.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.manager import CheckpointManager

__all__ = ["TurbokStorageReader", "TurbokStorageWriter"]

_METADATA = "__dcp_metadata__"


def _step(checkpoint_id: str | os.PathLike[str] | int | None, current: int | None) -> int:
    if checkpoint_id is None:
        if current is None:
            raise CheckpointError("DCP with turbok needs the step: pass checkpoint_id=STEP or step= to the writer/reader")
        return current
    text = str(checkpoint_id)
    if not text.isdigit():
        raise CheckpointError(f"DCP checkpoint_id {text!r} must be the step number")
    return int(text)


def _narrow(tensor: torch.Tensor, offsets: Any, lengths: Any) -> torch.Tensor:
    """The slice of a stored chunk a load request asks for (DCP resharding)."""
    for dim, (off, length) in enumerate(zip(offsets, lengths, strict=True)):
        if off != 0 or length != tensor.size(dim):
            tensor = tensor.narrow(dim, off, length)
    return tensor


def _name(index: Any) -> str:
    offset = ",".join(str(o) for o in index.offset) if index.offset is not None else ""
    return f"{index.fqn}@{offset}" if offset else index.fqn


class TurbokStorageWriter(StorageWriter):
    """DCP writer: stages each rank's items into the memory tier through ``manager``."""

    def __init__(self, manager: CheckpointManager, step: int | None = None) -> None:
        super().__init__()
        self.manager = manager
        self.step = step
        self.is_coordinator = True
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
            self.manager.save(_step(None, self.step), self._items)
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.storage_data = {wr.index: wr.storage_data for wrs in results for wr in wrs}
        self._items[_METADATA] = pickle.dumps(metadata)
        self.manager.save(_step(None, self.step), self._items)
        self._items = {}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return str(checkpoint_id).isdigit()

    def storage_meta(self) -> Any:
        return None


class TurbokStorageReader(StorageReader):
    """DCP reader: restores the parts it needs through ``manager`` and fills DCP's targets in place."""

    def __init__(self, manager: CheckpointManager, step: int | None = None) -> None:
        super().__init__()
        self.manager = manager
        self.step = step
        self.storage_data: dict[Any, Any] = {}
        self._parts: dict[int, Any] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.step = _step(checkpoint_id, self.step) if checkpoint_id is not None or self.step is not None else None
        self._parts = {}

    def _part(self, rank: int) -> Any:
        if rank not in self._parts:
            restored = self.manager.restore(self.step, rank=rank)
            self.step = restored.step
            self._parts[rank] = restored.state
        return self._parts[rank]

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        raw = self._part(0).get(_METADATA)
        if raw is None:
            raise CheckpointError(f"{self.manager.job} step {self.step}: not written by DCP (no {_METADATA})")
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
        for req in plan.items:
            rank, name = self.storage_data[req.storage_index]
            data = self._part(int(rank))[name]
            if req.type == LoadItemType.BYTE_IO:
                planner.load_bytes(req, io.BytesIO(data))
                continue
            tensor = _narrow(data, req.storage_offsets, req.lengths)
            target = planner.resolve_tensor(req).detach()
            if target.size() != tensor.size():
                raise CheckpointError(f"{req.storage_index}: stored size {tuple(tensor.size())} != target {tuple(target.size())}")
            with torch.no_grad():
                target.copy_(tensor)
            planner.commit_tensor(req, target)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return str(checkpoint_id).isdigit()
