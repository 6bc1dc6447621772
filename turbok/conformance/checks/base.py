"""The contract between the runner and a check, and the context a check works in.

A check is a class with a requirement ``id`` and a ``run(ctx)`` method,
registered with ``@register``. Contract, in call order:

1. The runner builds one ``CheckContext`` per check (client, test namespace,
   options, tracker) and calls ``run(ctx)`` once.
2. ``run`` inspects the cluster (``ctx.client``), creates what it needs only
   through ``ctx.create`` (which labels and tracks it), reports progress with
   ``ctx.step`` and keeps evidence with ``ctx.artifact``.
3. It ends by returning an ``Outcome`` (``passed``, ``failed``, ``skipped``,
   ``unknown``) or by raising one from a helper (``Outcome`` is an exception so
   helpers deep down can end the check: ``raise skipped("no accelerators")``).
4. The runner maps anything else: ``ClusterError`` -> Unknown with the error,
   any other exception -> Unknown "internal error" (a bug, logged with its
   traceback), ``KeyboardInterrupt`` -> Unknown "interrupted" and the run stops.
5. The runner deletes what the check created, whatever the outcome.

Checks never sleep on their own: ``ctx.wait_for`` and ``ctx.sleep`` honour the
poll interval and timeouts of ``CheckOptions`` (tests make them fast).
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import yaml

from turbok.conformance.catalog import Requirement
from turbok.conformance.cleanup import CHECK_LABEL, MANAGED_BY, RUN_LABEL, Tracker
from turbok.conformance.errors import ApiError, ClusterError, ClusterUnreachableError
from turbok.conformance.kube import KubeClient
from turbok.conformance.results import Artifact, Status, Step

__all__ = [
    "REGISTRY",
    "Check",
    "CheckContext",
    "CheckOptions",
    "Outcome",
    "failed",
    "passed",
    "register",
    "skipped",
    "unknown",
]

T = TypeVar("T")


class Outcome(Exception):
    """How a check ended. Raise it or return it."""

    def __init__(self, status: Status, reason: str, *, not_applicable: bool = False, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.not_applicable = not_applicable
        self.details = details or {}


def passed(reason: str, **details: Any) -> Outcome:
    return Outcome(Status.PASSED, reason, details=details)


def failed(reason: str, **details: Any) -> Outcome:
    return Outcome(Status.FAILED, reason, details=details)


def skipped(reason: str, *, not_applicable: bool = False, **details: Any) -> Outcome:
    """Not run. ``not_applicable``: the requirement's own condition is absent (N/A in PRODUCT.yaml)."""
    return Outcome(Status.SKIPPED, reason, not_applicable=not_applicable, details=details)


def unknown(reason: str, **details: Any) -> Outcome:
    return Outcome(Status.UNKNOWN, reason, details=details)


@dataclass
class CheckOptions:
    """Knobs of a run. Durations in seconds. Images must be pullable by the cluster's nodes."""

    timeout: float = 300.0
    poll_interval: float = 2.0
    negative_wait: float = 30.0
    autoscaling_timeout: float = 900.0
    image: str = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
    pause_image: str = "registry.k8s.io/pause:3.10"
    cuda_image: str = "nvcr.io/nvidia/cuda:12.8.1-base-ubuntu24.04"
    sandbox_image: str = "python-runtime-sandbox"
    accelerator_resource: str | None = None
    gateway_class: str | None = None
    sandbox_runtime_class: str | None = None
    metrics_endpoint: str | None = None
    prometheus: str | None = None
    hpa_metric: str = "turbok_conformance_queue_depth"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CheckContext:
    """What a check may touch. One per check; see the module docstring for the contract."""

    client: KubeClient
    requirement: Requirement
    options: CheckOptions
    namespace: str
    run_id: str
    tracker: Tracker
    engine: str = "kubernetes"
    shared: dict[str, Any] = field(default_factory=dict)
    on_step: Callable[[str], None] | None = None
    steps: list[Step] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    sleeper: Callable[[float], None] = time.sleep

    @property
    def id(self) -> str:
        return self.requirement.id

    def step(self, message: str) -> None:
        self.steps.append(Step(time.monotonic() - self.started, message))
        if self.on_step is not None:
            self.on_step(message)

    def artifact(self, title: str, content: str, language: str = "") -> None:
        self.artifacts.append(Artifact(title, content, language))

    def name(self, suffix: str) -> str:
        """A DNS-1123 name unique to this run and check: ``tc-gang-scheduling-ab12cd-fit``."""
        base = re.sub(r"[^a-z0-9-]", "-", f"tc-{self.id}-{self.run_id}-{suffix}".lower())
        return base[:63].strip("-")

    def labels(self, **extra: str) -> dict[str, str]:
        return {**MANAGED_BY, RUN_LABEL: self.run_id, CHECK_LABEL: self.id, **extra}

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` labelled and tracked (namespaced kinds go to the test namespace unless set)."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {}).update(self.labels())
        namespaced = self.client.resource(obj["apiVersion"], obj["kind"]).namespaced
        if namespaced:
            meta.setdefault("namespace", self.namespace)
        kind = obj.get("kind", "?")
        self.artifact(f"{kind} {meta.get('name')}", yaml.safe_dump(obj, sort_keys=False), "yaml")
        created = self.client.create(obj)
        self.tracker.add(created, self.id)
        self.step(f"created {kind} {meta.get('namespace') + '/' if namespaced and meta.get('namespace') else ''}{meta.get('name')}")
        return created

    def sleep(self, seconds: float) -> None:
        self.sleeper(seconds)

    def wait_for(self, probe: Callable[[], T | None], *, timeout: float | None = None, what: str = "") -> T | None:
        """Poll ``probe`` until it returns something not None/False; None after ``timeout``.

        Transient API trouble while polling (connection errors, 429, 5xx) is retried until
        the deadline and raised only if it is still there then.
        """
        limit = self.options.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if what:
            self.step(f"waiting up to {limit:g}s for {what}")
        while True:
            try:
                value = probe()
                transient: ClusterError | None = None
            except ClusterError as e:
                if not _transient(e):
                    raise
                value, transient = None, e
            if value is not None and value is not False:
                return value
            if time.monotonic() >= deadline:
                if transient is not None:
                    raise transient
                return None
            self.sleep(min(self.options.poll_interval, max(0.0, deadline - time.monotonic())))


def _transient(error: ClusterError) -> bool:
    if isinstance(error, ClusterUnreachableError):
        return True
    return isinstance(error, ApiError) and (error.code == 429 or error.code >= 500)


class Check(ABC):
    """One automated check of one requirement. Subclasses set ``id`` and ``plan``."""

    id: ClassVar[str]
    plan: ClassVar[str]

    @abstractmethod
    def run(self, ctx: CheckContext) -> Outcome:
        """Inspect and exercise the cluster; return (or raise) the outcome."""


REGISTRY: dict[str, type[Check]] = {}

C = TypeVar("C", bound=type[Check])


def register(cls: C) -> C:
    if cls.id in REGISTRY:
        raise RuntimeError(f"two checks claim requirement {cls.id}")
    REGISTRY[cls.id] = cls
    return cls
