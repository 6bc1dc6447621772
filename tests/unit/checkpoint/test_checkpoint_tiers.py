"""Every local tier passes the Tier contract; tier-specific promises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turbok.checkpoint.errors import CapacityError, StagingBusyError
from turbok.checkpoint.manifest import PartKey
from turbok.checkpoint.testing import check_tier, make_part
from turbok.checkpoint.tiers.disk import DiskTier
from turbok.checkpoint.tiers.memory import MemoryTier, private_view
from turbok.checkpoint.tiers.object import ObjectTier


def test_memory_tier_conforms(shm_dir: Path) -> None:
    check_tier(lambda: MemoryTier(shm_dir, capacity=64 << 20))


def test_disk_tier_conforms(tmp_path: Path) -> None:
    check_tier(lambda: DiskTier(tmp_path / "disk"))


def test_object_tier_on_a_local_path_conforms(tmp_path: Path) -> None:
    check_tier(lambda: ObjectTier(f"file://{tmp_path}/bucket"))


def test_memory_tier_reuses_buffers_across_parts(shm_dir: Path) -> None:
    tier = MemoryTier(shm_dir, capacity=1 << 20)
    k1, k2 = PartKey("j", 1, 0), PartKey("j", 2, 0)
    m1, d1 = make_part(k1, sizes=(300_000,))
    tier.put(k1, d1)
    tier.commit(m1)
    inode = os.stat(tier.data_path(k1)).st_ino
    tier.delete(k1)
    tier.reserve(k2, len(d1))
    assert os.stat(tier.data_path(k2)).st_ino == inode, "the pooled buffer was not reused"


def test_a_lent_part_is_never_rewritten_or_pooled_even_after_a_restart(shm_dir: Path) -> None:
    tier = MemoryTier(shm_dir, capacity=1 << 20)
    a, b = PartKey("j", 1, 0), PartKey("j", 2, 0)
    tier.put(a, b"a" * 5000)
    tier.lend(a)
    lent = tier.data_path(a)
    inode, mapped = lent.stat().st_ino, private_view(lent, 4096)
    mapped[:1] = b"x"  # the job's own copy of that page: the file is not written
    assert lent.read_bytes()[:2] == b"aa"
    tier = MemoryTier(shm_dir, capacity=1 << 20)  # the agent again: the mark is on the file
    assert tier.lent(lent)
    tier.put(a, b"A" * 5000)  # an overwrite: a new file, the lent one unlinked
    assert tier.data_path(a).stat().st_ino != inode and not tier.lent(tier.data_path(a))
    tier.delete(a)
    tier.put(b, b"b" * 5000)
    assert all(p.stat().st_ino != inode for p in tier.pool.iterdir())
    assert bytes(mapped[:5]) == b"xaaaa"  # the job's mapping still holds what it was lent


def test_memory_tier_refuses_a_part_larger_than_itself_and_keeps_the_previous(shm_dir: Path) -> None:
    tier = MemoryTier(shm_dir, capacity=256 << 10)
    k1 = PartKey("j", 1, 0)
    m1, d1 = make_part(k1, sizes=(100_000,))
    tier.put(k1, d1)
    tier.commit(m1)
    with pytest.raises(CapacityError, match="inMemoryVolumeSize"):
        tier.reserve(PartKey("j", 2, 0), 1 << 20, evictable=[k1])
    assert tier.exists(k1) and bytes(tier.get(k1)) == d1


def test_memory_tier_evicts_only_what_it_is_allowed(shm_dir: Path) -> None:
    tier = MemoryTier(shm_dir, capacity=256 << 10)
    k1, k2 = PartKey("j", 1, 0), PartKey("j", 2, 0)
    m1, d1 = make_part(k1, sizes=(200_000,))
    tier.put(k1, d1)
    tier.commit(m1)
    with pytest.raises(StagingBusyError):
        tier.reserve(k2, 200_000)  # k1 not evictable: no room
    assert tier.exists(k1)
    tier.reserve(k2, 200_000, evictable=[k1])
    assert not tier.exists(k1)


def test_disk_tier_partial_write_is_never_committed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    key = PartKey("j", 3, 0)
    manifest, data = make_part(key)
    tier.put(key, data)
    with open(tier.data_path(key), "r+b") as f:
        f.truncate(len(data) // 2)  # a crash half-way through the write
    with pytest.raises(Exception, match="manifest says"):
        tier.commit(manifest)
    assert not tier.exists(key)


def test_a_marker_that_does_not_match_the_manifest_is_not_a_commit(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    key = PartKey("j", 4, 0)
    manifest, data = make_part(key)
    tier.put(key, data)
    tier.commit(manifest)
    tier.paths(key)[2].write_text("0" * 64)
    assert not tier.exists(key)
    assert [s.committed for s in tier.list("j")] == [False]


def test_deleting_a_sibling_part_never_removes_the_directory_a_writer_just_made(tmp_path: Path) -> None:
    """Issue 12, bug 3: an incoming replica's ``delete`` of rank 1 removed the step directory the
    local writer of rank 0 had just created; the write failed with ENOENT and never reached disk."""
    import threading

    tier = DiskTier(tmp_path)
    mine, sibling = PartKey("rs2", 5, 0), PartKey("rs2", 5, 1)
    manifest, data = make_part(mine)
    reuse = tier._reuse

    def racing_reuse(path: Path, size: int) -> None:
        # Between the writer making the step directory and opening its file, the replica path
        # deletes its own (absent) part of the same step, in another thread.
        t = threading.Thread(target=tier.delete, args=(sibling,))
        t.start()
        t.join(timeout=0.5)
        reuse(path, size)

    tier._reuse = racing_reuse  # type: ignore[method-assign]
    tier.put(mine, data)
    tier.commit(manifest)
    assert bytes(tier.get(mine)) == data


def test_listing_skips_a_step_directory_deleted_while_it_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention (or a delete) removed a step directory between listing the job and listing the
    step: the drain's retention pass failed with FileNotFoundError (the JAX drill met it)."""
    tier = DiskTier(tmp_path)
    key = PartKey("j", 5, 0)
    manifest, data = make_part(key)
    tier.put(key, data)
    tier.commit(manifest)
    gone = tier.data_path(key).parent.parent / f"{6:012d}"  # step 6: deleted while we list
    gone.mkdir()  # still there when the listing looks at it...
    real_iterdir, real_scandir = Path.iterdir, Path._scandir  # type: ignore[attr-defined]

    def vanished(real):  # type: ignore[no-untyped-def]
        def read(self: Path):  # type: ignore[no-untyped-def]
            if self == gone:  # ...gone when it reads it
                raise FileNotFoundError(2, "No such file or directory", str(self))
            return real(self)
        return read

    monkeypatch.setattr(Path, "iterdir", vanished(real_iterdir))
    monkeypatch.setattr(Path, "_scandir", vanished(real_scandir))
    assert [(s.key, s.committed) for s in tier.list("j")] == [(key, True)]
