"""DCP through turbok in one process (no process group): loads go into the caller's tensors, in
place, bitwise; a corrupt memory copy is caught while loading and repaired from disk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from turbok.checkpoint import CheckpointManager
from turbok.checkpoint.agent import Agent
from turbok.checkpoint.manifest import PartKey
from turbok.checkpoint.torch import TurbokStorageReader, TurbokStorageWriter

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # one process, on purpose


def _state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(512, 300, generator=g), "b": torch.randn(300, generator=g).to(torch.bfloat16),
                      "n": torch.tensor(seed, dtype=torch.int64)},
            "rows": torch.randn(64, 8, generator=g)[::2]}  # not contiguous: goes the general way


def _blank() -> dict[str, Any]:
    return {"model": {"w": torch.zeros(512, 300), "b": torch.zeros(300, dtype=torch.bfloat16),
                      "n": torch.tensor(0, dtype=torch.int64)},
            "rows": torch.zeros(64, 8)[::2]}


def _flat(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {"w": sd["model"]["w"], "b": sd["model"]["b"], "n": sd["model"]["n"], "rows": sd["rows"]}


def _save(m: CheckpointManager, step: int) -> None:
    writer = TurbokStorageWriter(m)
    dcp.save(_state(step), storage_writer=writer, checkpoint_id=step)
    assert writer.future is not None
    writer.future.result()


def test_dcp_load_fills_the_callers_tensors_in_place_bitwise(agents: Callable[..., Agent]) -> None:
    agent = agents("a")
    with CheckpointManager("dcp", agent=agent.address) as m:
        _save(m, 7)
        target = _blank()
        before = {k: t.data_ptr() for k, t in _flat(target).items()}
        dcp.load(target, storage_reader=TurbokStorageReader(m), checkpoint_id=7)
        for k, t in _flat(target).items():
            assert t.data_ptr() == before[k], f"{k} was replaced, not filled in place"
            ref = _flat(_state(7))[k]
            assert t.dtype == ref.dtype and torch.equal(t, ref), k


def test_dcp_load_of_a_pinned_step_repairs_a_corrupt_memory_copy(agents: Callable[..., Agent]) -> None:
    agent = agents("a")
    with CheckpointManager("dcprot", agent=agent.address) as m:
        _save(m, 3)
        key = PartKey("dcprot", 3, 0)
        manifest = agent.memory.committed_manifest(key)
        assert manifest is not None
        shard = max(manifest.shards, key=lambda s: s.size)
        with open(agent.memory.data_path(key), "r+b") as f:
            f.seek(shard.offset + 100)
            byte = f.read(1)
            f.seek(shard.offset + 100)
            f.write(bytes([byte[0] ^ 0x40]))
        target = _blank()
        dcp.load(target, storage_reader=TurbokStorageReader(m), checkpoint_id=3)
        assert torch.equal(target["model"]["w"], _state(3)["model"]["w"]), "the corrupt bytes were loaded"
        assert agent.metrics.failures.labels("memory", "verify")._value.get() >= 1
        assert agent.memory.committed_manifest(key) is not None
        target = _blank()
        dcp.load(target, storage_reader=TurbokStorageReader(m), checkpoint_id=3)  # the copy was repaired
        assert torch.equal(target["model"]["w"], _state(3)["model"]["w"])
