"""Bitwise round trips through a real agent, from one byte to 1 GiB."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from turbok.checkpoint import CheckpointManager
from turbok.checkpoint.agent import Agent
from turbok.checkpoint.manifest import PartKey
from turbok.checkpoint.testing import check_tier, make_part
from turbok.checkpoint.tiers.peer import PeerTier


@pytest.mark.parametrize("size", [1, 4097, 10 << 20])
def test_numpy_torch_and_bytes_round_trip_from_memory_and_disk(agents: Callable[..., Agent], size: int) -> None:
    agent = agents("a", keep_memory=1)
    rng = np.random.default_rng(size)
    raw = rng.integers(0, 256, size, dtype=np.uint8)
    state = {
        "np": raw.copy(),
        "np_f64": rng.standard_normal(max(size // 8, 1)),
        "torch": torch.from_numpy(raw.copy()),
        "torch_bf16": torch.from_numpy(raw[: size - size % 2].copy()).view(torch.bfloat16) if size > 1 else torch.zeros(1, dtype=torch.bfloat16),
        "bytes": raw.tobytes(),
    }
    with CheckpointManager("rt", agent=agent.address) as mgr:
        mgr.save(1, state)
        mgr.wait(1, "disk")
        got = mgr.restore().state  # from memory
        _same(got, state)
        mgr.save(2, {"other": b"x"})
        mgr.wait(2, "disk")
        for part in agent.memory.list("rt"):  # memory copies gone: the disk tier serves step 1
            agent.memory.delete(part.key)
        assert [s.key.step for s in agent.memory.list("rt")] == []
        got = mgr.restore(step=1).state  # from disk
        _same(got, state)


def _same(got: dict[str, object], state: dict[str, object]) -> None:
    assert got.keys() == state.keys()
    for k, v in state.items():
        g = got[k]
        if isinstance(v, torch.Tensor):
            assert isinstance(g, torch.Tensor) and g.dtype == v.dtype and torch.equal(g.view(torch.uint8), v.view(torch.uint8)), k
        elif isinstance(v, np.ndarray):
            assert isinstance(g, np.ndarray) and g.dtype == v.dtype and g.tobytes() == v.tobytes(), k
        else:
            assert g == v, k


def test_one_gib_of_torch_tensors_round_trips_bitwise(agents: Callable[..., Agent]) -> None:
    agent = agents("big", memory_size="2200Mi")
    gen = torch.Generator().manual_seed(7)
    big = torch.randint(0, 1 << 30, ((1 << 30) // 4 - 1024,), dtype=torch.int32, generator=gen)
    state = {"w": big, "small": torch.randn(1024, generator=gen)}
    with CheckpointManager("gib", agent=agent.address) as mgr:
        mgr.save(100, state)
        mgr.wait(100, "disk")
        target = {"w": torch.empty_like(big), "small": torch.empty(1024)}
        restored = mgr.restore(into=target)
        assert restored.step == 100 and restored.state["w"] is target["w"]
        assert torch.equal(target["w"], big) and torch.equal(target["small"], state["small"])


def test_peer_tier_conforms_to_the_tier_contract(agents: Callable[..., Agent]) -> None:
    agent = agents("peer")
    check_tier(lambda: PeerTier(agent.address))


@pytest.mark.parametrize("stage", ["disk.before_write", "disk.before_commit"])
def test_a_peer_delete_while_the_replica_drains_to_disk_leaves_nothing(agents: Callable[..., Agent], stage: str) -> None:
    # The drain to disk runs after the commit is answered: a delete that did not wait for it would see
    # the disk copy come back (the peer tier's conformance check caught this as a race).
    agent = agents("slow-disk", fault_delays={stage: 1.0})
    tier = PeerTier(agent.address)
    try:
        key = PartKey("drain-race", 1, 0)
        manifest, data = make_part(key)
        tier.put(key, data)
        tier.commit(manifest)
        tier.delete(key)
        assert tier.list("drain-race") == []
        time.sleep(1.5)
        assert tier.list("drain-race") == [] and agent.ctx.disk.list("drain-race") == []
    finally:
        tier.close()


def test_restore_right_after_save_sees_the_step_and_all_ranks_agree(agents: Callable[..., Agent]) -> None:
    a, b = agents("r0"), agents("r1")
    a.settings.peers = b.settings.peers = [a.address, b.address]
    m0 = CheckpointManager("agree", rank=0, world_size=2, agent=a.address)
    m1 = CheckpointManager("agree", rank=1, world_size=2, agent=b.address)
    for step in (1, 2):
        m0.save(step, {"r": np.full(10, 0 + step)})
        m1.save(step, {"r": np.full(10, 10 + step)})
    m0.save(3, {"r": np.full(10, 3)})  # rank 1 never saves step 3: not complete
    r0, r1 = m0.restore(), m1.restore()
    assert r0.step == r1.step == 2
    assert r0.state["r"][0] == 2 and r1.state["r"][0] == 12
    assert m0.latest_step() == 2
