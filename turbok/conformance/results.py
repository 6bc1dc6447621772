"""What a run found: one ``CheckResult`` per requirement, gathered in a ``RunReport``.

Plain data, no I/O. The runner fills these in; ``reports`` writes them out
(results.json, junit.xml, e2e.log, PRODUCT.yaml, evidence files); the CLI
prints them and turns ``RunReport.exit_code`` into the process exit code.

Statuses: ``Passed``, ``Failed``, ``Skipped`` (with the reason; ``not_applicable``
when the requirement's own condition is absent, e.g. no cluster autoscaler,
which becomes ``N/A`` in PRODUCT.yaml) and ``Unknown`` (the check could not
decide: an unrecognised accelerator, an API error, an interruption; verify by hand).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from turbok.conformance.catalog import Requirement

__all__ = ["Artifact", "CheckResult", "ClusterInfo", "RunReport", "Status", "Step"]


class Status(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    UNKNOWN = "Unknown"


@dataclass
class Step:
    """One thing a check did or saw, ``elapsed`` seconds after it started."""

    elapsed: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"elapsed": round(self.elapsed, 3), "message": self.message}


@dataclass
class Artifact:
    """A piece of evidence kept verbatim: a manifest applied, pod logs, scraped metrics."""

    title: str
    content: str
    language: str = ""


@dataclass
class CheckResult:
    requirement: Requirement
    status: Status
    reason: str
    not_applicable: bool = False
    selected: bool = True
    started_at: str = ""
    duration: float = 0.0
    steps: list[Step] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    evidence: str | None = None

    @property
    def counts_for_exit(self) -> bool:
        """Whether this result can make the run fail: a selected MUST requirement of the checklist measured."""
        return self.selected and self.requirement.counted and self.requirement.level == "MUST"

    @property
    def satisfied(self) -> bool:
        return self.status is Status.PASSED or (self.status is Status.SKIPPED and self.not_applicable)

    def to_dict(self) -> dict[str, Any]:
        r = self.requirement
        return {
            "id": r.id,
            "category": r.category,
            "level": r.level,
            "draft": r.draft,
            "extra": r.extra,
            "selected": self.selected,
            "status": self.status.value,
            "reason": self.reason,
            "notApplicable": self.not_applicable,
            "startedAt": self.started_at,
            "durationSeconds": round(self.duration, 3),
            "evidence": self.evidence,
            "details": self.details,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass
class ClusterInfo:
    server: str
    context: str
    git_version: str = ""
    platform: str = ""
    engine: str = "kubernetes"  # or "turbok" (the embedded control plane)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "context": self.context,
            "gitVersion": self.git_version,
            "platform": self.platform,
            "engine": self.engine,
        }


@dataclass
class RunReport:
    checklist_version: str
    checklist_draft: bool
    cluster: ClusterInfo
    run_id: str
    started_at: str
    finished_at: str = ""
    duration: float = 0.0
    notes: list[str] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)
    namespace: str = ""
    interrupted: bool = False
    dry_run: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    cleanup_deleted: int = 0
    cleanup_leftovers: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for r in self.results:
            if r.selected:
                counts[r.status.value] += 1
        return counts

    @property
    def must_satisfied(self) -> bool:
        """Every selected MUST requirement passed (or is N/A by its own condition)."""
        return all(r.satisfied for r in self.results if r.counts_for_exit)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.dry_run:
            return 0
        return 0 if self.must_satisfied else 1

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "schema": "turbok.dev/conformance-results/v1",
            "runId": self.run_id,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "durationSeconds": round(self.duration, 3),
            "cluster": self.cluster.to_dict(),
            "checklist": {"version": self.checklist_version, "draft": self.checklist_draft},
            "notes": self.notes,
            "namespace": self.namespace,
            "dryRun": self.dry_run,
            "interrupted": self.interrupted,
            "options": self.options,
            "summary": {
                "passed": counts["Passed"],
                "failed": counts["Failed"],
                "skipped": counts["Skipped"],
                "unknown": counts["Unknown"],
                "mustSatisfied": self.must_satisfied,
                "exitCode": self.exit_code,
            },
            "cleanup": {"deleted": self.cleanup_deleted, "leftovers": self.cleanup_leftovers},
            "results": [r.to_dict() for r in self.results],
        }
