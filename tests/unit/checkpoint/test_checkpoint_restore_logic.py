"""Choosing the step to restore and fetching verified bytes across tiers (local tiers only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.checkpoint.errors import IntegrityError, JobNotFoundError, StepNotFoundError
from turbok.checkpoint.manifest import PartKey
from turbok.checkpoint.restore import Catalog, fetch
from turbok.checkpoint.testing import make_part
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier


def _store(tier: DiskTier | MemoryTier, key: PartKey, world: int = 2) -> bytes:
    manifest, data = make_part(key, world_size=world, sizes=(5000, 123_457))
    tier.put(key, data)
    tier.commit(manifest)
    return data


def test_newest_step_complete_for_every_rank_across_tiers(tmp_path: Path, shm_dir: Path) -> None:
    mem, disk = MemoryTier(shm_dir, capacity=16 << 20), DiskTier(tmp_path)
    _store(disk, PartKey("j", 10, 0))
    _store(mem, PartKey("j", 10, 1))  # step 10: rank 0 on disk, rank 1 in memory -> complete
    _store(mem, PartKey("j", 20, 0))  # step 20: rank 1 missing
    manifest, data = make_part(PartKey("j", 30, 1), world_size=2)
    disk.put(PartKey("j", 30, 0), data)  # uncommitted
    _store(disk, PartKey("j", 30, 1))
    catalog = Catalog("j", [disk, mem])
    assert catalog.choose() == 10
    with pytest.raises(StepNotFoundError, match=r"ranks \[1\]"):
        catalog.choose(20)
    with pytest.raises(StepNotFoundError, match=r"ranks \[0\]"):
        catalog.choose(30)
    with pytest.raises(StepNotFoundError, match="not found"):
        catalog.choose(99)
    with pytest.raises(JobNotFoundError):
        Catalog("other", [disk, mem]).choose()


def test_fetch_takes_a_corrupt_shard_from_the_next_tier(tmp_path: Path, shm_dir: Path) -> None:
    mem, disk = MemoryTier(shm_dir, capacity=16 << 20), DiskTier(tmp_path)
    key = PartKey("j", 5, 0)
    manifest, data = make_part(key, world_size=1, sizes=(5000, 123_457))
    for t in (mem, disk):
        t.put(key, data)
        t.commit(manifest)
    view = mem.get(key)
    assert isinstance(view, memoryview)
    view[manifest.shards[1].offset + 77] ^= 0xFF  # a flipped byte in the memory tier
    seen: list[str] = []
    dest = bytearray(manifest.data_size)
    fetch(key, Catalog("j", [mem, disk]).sources(key), memoryview(dest), observe=lambda t, n, s: seen.append(t))
    assert bytes(dest) == data
    assert seen == ["memory", "disk"], "whole part from memory, then the bad shard from disk"
    # corrupt on both tiers: a clear IntegrityError naming the shard
    with open(disk.data_path(key), "r+b") as f:
        f.seek(manifest.shards[1].offset + 5)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IntegrityError, match=manifest.shards[1].name):
        fetch(key, Catalog("j", [mem, disk]).sources(key), memoryview(bytearray(manifest.data_size)))


def test_a_malformed_manifest_is_never_offered(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path)
    _store(disk, PartKey("j", 1, 0), world=1)
    _store(disk, PartKey("j", 2, 0), world=1)
    disk.paths(PartKey("j", 2, 0))[1].write_text('{"format": 1, "job": "j"')
    catalog = Catalog("j", [disk])
    assert catalog.choose() == 1
    assert [s.committed for _, s in catalog.states] == [True, False]
