"""Findings: what would break at a target version, and the CI exit code they add up to.

Three kinds of evidence become ``Finding`` records:

* objects (from manifests, Helm output or a live cluster) whose apiVersion +
  kind the target release removed, deprecates, or does not serve yet; beta
  versions the target serves only when ``--runtime-config`` turns them on
  (every beta API since 1.24, KEP-3136), and alpha versions (always off by
  default, no upgrade guarantees, not usable with ``--emulated-version``);
* component versions outside the skew policy, now or once the control plane
  is at the target;
* feature gates a cluster reports: alpha gates switched on (not supported
  under ``--emulated-version``, KEP-4330 non-goals) and deprecated ones.

Exit codes (documented in docs/upgrade.md): 0 clean, 2 warnings (deprecated
APIs, APIs off by default, alpha APIs and gates), 3 blockers (removed or
unavailable APIs, skew violations, flags and feature gates the target binary
refuses).
Usage and input errors exit 1 from the CLI, never from here.

Pure functions over data; called by the CLI and the planner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from turbok.upgrade.apis import ApiCatalog, ApiStatus
from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.manifests import ManifestObject
from turbok.upgrade.skew import (
    KEP_4330_URL,
    ClusterVersions,
    Component,
    Instance,
    SkewViolation,
    check_skew,
    mixed_binaries,
)
from turbok.upgrade.versions import Version

__all__ = [
    "CheckReport",
    "FeatureGate",
    "Finding",
    "FindingKind",
    "Severity",
    "check_feature_gates",
    "check_objects",
    "check_skew_now",
    "check_skew_at",
    "exit_code",
]

FEATURE_GATES_URL = "https://kubernetes.io/docs/reference/command-line-tools-reference/feature-gates/"
KEP_3136_URL = "https://github.com/kubernetes/enhancements/tree/master/keps/sig-architecture/3136-beta-apis-off-by-default"


class Severity(IntEnum):
    """How bad a finding is; the value is the exit code it contributes."""

    INFO = 0
    WARNING = 2
    BLOCKER = 3


class FindingKind(StrEnum):
    REMOVED = "removed"
    UNAVAILABLE = "unavailable"
    DEPRECATED = "deprecated"
    OFF_BY_DEFAULT = "off-by-default"
    ALPHA = "alpha-api"
    SKEW = "skew"
    FEATURE_GATE = "feature-gate"
    FLAG = "flag"
    ETCD = "etcd"


@dataclass(frozen=True)
class Finding:
    """One thing that breaks (BLOCKER), warns (WARNING) or is worth knowing (INFO)."""

    kind: FindingKind
    severity: Severity
    subject: str
    message: str
    where: str = ""
    api_version: str = ""
    replacement: str = ""
    deprecated_in: str = ""
    removed_in: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "severity": self.severity.name.lower(),
            "subject": self.subject,
            "message": self.message,
            "where": self.where,
            "apiVersion": self.api_version,
            "replacement": self.replacement,
            "deprecatedIn": self.deprecated_in,
            "removedIn": self.removed_in,
            "source": self.source,
        }


@dataclass(frozen=True)
class FeatureGate:
    """A gate as ``kubernetes_feature_enabled`` reports it (stage ``""`` means GA)."""

    name: str
    stage: str
    enabled: bool


def exit_code(findings: Iterable[Finding]) -> int:
    """0 clean, 2 when the worst finding is a warning, 3 when any is a blocker."""
    return max((int(f.severity) for f in findings), default=0)


def check_objects(objects: Iterable[ManifestObject], target: Version, catalog: ApiCatalog,
                  *, current: Version | None = None) -> list[Finding]:
    """Findings for objects at ``target`` (the control plane's emulated version).

    Objects seen through ``managedFields`` are reported only when ``current``
    still serves their apiVersion: an entry written before the removal is
    history, not a client that will break.
    """
    out: list[Finding] = []
    for obj in objects:
        if obj.origin.startswith("managedFields") and current is not None:
            now = catalog.availability(obj.api_version, obj.kind, current).status
            if now not in (ApiStatus.SERVED, ApiStatus.DEPRECATED):
                continue
        finding = _object_finding(obj, target, catalog)
        if finding is not None:
            out.append(finding)
    return out


def _runtime_config(api_version: str) -> str:
    return f"--runtime-config={api_version}=true"


def _off_by_default(api_version: str, stage: str) -> str:
    if stage == "alpha":
        return (f"{api_version} is an alpha API: off by default (it needs {_runtime_config(api_version)} and its "
                "feature gate), with no upgrade or rollback guarantees, and alpha APIs cannot be used together with "
                "--emulated-version (KEP-4330)")
    return (f"{api_version} is a beta API that kube-apiserver serves only when {_runtime_config(api_version)} "
            "turns it on (beta APIs are off by default since 1.24, KEP-3136)")


def _object_finding(obj: ManifestObject, target: Version, catalog: ApiCatalog) -> Finding | None:
    a = catalog.availability(obj.api_version, obj.kind, target)
    e = a.entry
    if a.status is ApiStatus.REMOVED and e is not None:
        use = f"use {a.replacement}" if a.replacement else "no replacement API exists"
        return Finding(
            FindingKind.REMOVED, Severity.BLOCKER, obj.ref(),
            f"{obj.api_version} {obj.kind} is not served since {e.removed_in}: {use}. {e.notes}".strip(),
            obj.where(), obj.api_version, a.replacement or "", str(e.deprecated_in), str(e.removed_in), e.source)
    if a.status is ApiStatus.DEPRECATED and e is not None:
        if e.removed_in is None:
            when = "no removal is planned"
        else:
            when = f"planned for removal in {e.removed_in}" if a.planned_removal else f"removed in {e.removed_in}"
        off = f" It is also off by default: {_off_by_default(obj.api_version, a.stage)}." if not a.enabled_by_default else ""
        return Finding(
            FindingKind.DEPRECATED, Severity.WARNING, obj.ref(),
            f"{obj.api_version} {obj.kind} is deprecated since {e.deprecated_in} and {when}: "
            f"migrate to {a.replacement or 'a supported API'}.{off} {e.notes}".strip(),
            obj.where(), obj.api_version, a.replacement or "", str(e.deprecated_in),
            str(e.removed_in) if e.removed_in is not None else "", e.source)
    if a.status is ApiStatus.UNAVAILABLE and a.introduced_in is not None:
        return Finding(
            FindingKind.UNAVAILABLE, Severity.BLOCKER, obj.ref(),
            f"{obj.api_version} {obj.kind} is first served in {a.introduced_in}; a {target.mm} control plane "
            f"cannot serve it (keep an older apiVersion for this object until then)",
            obj.where(), obj.api_version, source="https://github.com/kubernetes/api")
    # custom resources (UNKNOWN) are never judged: "v1alpha1" of a CRD says nothing about kube-apiserver
    if a.status is ApiStatus.SERVED and not a.enabled_by_default:
        kind = FindingKind.ALPHA if a.stage == "alpha" else FindingKind.OFF_BY_DEFAULT
        source = (KEP_4330_URL.replace("#skew", "#non-goals") if a.stage == "alpha" else KEP_3136_URL)
        return Finding(kind, Severity.WARNING, obj.ref(), f"{_off_by_default(obj.api_version, a.stage)} at {target.mm}.",
                       obj.where(), obj.api_version, source=source)
    return None


def _skew_finding(v: SkewViolation, context: str) -> Finding:
    return Finding(FindingKind.SKEW, Severity.BLOCKER, f"{v.component} {v.instance}", f"{context}{v.message()}",
                   where="cluster", source=v.source)


def check_skew_now(versions: ClusterVersions) -> list[Finding]:
    """Skew violations in the versions a cluster reports today (and apiserver binaries no rule covers)."""
    out = [_skew_finding(v, "") for v in check_skew(versions)]
    mixed = mixed_binaries(versions)
    if mixed:
        out.append(Finding(FindingKind.SKEW, Severity.INFO, "kube-apiserver binaries", mixed, where="cluster",
                           source=KEP_4330_URL))
    return out


def check_skew_at(versions: ClusterVersions, target: Version) -> list[Finding]:
    """Violations once every control-plane component runs ``target`` and nodes stay as they are.

    Nodes too old for the target (or newer than a rollback target) must move
    before the control plane does.
    """
    cp = ControlPlaneVersion.of(target)
    moved: list[Instance] = []
    for i in versions.instances:
        if i.component in (Component.APISERVER, Component.CONTROLLER_MANAGER, Component.SCHEDULER):
            moved.append(Instance(i.component, i.name, target, cp))
        elif i.component is Component.CLOUD_CONTROLLER_MANAGER:
            moved.append(Instance(i.component, i.name, target))
        else:
            moved.append(i)
    if not versions.of(Component.APISERVER):
        moved.append(Instance(Component.APISERVER, "(target)", target, cp))
    current = check_skew(versions)
    already = {(v.component, v.instance) for v in current}
    return [_skew_finding(v, f"with the control plane at {target.mm}: ")
            for v in check_skew(ClusterVersions(tuple(moved)))
            if (v.component, v.instance) not in already]


def check_feature_gates(gates: Sequence[FeatureGate]) -> list[Finding]:
    """Alpha gates switched on are warnings; deprecated gates switched on are info."""
    out: list[Finding] = []
    for g in sorted(gates, key=lambda g: g.name):
        if not g.enabled:
            continue
        stage = g.stage.upper()
        if stage == "ALPHA":
            out.append(Finding(
                FindingKind.FEATURE_GATE, Severity.WARNING, f"feature gate {g.name}",
                f"alpha feature gate {g.name} is enabled: alpha features have no upgrade or rollback guarantees and "
                f"KEP-4330 does not support them under --emulated-version; disable it before an emulated upgrade",
                where="kube-apiserver /metrics", source=KEP_4330_URL.replace("#skew", "#non-goals")))
        elif stage == "DEPRECATED":
            out.append(Finding(
                FindingKind.FEATURE_GATE, Severity.INFO, f"feature gate {g.name}",
                f"deprecated feature gate {g.name} is enabled: it will be removed; if --feature-gates sets it, "
                f"drop it before the release that removes it or the component will not start",
                where="kube-apiserver /metrics", source=FEATURE_GATES_URL))
    return out


@dataclass
class CheckReport:
    """Everything ``turbok upgrade check`` found, ready to render."""

    target: Version
    findings: list[Finding] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[str(f.kind)] = out.get(str(f.kind), 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "UpgradeCheck",
            "target": str(self.target),
            "exitCode": self.exit_code,
            "summary": self.counts(),
            "inputs": self.inputs,
            "notes": self.notes,
            "findings": [f.to_dict() for f in self.findings],
        }
