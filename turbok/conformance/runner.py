"""Run the checks of one checklist against one cluster, and always clean up.

Call order of ``Runner.run``:

1. ask the cluster its version (``/version``) and pick the checklist: the
   one asked for (``--version``), else the cluster's (newer -> newest with a
   note, older -> ``UnsupportedVersionError``);
2. detect the engine: turbok's embedded control plane serves
   ``agents.x-k8s.io`` and no core Pods; anything else is Kubernetes;
3. select requirements with ``--focus``/``--skip`` (regular expressions
   searched in ``category/id``); drafts of later versions are extras;
4. create the labelled test namespace (when the server serves namespaces);
5. run each selected check in checklist order; after each, delete what it
   created; ``Observer`` hears about every start, step and result;
6. finally, even on Ctrl-C: delete whatever is left, then the namespace.

A check never crashes the run: ``ClusterError`` and bugs end it ``Unknown``.
Ctrl-C (``KeyboardInterrupt``) ends the current check ``Unknown``, marks the
rest not run, cleans up and returns a report with ``interrupted`` set.
``--dry-run`` stops after step 3 and returns the plan as Skipped results.
Callers: the CLI (which writes the reports) and the tests.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from turbok.conformance import catalog
from turbok.conformance.catalog import Checklist, Requirement
from turbok.conformance.checks import REGISTRY, CheckContext, CheckOptions, Outcome
from turbok.conformance.cleanup import MANAGED_BY, RUN_LABEL, Tracker
from turbok.conformance.errors import ApiError, ClusterError, InvalidOptionError, UnsupportedVersionError
from turbok.conformance.kube import KubeClient
from turbok.conformance.results import CheckResult, ClusterInfo, RunReport, Status

__all__ = ["Observer", "RunSettings", "Runner", "detect_engine", "select"]

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Hears what the runner does; the CLI draws progress with it. Every method must return quickly."""

    def run_started(self, report: RunReport, selected: list[Requirement]) -> None: ...
    def check_started(self, requirement: Requirement) -> None: ...
    def check_step(self, requirement: Requirement, message: str) -> None: ...
    def check_finished(self, result: CheckResult) -> None: ...
    def cleanup(self, message: str) -> None: ...


class _Silent:
    def run_started(self, report: RunReport, selected: list[Requirement]) -> None: ...
    def check_started(self, requirement: Requirement) -> None: ...
    def check_step(self, requirement: Requirement, message: str) -> None: ...
    def check_finished(self, result: CheckResult) -> None: ...
    def cleanup(self, message: str) -> None: ...


@dataclass
class RunSettings:
    version: str | None = None
    focus: str | None = None
    skip: str | None = None
    include_drafts: bool = True
    dry_run: bool = False
    options: CheckOptions = field(default_factory=CheckOptions)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compile(pattern: str | None, flag: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InvalidOptionError(f"{flag} {pattern!r} is not a regular expression: {e}") from e


def select(requirements: list[Requirement], focus: str | None, skip: str | None) -> list[Requirement]:
    """Requirements whose ``category/id`` matches ``focus`` (if given) and not ``skip``."""
    f, s = _compile(focus, "--focus"), _compile(skip, "--skip")
    return [
        r for r in requirements
        if (f is None or f.search(f"{r.category}/{r.id}")) and not (s is not None and s.search(f"{r.category}/{r.id}"))
    ]


def detect_engine(client: KubeClient, info: dict[str, Any] | None = None) -> str:
    """``turbok`` for turbok's embedded control plane, else ``kubernetes``.

    turbok says so in its ``gitVersion`` (``v1.34.0-turbok.0.1.0``) and publishes its
    router in the kubeconfig; older ones are recognised by Sandboxes served without
    core Pods.
    """
    if "turbok" in str((info or {}).get("gitVersion", "")):
        return "turbok"
    disc = client.discovery
    if disc.has_group("agents.x-k8s.io") and (client.config.router_url or not disc.has_resource("", "pods", "v1")):
        return "turbok"
    return "kubernetes"


def _cluster_version(info: dict[str, Any]) -> tuple[int, int] | None:
    major = re.sub(r"\D", "", str(info.get("major", "")))
    minor = re.sub(r"\D", "", str(info.get("minor", "")))
    if major and minor:
        return int(major), int(minor)
    m = re.match(r"v?(\d+)\.(\d+)", str(info.get("gitVersion", "")))
    return (int(m.group(1)), int(m.group(2))) if m else None


class Runner:
    """One run against one cluster. ``sleeper`` and ``clock`` exist for tests."""

    def __init__(self, client: KubeClient, settings: RunSettings, observer: Observer | None = None,
                 sleeper: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.settings = settings
        self.observer: Observer = observer or _Silent()
        self.sleeper = sleeper
        self.run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
        self.tracker = Tracker(client)
        self._candidates: list[Requirement] = []
        self._shared: dict[str, Any] = {}

    def _checklist(self, info: dict[str, Any], notes: list[str]) -> Checklist:
        cluster = _cluster_version(info)
        if self.settings.version:
            chosen = catalog.checklist(self.settings.version)
            if cluster and f"{cluster[0]}.{cluster[1]}" != chosen.version:
                notes.append(f"checking against the {chosen.version} checklist (--version); the cluster is {cluster[0]}.{cluster[1]}")
            return chosen
        if cluster is None:
            raise UnsupportedVersionError(f"cannot read a Kubernetes version from /version ({info.get('gitVersion', '?')}): pass --version")
        chosen, note = catalog.checklist_for_cluster(*cluster)
        if note:
            notes.append(note)
        return chosen

    def _check_options(self) -> None:
        from turbok.conformance.checks.observability import Endpoint

        opts = self.settings.options
        for flag, value in (("--metrics-endpoint", opts.metrics_endpoint), ("--prometheus", opts.prometheus)):
            if value:
                try:
                    Endpoint(value, "")
                except InvalidOptionError as e:
                    raise InvalidOptionError(f"{flag}: {e}") from e
        select([], self.settings.focus, self.settings.skip)

    def run(self) -> RunReport:
        """Run the selected checks; see the module docstring for the order of things."""
        self._check_options()
        started = time.monotonic()
        info = self.client.version()
        notes: list[str] = []
        checklist = self._checklist(info, notes)
        engine = detect_engine(self.client, info)
        report = RunReport(
            checklist_version=checklist.version, checklist_draft=checklist.draft,
            cluster=ClusterInfo(self.client.config.server, self.client.config.context, str(info.get("gitVersion", "")),
                                str(info.get("platform", "")), engine),
            run_id=self.run_id, started_at=_now(), notes=notes, dry_run=self.settings.dry_run,
            options={"focus": self.settings.focus, "skip": self.settings.skip, "includeDrafts": self.settings.include_drafts,
                     **self.settings.options.to_dict()},
        )
        if engine == "turbok":
            notes.append("turbok embedded control plane: it serves Sandboxes, not Pods; pod-based checks are skipped")
        candidates = list(checklist.requirements)
        if self.settings.include_drafts and not checklist.draft:
            candidates += catalog.newer_requirements(checklist.version)
        self._candidates = candidates
        chosen = select(candidates, self.settings.focus, self.settings.skip)
        chosen_ids = {r.id for r in chosen}
        for r in candidates:
            if r.id not in chosen_ids:
                report.results.append(CheckResult(r, Status.SKIPPED, "not selected (--focus/--skip)", selected=False))
        self.observer.run_started(report, chosen)
        if self.settings.dry_run:
            for r in chosen:
                result = CheckResult(r, Status.SKIPPED, f"dry run: {REGISTRY[r.id].plan}")
                report.results.append(result)
                self.observer.check_finished(result)
            return self._finish(report, started)
        try:
            report.namespace = self._namespace(report)
            for requirement in chosen:
                result = self._run_one(requirement, report, engine)
                report.results.append(result)
                self.observer.check_finished(result)
                if report.interrupted:
                    break
            done = {r.requirement.id for r in report.results}
            for requirement in chosen:
                if requirement.id not in done:
                    report.results.append(CheckResult(requirement, Status.SKIPPED, "not run: the run was interrupted"))
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            self._cleanup(report)
        return self._finish(report, started)

    def _finish(self, report: RunReport, started: float) -> RunReport:
        order = {r.id: i for i, r in enumerate(self._candidates)}
        report.results.sort(key=lambda res: order.get(res.requirement.id, len(order)))
        report.finished_at = _now()
        report.duration = time.monotonic() - started
        return report

    def _namespace(self, report: RunReport) -> str:
        """A fresh labelled namespace for the run's objects; the context's namespace when that is impossible."""
        if not self.client.discovery.has_resource("", "namespaces", "v1"):
            return self.client.config.namespace
        name = f"turbok-conformance-{self.run_id}"
        obj = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": {**MANAGED_BY, RUN_LABEL: self.run_id}}}
        try:
            created = self.client.create(obj)
        except ApiError as e:
            log.info("cannot create namespace %s: %s", name, e)
            report.notes.append(f"could not create namespace {name} ({e.code} {e.reason}); objects go to {self.client.config.namespace}")
            return self.client.config.namespace
        self.tracker.add(created, "")
        return name

    def _run_one(self, requirement: Requirement, report: RunReport, engine: str) -> CheckResult:
        check = REGISTRY[requirement.id]()
        ctx = CheckContext(
            client=self.client, requirement=requirement, options=self.settings.options, namespace=report.namespace,
            run_id=self.run_id, tracker=self.tracker, engine=engine, shared=self._shared,
            on_step=lambda m: self.observer.check_step(requirement, m), sleeper=self.sleeper,
        )
        self.observer.check_started(requirement)
        result = CheckResult(requirement, Status.UNKNOWN, "", started_at=_now())
        try:
            outcome = check.run(ctx)
        except Outcome as o:
            outcome = o
        except ClusterError as e:
            outcome = Outcome(Status.UNKNOWN, f"cluster error: {e}")
        except KeyboardInterrupt:
            report.interrupted = True
            outcome = Outcome(Status.UNKNOWN, "interrupted (Ctrl-C)")
        except Exception as e:  # a bug in a check must not stop the others
            log.exception("check %s crashed", requirement.id)
            ctx.artifact("internal error", traceback.format_exc())
            outcome = Outcome(Status.UNKNOWN, f"internal error in the check: {type(e).__name__}: {e}")
        result.status, result.reason = outcome.status, outcome.reason
        result.not_applicable, result.details = outcome.not_applicable, outcome.details
        ctx.step(f"{outcome.status.value}: {outcome.reason}")
        try:
            deleted, leftovers = self.tracker.cleanup(requirement.id)
            if deleted:
                ctx.step(f"deleted {deleted} object(s) it created")
            for left in leftovers:
                ctx.step(f"could not delete {left}")
        except KeyboardInterrupt:
            report.interrupted = True
        result.duration = time.monotonic() - ctx.started
        result.steps, result.artifacts = ctx.steps, ctx.artifacts
        return result

    def _cleanup(self, report: RunReport) -> None:
        pending = self.tracker.pending()
        if not pending:
            return
        self.observer.cleanup(f"deleting {len(pending)} object(s) created by this run")
        try:
            deleted, leftovers = self.tracker.cleanup(on_delete=lambda t: self.observer.cleanup(f"deleted {t}"))
        except KeyboardInterrupt:
            report.interrupted = True
            deleted, leftovers = 0, [str(t) for t in self.tracker.pending()]
        report.cleanup_deleted += deleted
        report.cleanup_leftovers += leftovers
        if leftovers:
            self.observer.cleanup(f"{len(leftovers)} object(s) left behind: run `turbok conformance run --cleanup`")
