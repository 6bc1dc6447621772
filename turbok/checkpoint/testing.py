"""Public helpers for testing tiers: the conformance checker and a part builder.

``check_tier(make_tier)`` runs the contract of ``tiers.base.Tier`` against a
fresh tier from ``make_tier()``: put/commit order, partial parts never
offered, ranged gets, listing, idempotent delete, overwrite. Every tier's
test runs it; so can a user's own tier.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.manifest import Manifest, PartKey, check_shards, hash_shards
from turbok.checkpoint.packing import plan
from turbok.checkpoint.tiers.base import Tier

__all__ = ["check_tier", "make_part"]


def make_part(key: PartKey, *, world_size: int = 1, sizes: tuple[int, ...] = (1000, 70_000, 5)) -> tuple[Manifest, bytes]:
    """A committed-ready manifest and blob with random shards of the given sizes."""
    packing = plan({f"s{i}": os.urandom(n) for i, n in enumerate(sizes)})
    buf = bytearray(packing.data_size)
    packing.copy_into(memoryview(buf))
    manifest = packing.manifest(key, world_size)
    return manifest.with_hashes(hash_shards(memoryview(buf), manifest.shards), check_shards(memoryview(buf), manifest.shards)), bytes(buf)


def _expect_missing(tier: Tier, key: PartKey, why: str) -> None:
    assert not tier.exists(key), f"{tier.name}: {why}: exists() is True"
    try:
        tier.get(key)
    except CheckpointError:
        pass
    else:
        raise AssertionError(f"{tier.name}: {why}: get() returned data")
    committed = [s.key for s in tier.list(key.job) if s.committed]
    assert key not in committed, f"{tier.name}: {why}: listed as committed"


def check_tier(make_tier: Callable[[], Tier]) -> None:
    """Raise AssertionError naming the first broken promise of the Tier contract."""
    tier = make_tier()
    try:
        job = "conformance-job"
        k1, k2, k3 = PartKey(job, 1, 0), PartKey(job, 1, 1), PartKey(job, 2, 0)
        m1, d1 = make_part(k1, world_size=2)
        m2, d2 = make_part(k2, world_size=2, sizes=(4096, 3))
        m3, d3 = make_part(k3, world_size=2, sizes=(1,))

        assert tier.list("no-such-job") == [], f"{tier.name}: list of an unknown job is not empty"
        _expect_missing(tier, k1, "before put")

        tier.put(k1, d1)
        _expect_missing(tier, k1, "after put, before commit")
        partial = [s for s in tier.list(job) if s.key == k1]
        assert partial and not partial[0].committed, f"{tier.name}: a put part is not listed as partial"

        tier.commit(m1)
        assert tier.exists(k1), f"{tier.name}: committed part does not exist"
        assert bytes(tier.get(k1)) == d1, f"{tier.name}: get() does not return what was put"
        assert bytes(tier.get(k1, 4096, 100)) == d1[4096:4196], f"{tier.name}: ranged get is wrong"
        dest = bytearray(5000)
        tier.read_into(k1, 8192, memoryview(dest))
        assert bytes(dest) == d1[8192:13192], f"{tier.name}: read_into is wrong"
        got = tier.manifest(k1)
        assert got is not None and got.to_dict() == m1.to_dict(), f"{tier.name}: manifest does not round-trip"

        tier.put(k2, d2)
        tier.commit(m2)
        tier.put(k3, d3)
        states = {s.key: s for s in tier.list(job)}
        assert set(states) == {k1, k2, k3}, f"{tier.name}: list shows {sorted(states)}"
        assert states[k1].committed and states[k2].committed and not states[k3].committed, f"{tier.name}: wrong committed flags"
        assert {s.key for s in tier.list()} >= {k1, k2, k3}, f"{tier.name}: list() without a job misses parts"

        # Overwrite: a new put uncommits until the new commit.
        m1b, d1b = make_part(k1, world_size=2, sizes=(2048,))
        tier.put(k1, d1b)
        _expect_missing(tier, k1, "after an overwriting put")
        tier.commit(m1b)
        assert bytes(tier.get(k1))[: m1b.data_size] == d1b, f"{tier.name}: overwrite not visible"

        tier.delete(k1)
        _expect_missing(tier, k1, "after delete")
        tier.delete(k1)  # idempotent
        tier.delete(k3)
        assert {s.key for s in tier.list(job)} == {k2}, f"{tier.name}: delete left parts behind"
        tier.delete(k2)
        assert tier.list(job) == [], f"{tier.name}: parts remain after deleting all"
    finally:
        tier.close()
