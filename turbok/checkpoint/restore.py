"""Restore: find the newest step complete for every rank, and fetch verified bytes.

``Catalog`` lists a job on every tier it is given (local memory and disk,
every reachable peer agent, object storage). A step is *complete* when each
rank ``0..world_size-1`` has a committed copy on at least one tier; the
newest complete step is the one every rank restores, and since every rank's
agent computes it from the same committed manifests, the ranks agree (pass
``step=`` to pin it, e.g. after a broadcast from rank 0).

``fetch`` fills a buffer with one part: the whole blob from the fastest tier
holding it, every shard's XXH3 check (BLAKE3 for a manifest without checks)
verified as the chunks land; a shard that fails (or a tier
that fails mid-read) is fetched again, as a range, from the next tier holding
the same manifest. IntegrityError only when no copy of a shard matches.

Used by the agent (restore into its memory tier) and the CLI (``verify``,
``restore --to``). No I/O of its own beyond the tiers'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from turbok.checkpoint.copying import ShardHasher
from turbok.checkpoint.errors import (
    CheckpointError,
    IntegrityError,
    JobNotFoundError,
    StepNotFoundError,
)
from turbok.checkpoint.manifest import Manifest, PartKey, Shard, shard_matches, verify_shards
from turbok.checkpoint.tiers.base import PartState, Tier

__all__ = ["Catalog", "Source", "StepView", "fetch"]

log = logging.getLogger(__name__)

#: called with (tier name, bytes, seconds) after each read
Observer = Callable[[str, int, float], None]


@dataclass(frozen=True)
class Source:
    tier: Tier
    manifest: Manifest


@dataclass
class StepView:
    """What the catalog knows of one step."""

    step: int
    world_size: int = 0
    copies: dict[int, list[PartState]] = field(default_factory=dict)  # rank -> copies (committed or not)

    def committed_ranks(self) -> set[int]:
        return {r for r, cs in self.copies.items() if any(c.committed for c in cs)}

    @property
    def complete(self) -> bool:
        return self.world_size > 0 and self.committed_ranks() >= set(range(self.world_size))

    def missing(self) -> list[int]:
        return sorted(set(range(self.world_size)) - self.committed_ranks())


class Catalog:
    """Listings of one job across tiers; tiers that cannot be listed are noted, not fatal."""

    def __init__(self, job: str, tiers: list[Tier]) -> None:
        PartKey(job, 0, 0)  # a malformed job name is an error, not an empty listing
        self.job = job
        self.tiers = sorted(tiers, key=lambda t: t.speed)
        self.unreachable: dict[str, str] = {}
        self.states: list[tuple[Tier, PartState]] = []
        for tier in self.tiers:
            try:
                self.states += [(tier, s) for s in tier.list(job)]
            except CheckpointError as e:
                self.unreachable[tier.name] = str(e)
                log.warning("checkpoint restore: %s is unreachable: %s", tier.name, e)

    def steps(self) -> dict[int, StepView]:
        views: dict[int, StepView] = {}
        for _, s in self.states:
            view = views.setdefault(s.key.step, StepView(s.key.step))
            view.copies.setdefault(s.key.rank, []).append(s)
            if s.committed and s.manifest is not None:
                view.world_size = max(view.world_size, s.manifest.world_size)
        return dict(sorted(views.items()))

    def newest_complete(self) -> int | None:
        complete = [v.step for v in self.steps().values() if v.complete]
        return max(complete) if complete else None

    def choose(self, step: int | None = None) -> int:
        """The step to restore: ``step`` if complete, else the newest complete one."""
        views = self.steps()
        if not views:
            where = ", ".join(t.name for t in self.tiers) or "no tiers"
            raise JobNotFoundError(f"job {self.job!r} has no checkpoint on any tier ({where})")
        if step is None:
            newest = self.newest_complete()
            if newest is None:
                raise StepNotFoundError(f"job {self.job!r}: no step is complete for every rank (steps seen: {sorted(views)})")
            return newest
        view = views.get(step)
        if view is None:
            raise StepNotFoundError(f"job {self.job!r}: step {step} not found (steps: {sorted(views)})")
        if not view.complete:
            raise StepNotFoundError(f"job {self.job!r}: step {step} is not complete: ranks {view.missing() or '?'} have no committed copy")
        return step

    def sources(self, key: PartKey) -> list[Source]:
        """Committed copies of ``key``, fastest tier first, all with the fastest copy's manifest."""
        found = [Source(t, s.manifest) for t, s in self.states if s.key == key and s.committed and s.manifest is not None]
        if not found:
            return []
        digest = found[0].manifest.digest()
        return [s for s in found if s.manifest.digest() == digest]


def fetch(
    key: PartKey,
    sources: list[Source],
    dest: memoryview,
    *,
    have: Manifest | None = None,
    observe: Observer | None = None,
    progress: Callable[[int], None] | None = None,
    repaired: list[Shard] | None = None,
    on_bad: Callable[[str, Shard], None] | None = None,
) -> Manifest:
    """Fill ``dest`` (at least ``data_size`` bytes) with verified bytes of ``key``.

    ``have``: ``dest`` already holds a copy described by this manifest (the
    memory tier's own); only verify it, repairing bad shards from ``sources``.
    ``progress(n)``: the first ``n`` bytes of the first whole read are in ``dest``
    (not yet verified). ``repaired``: filled with the shards rewritten after it.
    ``on_bad(tier name, shard)``: told of every copy of a shard that failed its
    hash (so the caller counts it and heals that tier).
    """
    if not sources and have is None:
        raise StepNotFoundError(f"{key}: no committed copy on any reachable tier")
    have_whole = have is not None
    manifest = have if have is not None else sources[0].manifest
    sources = [s for s in sources if s.manifest.digest() == manifest.digest()]
    start = 0
    if have_whole:
        bad = verify_shards(dest, manifest)
    else:
        for start, src in enumerate(sources):  # noqa: B007
            # Hash each chunk as it lands while the tier delivers the next one (copying.ShardHasher).
            hasher = ShardHasher(manifest.shards, checks=manifest.checked)
            try:
                def landed(off: int, view: memoryview, hasher: ShardHasher = hasher) -> None:
                    hasher.feed(off, view)
                    if progress is not None:
                        progress(off + view.nbytes)

                _timed(observe, src.tier.name, manifest.data_size, partial(src.tier.read_into, key, 0, dest[: manifest.data_size], landed))
                bad = hasher.bad()
                break
            except (CheckpointError, OSError, EOFError) as e:
                hasher.close()
                log.warning("checkpoint restore: %s from %s failed: %s", key, src.tier.name, e)
        else:
            raise IntegrityError(f"{key}: every tier failed to deliver it ({', '.join(s.tier.name for s in sources)})")
    for shard in bad:
        view = dest[shard.offset : shard.offset + shard.size]
        first = sources[start].tier.name if not have_whole else "memory"
        log.warning("checkpoint restore: shard %r of %s failed its hash on %s", shard.name, key, first)
        if on_bad is not None:
            on_bad(first, shard)
        for src in sources[start + (0 if have_whole else 1) :]:
            try:
                _timed(observe, src.tier.name, shard.size, partial(src.tier.read_into, key, shard.offset, view))
            except (CheckpointError, OSError, EOFError) as e:
                log.warning("checkpoint restore: shard %r of %s from %s failed: %s", shard.name, key, src.tier.name, e)
                continue
            if shard_matches(shard, view, checks=manifest.checked):
                if repaired is not None:
                    repaired.append(shard)
                break
            if on_bad is not None:
                on_bad(src.tier.name, shard)
        else:
            raise IntegrityError(f"{key}: shard {shard.name!r} matches its hash on no tier ({', '.join(s.tier.name for s in sources)})")
    return manifest


def _timed(observe: Observer | None, tier: str, nbytes: int, fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    fn()
    if observe is not None:
        observe(tier, nbytes, time.perf_counter() - t0)
