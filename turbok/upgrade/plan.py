"""The shape of an upgrade or rollback plan: cluster states, steps, rollback points.

A ``Plan`` is an ordered list of ``Step``s. Each step says what to do
(``actions``, in order), the ``ClusterState`` it leaves behind (every
component's binary, emulated and min compatibility version), how to get back
to the state before it (``Rollback``: safe when the KEP-4330 emulation rules
allow it, otherwise a restore from the etcd snapshot taken in preflight), and
whether it can be skipped. The planner builds these; the report renders them.
No logic beyond small derived values lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from turbok.upgrade.checker import Finding, exit_code
from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.skew import ClusterVersions, Component, Instance
from turbok.upgrade.versions import Version

__all__ = ["ClusterState", "Plan", "Rollback", "Step", "StepKind"]


class StepKind(StrEnum):
    PREFLIGHT = "preflight"
    APISERVER = "kube-apiserver"
    CONTROLLERS = "controllers"
    EMULATION = "emulated-version"
    CLOUD_CONTROLLER_MANAGER = "cloud-controller-manager"
    NODES = "nodes"


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

    @property
    def effective(self) -> Version:
        """The minor the control plane behaves as (the apiserver's emulated version)."""
        return self.apiserver.emulated

    def kubectl_range(self) -> tuple[Version, Version]:
        return (self.effective.add_minor(-1), self.effective.add_minor(1))

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
        }


@dataclass(frozen=True)
class Rollback:
    """How to return to the state before a step.

    ``safe`` is False when the only way back is restoring the etcd snapshot
    (losing every write since); ``to_step`` is the step whose end state it
    restores (0 is the starting state).
    """

    to_step: int
    safe: bool
    actions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"toStep": self.to_step, "safe": self.safe, "actions": list(self.actions)}


@dataclass(frozen=True)
class Step:
    """One step: what to do, the state after it, how to undo it, whether it is optional."""

    number: int
    kind: StepKind
    title: str
    actions: tuple[str, ...]
    state: ClusterState
    rollback: Rollback
    skippable: bool = False
    skip_reason: str = ""
    findings: tuple[Finding, ...] = ()

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
            "emulatedVersion": str(self.state.apiserver.emulated) if self.state.apiserver.emulating else None,
            "components": self.state.to_dict(),
            "rollback": self.rollback.to_dict(),
            "skippable": self.skippable,
            "skipReason": self.skip_reason or None,
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
            "skippedBinaries": [str(v) for v in self.skipped_binaries],
            "notes": self.notes,
            "findings": [f.to_dict() for f in self.findings],
            "steps": [s.to_dict() for s in self.steps],
        }
