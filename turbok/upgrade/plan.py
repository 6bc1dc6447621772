"""The shape of an upgrade or rollback plan: cluster states, steps, rollback points.

A ``Plan`` is an ordered list of ``Step``s. Each step says what to do
(``actions``, in order), the ``ClusterState`` it leaves behind (every
component's binary, emulated and min compatibility version, and etcd), who
supports the step itself (``Support``: upstream Kubernetes, a named vendor, or
nobody), how to get back to the state before it (``Rollback``, labelled the same
way: upstream documents only lowering ``--emulated-version``; a binary minor
downgrade is a vendor feature; anything else needs the etcd snapshot taken in
preflight), and whether it can be skipped. The planner builds these; the report
renders them. No logic beyond small derived values lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from turbok.upgrade.checker import Finding, exit_code
from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.skew import ClusterVersions, Component, Instance
from turbok.upgrade.versions import Version

__all__ = ["ClusterState", "Plan", "Rollback", "Step", "StepKind", "Support"]


class StepKind(StrEnum):
    PREFLIGHT = "preflight"
    ETCD = "etcd"
    APISERVER = "kube-apiserver"
    CONTROLLERS = "controllers"
    EMULATION = "emulated-version"
    CLOUD_CONTROLLER_MANAGER = "cloud-controller-manager"
    NODES = "nodes"


class Support(StrEnum):
    """Who supports a step, or the way back from it.

    ``upstream``: the Kubernetes project documents it (the skew policy, KEP-4330's
    emulated-version rollback). ``vendor``: only named managed services offer it
    (a binary minor downgrade: GKE, EKS); elsewhere it is untested territory.
    ``etcd-snapshot``: nobody offers it in place; restoring the etcd snapshot taken
    in preflight (losing every write since) is the way back. ``unsupported``: a step
    upstream says not to take (skipping kube-apiserver minors). ``not-needed``:
    nothing changed.
    """

    UPSTREAM = "upstream"
    VENDOR = "vendor"
    ETCD_SNAPSHOT = "etcd-snapshot"
    UNSUPPORTED = "unsupported"
    NOT_NEEDED = "not-needed"


@dataclass(frozen=True)
class ClusterState:
    """Every component's version at one point of a plan.

    ``controllers`` are kube-controller-manager and kube-scheduler (they take
    ``--emulated-version``); ``ccm`` is cloud-controller-manager's binary, None
    when the cluster runs none; ``kubelet`` and ``kube_proxy`` the oldest node.
    """

    apiserver: ControlPlaneVersion
    controllers: ControlPlaneVersion
    ccm: Version | None
    kubelet: Version
    kube_proxy: Version
    etcd: Version | None = None

    @property
    def effective(self) -> Version:
        """The minor the control plane behaves as (the apiserver's emulated version)."""
        return self.apiserver.emulated

    def kubectl_range(self) -> tuple[Version, Version]:
        """kubectl versions supported: min compatibility .. emulated + 1 (KEP-4330 "Skew")."""
        return (self.apiserver.min_compat, self.effective.add_minor(1))

    def instances(self, tag: str = "") -> list[Instance]:
        out = [
            Instance(Component.APISERVER, f"apiserver{tag}", self.apiserver.binary, self.apiserver),
            Instance(Component.CONTROLLER_MANAGER, f"kcm{tag}", self.controllers.binary, self.controllers),
            Instance(Component.SCHEDULER, f"scheduler{tag}", self.controllers.binary, self.controllers),
            Instance(Component.KUBELET, f"node{tag}", self.kubelet),
            Instance(Component.KUBE_PROXY, f"node{tag}", self.kube_proxy),
        ]
        if self.ccm is not None:
            out.append(Instance(Component.CLOUD_CONTROLLER_MANAGER, f"ccm{tag}", self.ccm))
        return out

    def versions(self) -> ClusterVersions:
        return ClusterVersions(tuple(self.instances()))

    def with_(self, **changes: Any) -> ClusterState:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.kubectl_range()

        def cp(c: ControlPlaneVersion) -> dict[str, str | None]:
            return {"binary": str(c.binary), "emulatedVersion": str(c.emulated) if c.emulating else None,
                    "minCompatibilityVersion": str(c.min_compat)}

        return {
            "kube-apiserver": cp(self.apiserver),
            "kube-controller-manager": cp(self.controllers),
            "kube-scheduler": cp(self.controllers),
            "cloud-controller-manager": str(self.ccm) if self.ccm is not None else None,
            "kubelet": str(self.kubelet),
            "kube-proxy": str(self.kube_proxy),
            "kubectl": {"min": str(lo), "max": str(hi)},
            "etcd": str(self.etcd) if self.etcd is not None else None,
        }


@dataclass(frozen=True)
class Rollback:
    """How to return to the state before a step, and who supports that way back.

    ``to_step`` is the step whose end state it restores (0 is the starting
    state); ``vendors`` names the managed services that offer it when
    ``support`` is ``vendor``; ``note`` says what the label rests on.
    """

    to_step: int
    support: Support
    actions: tuple[str, ...]
    vendors: tuple[str, ...] = ()
    note: str = ""

    @property
    def safe(self) -> bool:
        """True when upstream Kubernetes documents this way back in place (or nothing changed)."""
        return self.support in (Support.UPSTREAM, Support.NOT_NEEDED)

    def label(self) -> str:
        if self.support is Support.VENDOR:
            return f"vendor ({', '.join(self.vendors)})"
        return str(self.support)

    def to_dict(self) -> dict[str, Any]:
        return {"toStep": self.to_step, "supportedBy": str(self.support), "safe": self.safe,
                "vendors": list(self.vendors), "actions": list(self.actions), "note": self.note or None}


@dataclass(frozen=True)
class Step:
    """One step: what to do, the state after it, who supports it, how to undo it, whether it is optional."""

    number: int
    kind: StepKind
    title: str
    actions: tuple[str, ...]
    state: ClusterState
    rollback: Rollback
    skippable: bool = False
    skip_reason: str = ""
    findings: tuple[Finding, ...] = ()
    support: Support = Support.UPSTREAM
    vendors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def emulated_version(self) -> str:
        """The apiserver's ``--emulated-version`` after this step (``(unset)`` when equal to the binary)."""
        return self.state.apiserver.flag()

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "kind": str(self.kind),
            "title": self.title,
            "actions": list(self.actions),
            "supportedBy": str(self.support),
            "vendors": list(self.vendors),
            "emulatedVersion": str(self.state.apiserver.emulated) if self.state.apiserver.emulating else None,
            "components": self.state.to_dict(),
            "rollback": self.rollback.to_dict(),
            "skippable": self.skippable,
            "skipReason": self.skip_reason or None,
            "notes": list(self.notes),
            "blockers": [f.to_dict() for f in self.findings],
        }


@dataclass
class Plan:
    """An ordered plan from ``start`` to ``target``; ``direction`` is upgrade, rollback or none."""

    direction: str
    strategy: str
    start: ClusterState
    target: Version
    steps: list[Step] = field(default_factory=list)
    skipped_binaries: list[Version] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    supported: bool = True  # False: upstream says not to take some step (skipping kube-apiserver minors)
    warnings: list[str] = field(default_factory=list)  # why it is unsupported, quoting the sources

    @property
    def end(self) -> ClusterState:
        return self.steps[-1].state if self.steps else self.start

    def all_findings(self) -> list[Finding]:
        return self.findings + [f for s in self.steps for f in s.findings]

    @property
    def exit_code(self) -> int:
        return exit_code(self.all_findings())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "UpgradePlan",
            "direction": self.direction,
            "strategy": self.strategy,
            "from": self.start.to_dict(),
            "to": str(self.target),
            "exitCode": self.exit_code,
            "supportedUpstream": self.supported,
            "warnings": self.warnings,
            "skippedBinaries": [str(v) for v in self.skipped_binaries],
            "notes": self.notes,
            "findings": [f.to_dict() for f in self.findings],
            "steps": [s.to_dict() for s in self.steps],
        }
