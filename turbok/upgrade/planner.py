"""The planner: ordered, skew-checked upgrade and rollback plans for a control plane.

Upgrades (``target`` newer than the control plane's emulated version):

* ``skip`` (what ``auto`` picks when emulation is possible): install the newest
  binary that can emulate the current version (skipping intermediate
  binaries), with ``--emulated-version`` pinned; then raise the emulated
  version one minor per step (KEP-4330 "Motivation": skip-level binary upgrade,
  stepwise emulation upgrade).
* ``minor``: one binary minor at a time, each installed emulating the previous
  minor and then switched over (KEP-4330 "Story 1").
* ``classic``: one minor at a time without emulation, the version skew policy's
  upgrade order. Steps whose binary is 1.31 or older can only be undone by
  restoring etcd.
* Versions below 1.31 cannot be emulated by any binary, so every strategy
  climbs classically to 1.31 first.

Rollbacks (``target`` older than the emulated version) lower the emulated
version one minor per step, nodes and controllers first, as far as the min
compatibility version allows, then optionally reinstall the older binaries;
anything beyond that window is refused with the reason.

Every step is proven against ``skew.check_skew`` for its end state and for the
mixed states while it runs (HA apiservers half-done, controllers behind), so a
plan that violates the policy is a bug, not an output.
Called by the CLI; pure (no I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from turbok.upgrade.apis import ApiCatalog, api_catalog
from turbok.upgrade.checker import Finding, FindingKind, check_objects
from turbok.upgrade.emulation import ControlPlaneVersion, can_emulate, emulation_floor, rollback_window
from turbok.upgrade.errors import PlanRefusedError
from turbok.upgrade.manifests import ManifestObject
from turbok.upgrade.plan import ClusterState, Plan, Rollback, Step, StepKind
from turbok.upgrade.skew import (
    ClusterVersions,
    Component,
    Instance,
    SkewViolation,
    check_skew,
    node_lag_limit,
)
from turbok.upgrade.steps import Phase, StepText
from turbok.upgrade.versions import ReleaseCatalog, Version, catalog

__all__ = ["PlanRequest", "Strategy", "make_plan", "start_state"]


class Strategy(StrEnum):
    AUTO = "auto"
    SKIP = "skip"
    MINOR = "minor"
    CLASSIC = "classic"


@dataclass(frozen=True)
class PlanRequest:
    """What to plan: from ``start`` to ``target`` (a minor or a patch) with ``strategy``.

    ``objects`` (manifests or live objects) are checked at every version the
    plan passes through; a removal becomes a blocker on the step that would
    break it.
    """

    start: ClusterState
    target: Version
    strategy: Strategy = Strategy.AUTO
    objects: Sequence[ManifestObject] = ()


def start_state(binary: Version, *, emulated: Version | None = None, min_compat: Version | None = None,
                kubelet: Version | None = None, kube_proxy: Version | None = None,
                ccm: Version | None = None) -> ClusterState:
    """A starting state: control plane at ``binary`` (optionally emulating), nodes at ``binary`` unless given."""
    cp = ControlPlaneVersion.of(binary, emulated, min_compat)
    node = kubelet or (binary if not cp.emulating else cp.emulated)  # nodes are never newer than the emulated version
    return ClusterState(apiserver=cp, controllers=cp, ccm=ccm, kubelet=node, kube_proxy=kube_proxy or node)


def make_plan(request: PlanRequest, *, releases: ReleaseCatalog | None = None, apis: ApiCatalog | None = None) -> Plan:
    """Plan ``request``; raises ``PlanRefusedError`` when no safe plan exists."""
    releases = releases or catalog()
    start, strategy = request.start, request.strategy
    releases.require(start.apiserver.binary, what="--from")
    target = releases.resolve(request.target, what="--to")
    if request.target.patch is None and target.same_minor(start.apiserver.binary) and start.apiserver.binary > target:
        target = start.apiserver.binary  # "--to 1.36" on a patch newer than the data knows: already there
    b = _Builder(start, releases, apis or api_catalog(), request.objects)
    for v in (start.apiserver.binary, request.target):
        if releases.is_newer_than_data(v):
            b.notes.append(f"{v} is newer than turbok's release data (newest known {releases.latest(v)}, as of {releases.as_of})")
    effective = start.effective
    same_unknown_patch = start.apiserver.binary.patch is None and request.target.patch is None
    if target.mm > effective:
        direction = "upgrade"
        if strategy is Strategy.AUTO:
            strategy = Strategy.SKIP
        b.preflight(target, upgrade=True)
        _upgrade(b, target, strategy)
    elif target.mm < effective:
        direction, strategy = "rollback", Strategy.AUTO
        b.preflight(target, upgrade=False)
        _rollback(b, target)
    elif target.mm < start.apiserver.binary.mm or (target != start.apiserver.binary and not same_unknown_patch):
        direction = "upgrade" if target > start.apiserver.binary else "rollback"
        b.preflight(target, upgrade=direction == "upgrade")
        _same_minor(b, target)
    else:
        direction = "none"
        b.notes.append(f"the control plane already runs {target}")
    return Plan(direction, str(strategy), start, target, b.steps, b.skipped, b.notes, b.initial)


# --- upgrades -----------------------------------------------------------------------------------


def _upgrade(b: _Builder, target: Version, strategy: Strategy) -> None:
    while b.state.effective < target.mm:
        cp = b.state.apiserver
        if cp.emulating:
            b.raise_emulation(target)
            continue
        nxt = _next_binary(b, target, strategy)
        if nxt is None:
            b.classic_minor(target)
        else:
            b.install_emulating(nxt, target)
    if b.state.apiserver.emulating:
        cp = b.state.apiserver
        b.notes.append(f"the {cp.binary} binaries stay, emulating {target.mm}; to run {target} binaries instead, plan "
                       f"that afterwards with --from {cp.binary} --from-emulated-version {target.mm} --to {target}")
    b.optional_nodes(target)


def _next_binary(b: _Builder, target: Version, strategy: Strategy) -> Version | None:
    """The binary minor to install emulating the current version, or None for a classic step."""
    e = b.state.effective
    if strategy is Strategy.CLASSIC:
        return None
    if strategy is Strategy.MINOR:
        n = e.add_minor(1)
        return n if can_emulate(n, e) else None
    best = None
    for m in b.releases.minors(e.add_minor(1), target):
        if can_emulate(m, e):
            best = m
    return best


def _same_minor(b: _Builder, target: Version) -> None:
    """Patch upgrades and downgrades, or reinstalling the emulated minor's binaries."""
    if target > b.state.apiserver.binary:
        b.patch_upgrade(target)
    else:
        b.reinstall_binaries(target, optional=False)


# --- rollbacks ----------------------------------------------------------------------------------


def _rollback(b: _Builder, target: Version) -> None:
    cp = b.state.apiserver
    r = target.mm
    if cp.binary.minor < 32:
        raise PlanRefusedError(
            f"cannot roll back {cp} to {r}: a {cp.binary.mm} control plane cannot emulate an older version "
            f"(--emulated-version rollbacks start with 1.32 binaries, KEP-4330), so a minor rollback is unsupported; "
            f"restore the etcd snapshot taken before the upgrade instead"
        )
    floor = emulation_floor(cp.binary)
    window = rollback_window(cp)
    if floor is not None and r < floor:
        raise PlanRefusedError(
            f"cannot roll back {cp} to {r}: a {cp.binary.mm} binary can emulate {floor}..{cp.binary.mm} only "
            f"(the emulation window); restore the etcd snapshot taken before the upgrade instead"
        )
    if window is None or r < window[0]:
        raise PlanRefusedError(
            f"cannot roll back {cp} to {r}: its min compatibility version is {cp.min_compat}, the oldest version "
            f"its stored data and features stay compatible with, so it can roll back to {cp.min_compat} at the oldest; "
            f"roll back to {cp.min_compat}, or restore the etcd snapshot taken before the upgrade "
            f"(from 1.35, set --min-compatibility-version before raising --emulated-version to keep a wider window)"
        )
    m = b.state.effective.add_minor(-1)
    while m >= r:
        b.lower_emulation(m)
        m = m.add_minor(-1)
    b.reinstall_binaries(target, optional=True)


# --- the builder: one method per kind of step -----------------------------------------------------


class _Builder:
    def __init__(self, start: ClusterState, releases: ReleaseCatalog, apis: ApiCatalog,
                 objects: Sequence[ManifestObject]) -> None:
        self.state = start
        self.releases = releases
        self.apis = apis
        self.objects = objects
        self.steps: list[Step] = []
        self.notes: list[str] = []
        self.skipped: list[Version] = []
        self.text = StepText()
        self._start_effective = start.effective
        self._baseline = _keys(check_skew(start.versions()))
        self._reported: set[tuple[str, str, str]] = set()
        # objects already broken at the start: blockers before any step, not on the first that moves
        self.initial = list(self._blockers(start.effective))

    def latest(self, minor: Version, target: Version) -> Version:
        """The binary to install for ``minor``: the target itself, else that minor's newest patch."""
        return target if minor.same_minor(target) else self.releases.latest(minor)

    def add(self, kind: StepKind, title: str, actions: Iterable[str], new: ClusterState, order: Sequence[Phase],
            back: Iterable[str], *, safe: bool = True, skippable: bool = False, reason: str = "") -> None:
        self._prove(new, order, title)
        findings: tuple[Finding, ...] = ()
        if new.effective != self.state.effective:
            findings = self._blockers(new.effective)
        n = len(self.steps)
        self.steps.append(Step(n + 1, kind, title, tuple(actions), new, Rollback(n, safe, tuple(back)),
                               skippable, reason, findings))
        self.state = new

    def preflight(self, target: Version, *, upgrade: bool) -> None:
        cp = self.state.apiserver
        newest = self.releases.latest(cp.binary) if self.releases.knows(cp.binary) else cp.binary
        actions = self.text.preflight(self.state, target, upgrade=upgrade, newest_patch=newest)
        self.add(StepKind.PREFLIGHT, "Preflight: back up etcd and clear blockers", actions, self.state, (),
                 ("nothing changed: no rollback needed",))

    def nodes_to(self, version: Version, *, optional: bool = False, reason: str = "") -> None:
        old = self.state
        new = old.with_(kubelet=version, kube_proxy=version)
        verb = "Upgrade" if version > old.kubelet else "Downgrade"
        self.add(StepKind.NODES, f"{verb} kubelet and kube-proxy to {version}", self.text.nodes(old, version), new,
                 ("nodes",), self.text.nodes_back(old), skippable=optional, reason=reason)

    def ensure_nodes_for(self, effective: Version) -> None:
        """Before the control plane behaves as ``effective``, nodes must be within the lag limit."""
        for v in (self.state.kubelet, self.state.kube_proxy):
            if v.mm < effective.add_minor(-node_lag_limit(v)):
                self.nodes_to(self.releases.latest(self.state.effective))
                return

    def ensure_controllers_for(self, lo: Version) -> None:
        """Controllers (and cloud-controller-manager) lagging below ``lo`` catch up to the current version first.

        The next apiserver state is compatible back to ``lo`` only (its min
        compatibility version): a controller-manager one minor behind, fine
        today, would fall out of skew while the apiservers move.
        """
        e = self.state.effective
        if self.state.controllers.emulated < lo:
            cp = self.state.apiserver
            # the apiservers' own binary: never newer than theirs, and already tested in this cluster
            catch_up = ControlPlaneVersion.of(cp.binary, e)
            self._controllers(catch_up)
        if self.state.ccm is not None and self.state.ccm.mm < lo:
            old = self.state.ccm
            new = self.releases.latest(e)
            self.add(StepKind.CLOUD_CONTROLLER_MANAGER, f"Upgrade cloud-controller-manager to {new}",
                     self.text.ccm(old, new), self.state.with_(ccm=new), ("ccm",), self.text.ccm_back(old))

    def install_emulating(self, binary_minor: Version, target: Version) -> None:
        old = self.state
        e = old.effective
        binary = self.latest(binary_minor, target)
        skipped = [m for m in self.releases.minors(old.apiserver.binary.add_minor(1), binary_minor) if m != binary_minor]
        self.skipped.extend(skipped)
        cp = ControlPlaneVersion.of(binary, e)
        self.ensure_controllers_for(cp.min_compat)
        old = self.state
        new = old.with_(apiserver=cp)
        self.add(StepKind.APISERVER, f"Install kube-apiserver {binary} emulating {e}",
                 self.text.apiserver(old, cp, skipped), new, ("apiserver",), self.text.apiserver_back(old))
        self._controllers(cp)

    def _controllers(self, cp: ControlPlaneVersion, *, skippable: bool = False, reason: str = "") -> None:
        old = self.state
        new = old.with_(controllers=cp)
        self.add(StepKind.CONTROLLERS, f"Install kube-controller-manager and kube-scheduler {cp}",
                 self.text.controllers(cp), new, ("controllers",), self.text.controllers_back(old.controllers),
                 skippable=skippable, reason=reason)

    def raise_emulation(self, target: Version) -> None:
        old = self.state
        n = old.effective.add_minor(1)
        self.ensure_nodes_for(n)
        cp = ControlPlaneVersion.of(old.apiserver.binary, n)
        self.ensure_controllers_for(cp.min_compat)
        old = self.state
        new = old.with_(apiserver=cp, controllers=ControlPlaneVersion.of(old.controllers.binary, n))
        title = (f"Remove --emulated-version: behave as {n}" if not cp.emulating else f"Raise --emulated-version to {n}")
        self.add(StepKind.EMULATION, title, self.text.raise_emulation(old, n), new, ("apiserver", "controllers"),
                 self.text.raise_emulation_back(old))
        self._ccm_follow(target)

    def _ccm_follow(self, target: Version) -> None:
        """cloud-controller-manager cannot emulate: its binary follows the apiserver's emulated version."""
        old = self.state
        if old.ccm is None or old.ccm.mm == old.effective:
            return
        binary = self.latest(old.effective, target)
        self.add(StepKind.CLOUD_CONTROLLER_MANAGER, f"{'Upgrade' if binary > old.ccm else 'Downgrade'} "
                 f"cloud-controller-manager to {binary}", self.text.ccm(old.ccm, binary), old.with_(ccm=binary),
                 ("ccm",), self.text.ccm_back(old.ccm))

    def classic_minor(self, target: Version) -> None:
        old = self.state
        n = old.effective.add_minor(1)
        self.ensure_nodes_for(n)
        binary = self.latest(n, target)
        cp = ControlPlaneVersion.of(binary)
        self.ensure_controllers_for(cp.min_compat)
        old = self.state
        skippable, reason = self._could_skip(n, target)
        safe = binary.minor >= 32
        self.add(StepKind.APISERVER, f"Upgrade kube-apiserver to {binary}", self.text.apiserver(old, cp, []),
                 old.with_(apiserver=cp), ("apiserver",), self.text.classic_back(old, cp), safe=safe,
                 skippable=skippable, reason=reason)
        self._controllers(cp)
        self._ccm_follow(target)

    def _could_skip(self, n: Version, target: Version) -> tuple[bool, str]:
        e = self.state.effective
        later = [m for m in self.releases.minors(n.add_minor(1), target) if can_emulate(m, e)]
        if not later:
            return False, ""
        m = later[-1]
        return True, f"a {m} binary can emulate {e}: install it directly with --emulated-version={e} (--strategy skip)"

    def patch_upgrade(self, target: Version) -> None:
        old = self.state
        cp = ControlPlaneVersion.of(target, old.apiserver.emulated if old.apiserver.emulating else None)
        self.add(StepKind.APISERVER, f"Upgrade kube-apiserver to {target}", self.text.apiserver(old, cp, []),
                 old.with_(apiserver=cp), ("apiserver",), self.text.apiserver_back(old))
        self._controllers(cp)
        if old.ccm is not None and old.ccm < target and old.ccm.same_minor(target):
            self.add(StepKind.CLOUD_CONTROLLER_MANAGER, f"Upgrade cloud-controller-manager to {target}",
                     self.text.ccm(old.ccm, target), self.state.with_(ccm=target), ("ccm",), self.text.ccm_back(old.ccm))
        self.optional_nodes(target)

    def lower_emulation(self, m: Version) -> None:
        old = self.state
        if old.kubelet.mm > m or old.kube_proxy.mm > m:
            self.nodes_to(self.releases.latest(m))
        if self.state.ccm is not None and self.state.ccm.mm > m:
            ccm = self.state.ccm
            new_ccm = self.releases.latest(m)
            self.add(StepKind.CLOUD_CONTROLLER_MANAGER, f"Downgrade cloud-controller-manager to {new_ccm}",
                     self.text.ccm(ccm, new_ccm), self.state.with_(ccm=new_ccm), ("ccm",), self.text.ccm_back(ccm))
        old = self.state
        new = old.with_(apiserver=ControlPlaneVersion.of(old.apiserver.binary, m),
                        controllers=ControlPlaneVersion.of(old.controllers.binary, m))
        self.add(StepKind.EMULATION, f"Lower --emulated-version to {m}", self.text.lower_emulation(old, m), new,
                 ("controllers", "apiserver"), self.text.lower_emulation_back(old))

    def reinstall_binaries(self, target: Version, *, optional: bool) -> None:
        """Replace binaries newer than the emulated minor by ``target`` binaries (controllers first)."""
        old = self.state
        if old.apiserver.binary == target and not old.apiserver.emulating:
            return
        binary = target if target.patch is not None else self.releases.latest(target)
        cp = ControlPlaneVersion.of(binary)
        reason = (f"the {old.apiserver.binary} binaries can keep emulating {binary.mm}; installing {binary} "
                  f"binaries is optional") if optional else ""
        self.add(StepKind.CONTROLLERS, f"Install kube-controller-manager and kube-scheduler {binary}",
                 self.text.controllers(cp), old.with_(controllers=cp), ("controllers",),
                 self.text.controllers_back(old.controllers), skippable=optional, reason=reason)
        prev = self.state
        self.add(StepKind.APISERVER, f"Install kube-apiserver {binary}", self.text.apiserver(prev, cp, []),
                 prev.with_(apiserver=cp), ("apiserver",), self.text.apiserver_back(prev),
                 skippable=optional, reason=reason)

    def optional_nodes(self, target: Version) -> None:
        if self.state.kubelet < target or self.state.kube_proxy < target:
            self.nodes_to(target, optional=True,
                          reason="kubelet and kube-proxy may stay up to three minors behind kube-apiserver; upgrade "
                                 "them before they fall further behind than the next upgrade allows")

    # --- proofs and blockers ---

    def _prove(self, new: ClusterState, order: Sequence[Phase], title: str) -> None:
        for versions in _transitions(self.state, new, order):
            bad = _keys(check_skew(versions)) - self._baseline
            if bad:
                raise AssertionError(f"planner bug: step {title!r} breaks the skew policy: {sorted(bad)}")

    def _blockers(self, effective: Version) -> tuple[Finding, ...]:
        out = []
        # managedFields written at a version the starting cluster no longer serves are history, not clients
        for f in check_objects(self.objects, effective, self.apis, current=self._start_effective):
            if f.kind not in (FindingKind.REMOVED, FindingKind.UNAVAILABLE):
                continue
            key = (f.where, f.api_version, f.subject)
            if key not in self._reported:
                self._reported.add(key)
                out.append(f)
        return tuple(out)


def _keys(violations: Iterable[SkewViolation]) -> set[tuple[str, str]]:
    """Violations by component and rule: a plan may keep a violation the cluster starts with, not add one."""
    return {(str(v.component), v.rule) for v in violations}


def _transitions(old: ClusterState, new: ClusterState, order: Sequence[Phase]) -> Iterable[ClusterVersions]:
    """The end state, and each moment while phases run one instance at a time (old and new side by side)."""
    partial = old
    for phase in order:
        mixed = partial.instances() + _phase_instances(new, phase)
        yield ClusterVersions(tuple(mixed))
        partial = _apply(partial, new, phase)
    yield new.versions()


def _phase_instances(state: ClusterState, phase: Phase) -> list[Instance]:
    """The instances ``phase`` has already replaced, next to the old ones still running."""
    return [i for i in state.instances(tag="-new") if _phase_of(i.component) == phase]


def _phase_of(c: Component) -> Phase:
    if c is Component.APISERVER:
        return "apiserver"
    if c in (Component.CONTROLLER_MANAGER, Component.SCHEDULER):
        return "controllers"
    if c is Component.CLOUD_CONTROLLER_MANAGER:
        return "ccm"
    return "nodes"


def _apply(partial: ClusterState, new: ClusterState, phase: Phase) -> ClusterState:
    if phase == "apiserver":
        return partial.with_(apiserver=new.apiserver)
    if phase == "controllers":
        return partial.with_(controllers=new.controllers)
    if phase == "ccm":
        return partial.with_(ccm=new.ccm)
    return partial.with_(kubelet=new.kubelet, kube_proxy=new.kube_proxy)
