"""Which committed steps each tier may delete, and the one rule that overrides all.

Per tier: keep the newest ``keep_last`` steps (memory, disk); in object
storage keep the newest ``keep_last`` and every step that is a multiple of
``keep_every``. Overriding all: a step at or above the newest step that is
complete for every rank of the job (across all tiers and agents) is never
deleted, so the newest complete checkpoint and any newer one still being
written always survive. When completeness is unknown (peers unreachable),
pass ``newest_complete=None`` and nothing is deleted.

Pure functions over step numbers; the agent calls ``plan_deletions`` after
every commit and applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Retention", "plan_deletions"]


@dataclass(frozen=True)
class Retention:
    keep_last: int = 2
    keep_every: int = 0  # 0: no periodic keeps (object storage sets it)

    def __post_init__(self) -> None:
        if self.keep_last < 1 or self.keep_every < 0:
            raise ValueError("retention keeps at least one step, and keep_every is >= 0")


def plan_deletions(steps: list[int], policy: Retention, *, newest_complete: int | None) -> list[int]:
    """The steps (of ``steps``, those this tier holds committed) to delete, oldest first."""
    ordered = sorted(set(steps))
    keep = set(ordered[-policy.keep_last :])
    if policy.keep_every:
        keep |= {s for s in ordered if s % policy.keep_every == 0}
    if newest_complete is None:
        return []  # cannot tell which step is the newest complete one: keep everything
    keep |= {s for s in ordered if s >= newest_complete}
    return [s for s in ordered if s not in keep]
