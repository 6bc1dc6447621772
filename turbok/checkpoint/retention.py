"""Which committed steps each tier may delete, and the one rule that overrides all.

Per tier: keep the newest ``keep_last`` steps (memory, disk); in object
storage keep the newest ``keep_last`` and every step that is a multiple of
``keep_every``. Overriding all: a step at or above the newest step that is
complete for every rank of the job (across all tiers and agents) is never
deleted, so the newest complete checkpoint and any newer one still being
written always survive. When completeness is unknown (peers unreachable),
pass ``newest_complete=None`` and nothing is deleted.

Per job (``JobRetention``, set by the training job through
``CheckpointManager(retention=...)``): which steps exist at all, on every
tier, by count, period, time or the best metric; the manager of one rank
applies it after each durable save, deleting through the agents
(``delete_step``). The node's per-tier policy still decides what each tier
holds of the steps the job keeps.

Pure functions over step numbers; the agent calls ``plan_deletions`` after
every commit and applies the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["JobRetention", "Retention", "StepInfo", "plan_deletions", "plan_job_deletions"]


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


@dataclass(frozen=True)
class JobRetention:
    """Which steps a job keeps, across every tier (Orbax's CheckpointManagerOptions, by name).

    - ``max_to_keep``: the newest N steps (the best N with ``best_metric``); None keeps all.
    - ``keep_period``: also keep every step that is a multiple of it.
    - ``keep_time_interval``: also keep a step whenever this many seconds passed since the
      last one kept that way (by the time each step was saved).
    - ``best_metric`` / ``best_mode`` ("min" or "max"): rank steps by the metric saved with
      them (``save(..., metrics=...)``), or by ``best_fn(metrics)``; steps saved without
      metrics are kept (``keep_checkpoints_without_metrics``) or dropped first.
    """

    max_to_keep: int | None = None
    keep_period: int | None = None
    keep_time_interval: float | None = None
    best_metric: str | None = None
    best_mode: str = "min"
    keep_checkpoints_without_metrics: bool = True
    best_fn: Callable[[dict[str, float]], float] | None = None  # instead of best_metric (Orbax's)

    def __post_init__(self) -> None:
        if self.max_to_keep is not None and self.max_to_keep < 1:
            raise ValueError("max_to_keep keeps at least one step (None keeps all)")
        if self.best_mode not in ("min", "max"):
            raise ValueError("best_mode is 'min' or 'max'")


@dataclass(frozen=True)
class StepInfo:
    step: int
    created: float = 0.0
    metrics: dict[str, float] | None = None


def plan_job_deletions(steps: list[StepInfo], policy: JobRetention, *, newest_complete: int | None) -> list[int]:
    """The complete steps a job's retention deletes, oldest first; never the newest complete one."""
    if newest_complete is None or not steps:
        return []
    ordered = sorted(steps, key=lambda s: s.step)
    keep: set[int] = {s.step for s in ordered if s.step >= newest_complete}
    if policy.max_to_keep is None:
        return []
    if policy.best_metric or policy.best_fn:
        def score(s: StepInfo) -> float | None:
            if not s.metrics:
                return None
            if policy.best_fn is not None:
                return float(policy.best_fn(s.metrics))
            value = s.metrics.get(policy.best_metric or "")
            return None if value is None else float(value)

        scored = [(score(s), s) for s in ordered]
        if policy.keep_checkpoints_without_metrics:
            keep |= {s.step for v, s in scored if v is None}
        ranked = sorted([(v, s.step) for v, s in scored if v is not None], reverse=policy.best_mode == "max")
        keep |= {step for _, step in ranked[: policy.max_to_keep]}
    else:
        keep |= {s.step for s in ordered[-policy.max_to_keep :]}
    if policy.keep_period:
        keep |= {s.step for s in ordered if s.step % policy.keep_period == 0}
    if policy.keep_time_interval:
        last = None
        for s in ordered:
            if last is None or s.created - last >= policy.keep_time_interval:
                keep.add(s.step)
                last = s.created
    return [s.step for s in ordered if s.step not in keep]
