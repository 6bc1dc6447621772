"""Scrub and repair: check every committed copy an agent holds, and fix the bad ones.

``scrub(ctx, job)`` re-hashes (BLAKE3, the hash of record) every committed
copy in this agent's memory and disk tiers, and with ``include_object`` the
object store's copies too. Each bad copy counts in
``turbok_checkpoint_failures_total{tier,op="verify"}`` and is an event.

With ``repair=True`` a bad copy is rewritten from a good one: the other local
tier, a peer, or the object store (whichever verifies first, fastest first);
a part no copy of which is good is quarantined everywhere
(``Tier.quarantine``), so it is never offered again and restores fall back
to the newest good older step.

Run by the agent (``scrub`` operation); ``turbok checkpoint scrub`` and
``turbok checkpoint repair`` ask every agent of a cluster in turn.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import asdict, dataclass
from typing import Any

from turbok.checkpoint.context import AgentContext
from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.manifest import Manifest, PartKey, verify_shards
from turbok.checkpoint.restore import Catalog, fetch
from turbok.checkpoint.tiers.base import Tier

__all__ = ["Finding", "scrub"]

log = logging.getLogger(__name__)


@dataclass
class Finding:
    job: str
    step: int
    rank: int
    tier: str
    problem: str
    action: str = "none"  # "repaired", "quarantined", "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bad_shards(tier: Tier, key: PartKey, manifest: Manifest) -> str:
    try:
        data = tier.get(key)
        wrong = verify_shards(memoryview(data), manifest)
    except (CheckpointError, OSError) as e:
        return f"unreadable: {e}"
    return f"hash mismatch in {', '.join(s.name for s in wrong[:5])}" if wrong else ""


def scrub(ctx: AgentContext, job: str | None = None, *, step: int | None = None, repair: bool = False,
          include_object: bool = False) -> dict[str, Any]:
    """Check (and with ``repair`` fix) every committed copy here; returns the report."""
    tiers: list[Tier] = [ctx.memory, ctx.disk]
    if include_object and ctx.object is not None:
        tiers.append(ctx.object)
    checked = 0
    findings: list[Finding] = []
    for tier in tiers:
        for state in tier.list(job):
            if not state.committed or state.manifest is None or (step is not None and state.key.step != step):
                continue
            checked += 1
            with ctx.residency.pin(state.key):
                problem = _bad_shards(tier, state.key, state.manifest)
                if not problem:
                    continue
                key = state.key
                ctx.metrics.failed(tier.name, "verify")
                ctx.events.record("HashMismatch", f"scrub: {key} on {tier.name}: {problem}", key, tier=tier.name)
                finding = Finding(key.job, key.step, key.rank, tier.name, problem)
                findings.append(finding)
                if repair:
                    finding.action = _repair(ctx, tier, key, state.manifest)
    return {"checked": checked, "findings": [f.to_dict() for f in findings]}


def _repair(ctx: AgentContext, bad: Tier, key: PartKey, manifest: Manifest) -> str:
    """Rewrite ``bad``'s copy of ``key`` from a good copy elsewhere; quarantine it everywhere if none."""
    catalog = Catalog(key.job, [t for t in ctx.all_tiers() if t is not bad])
    sources = [s for s in catalog.sources(key) if s.manifest.digest() == manifest.digest()]
    buf = mmap.mmap(-1, manifest.data_size)
    view = memoryview(buf)
    try:
        try:
            fetch(key, sources, view)
        except CheckpointError as e:
            reason = f"no good copy left ({e})"
            for tier in [bad, *[s.tier for s in sources]]:
                try:
                    tier.quarantine(key, reason)
                except CheckpointError as qe:
                    log.warning("checkpoint repair: cannot quarantine %s on %s: %s", key, tier.name, qe)
            ctx.metrics.failed("all", "restore")
            ctx.events.record("Quarantined", f"{key}: {reason}", key)
            return "quarantined"
        _rewrite(bad, key, manifest, view)
        ctx.events.record("Repaired", f"{key}: copy on {bad.name} rewritten from a verified copy", key,
                          tier=bad.name, warning=False)
        return "repaired"
    finally:
        view.release()
        buf.close()


def _rewrite(tier: Tier, key: PartKey, manifest: Manifest, data: memoryview) -> None:
    tier.delete(key)
    tier.put(key, data)
    tier.commit(manifest)
