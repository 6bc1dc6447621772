"""Bulk paths: parallel copies, hashing while bytes stream in, the disk tier's file pool and chunked reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from turbok.checkpoint.copying import ShardHasher, parallel_copy
from turbok.checkpoint.manifest import Manifest, PartKey, Shard, check_shards, hash_bytes
from turbok.checkpoint.packing import plan, unpack, unpack_checked
from turbok.checkpoint.testing import make_part
from turbok.checkpoint.tiers.disk import DiskTier


def test_parallel_copy_moves_every_byte_across_uneven_pieces() -> None:
    rng = np.random.default_rng(1)
    sizes = [0, 1, 4097, 40 << 20, 3, 17 << 20]  # above the threshold: really split over threads
    srcs = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    dsts = [np.zeros(n, dtype=np.uint8) for n in sizes]
    parallel_copy(list(zip(dsts, srcs, strict=True)))
    for d, s in zip(dsts, srcs, strict=True):
        assert np.array_equal(d, s)


@pytest.mark.parametrize("checks", [False, True], ids=["blake3", "xxh3"])
@pytest.mark.parametrize("chunk", [1, 4096, 100_003, 1 << 30])
def test_shard_hasher_matches_whole_buffer_digests_for_any_chunking(chunk: int, checks: bool) -> None:
    manifest, blob = make_part(PartKey("j", 1, 0), sizes=(0, 70_000, 5, 300_000, 1))
    assert manifest.checked and manifest.hashed
    hasher = ShardHasher(manifest.shards, checks=checks)
    view = memoryview(blob)
    for off in range(0, len(blob), chunk):
        hasher.feed(off, view[off : off + chunk])
    assert hasher.digests() == [s.check if checks else s.hash for s in manifest.shards]
    assert manifest.mismatches(check_shards(view, manifest.shards), checks=True) == []


def test_shard_hasher_names_the_corrupt_shard_and_hashes_in_the_caller_when_asked() -> None:
    manifest, blob = make_part(PartKey("j", 1, 0), sizes=(1000, 70_000, 5))
    bad = bytearray(blob)
    bad[manifest.shards[1].offset + 10] ^= 0xFF
    hasher = ShardHasher(manifest.shards, checks=True, background=False)
    buf = bytearray(8192)  # reused for every chunk: only safe because background=False hashes at once
    for off in range(0, len(bad), len(buf)):
        n = min(len(buf), len(bad) - off)
        buf[:n] = bad[off : off + n]
        hasher.feed(off, memoryview(buf)[:n])
    assert [s.name for s in hasher.bad()] == [manifest.shards[1].name]


def test_save_layout_and_restore_copies_round_trip_large_tensors_in_place() -> None:
    state = {"a": torch.arange(9 << 20, dtype=torch.float32), "b": np.arange(5 << 20, dtype=np.int64)[::2], "c": b"xyz"}
    packing = plan(state)
    buf = bytearray(packing.data_size)
    packing.copy_into(memoryview(buf))
    manifest = packing.manifest(PartKey("j", 1, 0), 1)
    into = {"a": torch.zeros(9 << 20), "b": np.zeros(5 << 19, dtype=np.int64)}
    out = unpack(memoryview(buf), manifest, into)
    assert out["a"] is into["a"] and torch.equal(out["a"], state["a"])
    assert out["b"] is into["b"] and np.array_equal(out["b"], state["b"])
    fresh = unpack(memoryview(buf), manifest)
    assert torch.equal(fresh["a"], state["a"]) and fresh["a"].data_ptr() != into["a"].data_ptr()
    assert fresh["c"] == b"xyz"


def _committed(tier: DiskTier, step: int, sizes: tuple[int, ...] = (200_000,)) -> tuple[Manifest, bytes]:
    key = PartKey("j", step, 0)
    manifest, blob = make_part(key, sizes=sizes)
    tier.put(key, blob)
    tier.commit(manifest)
    return manifest, blob


def test_disk_tier_overwrites_a_retired_file_in_place_and_keeps_the_pool_bounded(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "disk", pool_files=1)
    _committed(tier, 1)
    _committed(tier, 2)
    inode = os.stat(tier.data_path(PartKey("j", 1, 0))).st_ino
    tier.delete(PartKey("j", 1, 0))
    tier.delete(PartKey("j", 2, 0))  # the pool holds one file: this one is unlinked
    assert len(list(tier.pool.iterdir())) == 1
    manifest, blob = _committed(tier, 3, sizes=(123_456,))  # another size: the reused file is cut to fit
    key = PartKey("j", 3, 0)
    assert os.stat(tier.data_path(key)).st_ino == inode, "the retired file was not reused"
    assert os.stat(tier.data_path(key)).st_size == manifest.data_size
    assert bytes(tier.get(key)) == blob and list(tier.pool.iterdir()) == []
    assert [s.key.step for s in tier.list("j")] == [3]


def test_disk_tier_reads_in_chunks_that_cover_the_blob_in_order(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "disk")
    manifest, blob = _committed(tier, 1, sizes=(40 << 20, 30 << 20))  # more than one 32 MiB read
    key = PartKey("j", 1, 0)
    import mmap

    dest = mmap.mmap(-1, manifest.data_size)  # page-aligned: the O_DIRECT path
    seen: list[tuple[int, int]] = []
    hasher = ShardHasher(manifest.shards)

    def on_chunk(off: int, view: memoryview) -> None:
        seen.append((off, view.nbytes))
        hasher.feed(off, view)

    tier.read_into(key, 0, memoryview(dest), on_chunk)
    assert bytes(dest) == blob
    assert seen[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(seen, seen[1:], strict=False))
    assert sum(n for _, n in seen) == manifest.data_size and len(seen) > 1
    assert hasher.bad() == []
    part = bytearray(5000)
    tier.read_into(key, 8192 + 64, memoryview(part))  # unaligned: the buffered path
    assert bytes(part) == blob[8256:13256]


def test_hash_of_a_shard_never_depends_on_its_neighbours() -> None:
    shards = (Shard("a", 0, 10), Shard("b", 64, 10))
    blob = bytes(range(100))
    hasher = ShardHasher(shards)
    hasher.feed(0, memoryview(blob)[:70])
    hasher.feed(70, memoryview(blob)[70:])
    assert hasher.digests() == [hash_bytes(blob[0:10]), hash_bytes(blob[64:74])]


@pytest.mark.parametrize("leaves", [1, 6], ids=["fewer-shards-than-threads", "one-thread-per-shard"])
def test_restore_copy_names_each_corrupt_shard_whatever_its_kind(leaves: int) -> None:
    state = {f"t{i}": torch.arange(3 << 18, dtype=torch.float32) + i for i in range(leaves)}
    state["raw"] = b"payload" * 1000  # bytes: checked in the source buffer, not copied in place
    packing = plan(state)
    buf = bytearray(packing.data_size)
    packing.copy_into(memoryview(buf))
    manifest = packing.manifest(PartKey("j", 1, 0), 1)
    manifest = manifest.with_hashes(["x"] * len(manifest.shards), check_shards(memoryview(buf), manifest.shards))
    out, bad = unpack_checked(memoryview(buf), manifest)
    assert bad == [] and torch.equal(out["t0"], state["t0"]) and out["raw"] == state["raw"]
    by_name = {s.name: s for s in manifest.shards}
    for name in ("t0", "raw"):
        buf[by_name[name].offset + 5] ^= 0x10
    into = {k: torch.zeros_like(v) for k, v in state.items() if k != "raw"}
    _, bad = unpack_checked(memoryview(buf), manifest, into)
    assert sorted(s.name for s in bad) == ["raw", "t0"]
