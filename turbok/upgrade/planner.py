"""The planner: ordered, skew-checked upgrade and rollback plans for a control plane.

Upgrades (``target`` newer than the control plane's emulated version):

* ``minor`` (what ``auto`` picks): one kube-apiserver minor at a time, as the
  version skew policy requires; each binary is installed emulating the previous
  minor and then switched over (KEP-4330 "Story 1"), so every step has an
  upstream way back (lower ``--emulated-version``) or a vendor one (GKE, EKS:
  reinstall the previous binary while it emulates the previous minor).
  Binaries that cannot emulate their predecessor (1.31 and older) take a
  classic step instead.
* ``classic``: one minor at a time without emulation (the skew policy's upgrade
  order). Steps whose binary is 1.31 or older can only be undone by restoring etcd.
* ``skip``: install the newest binary that can emulate the current version,
  skipping binary minors, then raise the emulated version one minor per step
  (KEP-4330 "Motivation"). Only on request: the plan is marked unsupported
  upstream and quotes why (the skew policy, kubeadm, KEP-4330 being alpha).
* Versions below 1.31 cannot be emulated by any binary, so every strategy
  climbs classically to 1.31 first.

Rollbacks (``target`` older than the emulated version) lower the emulated
version one minor per step, nodes and controllers first, as far as the min
compatibility version allows, then optionally reinstall the older binaries (a
vendor feature); anything beyond that window is refused with the reason.

Along the way the planner keeps nodes within KEP-4330's skew (min compatibility
- 2 .. emulated), moves etcd one minor at a time before the kube-apiserver that
needs it, and turns flags and feature gates a target binary refuses into
blockers on the step that would fail. Every step is proven against
``skew.check_skew`` for its end state and for the mixed states while it runs, so
a plan that violates the policy is a bug, not an output. Called by the CLI and
the rehearsal; pure (no I/O).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from turbok.upgrade import sources
from turbok.upgrade.apis import ApiCatalog, api_catalog
from turbok.upgrade.checker import Finding, FindingKind, Severity, check_objects
from turbok.upgrade.components import COMPONENTS, ComponentFlags, components_data
from turbok.upgrade.emulation import ControlPlaneVersion, can_emulate, emulation_floor, rollback_window
from turbok.upgrade.errors import PlanRefusedError
from turbok.upgrade.etcd import etcd_data
from turbok.upgrade.manifests import ManifestObject
from turbok.upgrade.plan import ClusterState, Plan, Rollback, Step, StepKind, Support
from turbok.upgrade.skew import (
    ClusterVersions,
    Component,
    Instance,
    SkewViolation,
    check_skew,
    mixed_binaries,
    node_floor,
)
from turbok.upgrade.steps import VENDORS, Phase, StepText
from turbok.upgrade.versions import ReleaseCatalog, Version, catalog

__all__ = ["PlanRequest", "Strategy", "make_plan", "start_state"]


class Strategy(StrEnum):
    AUTO = "auto"
    MINOR = "minor"
    CLASSIC = "classic"
    SKIP = "skip"


@dataclass(frozen=True)
class PlanRequest:
    """What to plan: from ``start`` to ``target`` (a minor or a patch) with ``strategy``.

    ``objects`` (manifests or live objects) are checked at every version the
    plan passes through; a removal becomes a blocker on the step that would
    break it. ``flags`` (the components' command lines) are checked against
    every binary and emulated version the plan installs.
    """

    start: ClusterState
    target: Version
    strategy: Strategy = Strategy.AUTO
    objects: Sequence[ManifestObject] = ()
    flags: ComponentFlags | None = None


def start_state(binary: Version, *, emulated: Version | None = None, min_compat: Version | None = None,
                kubelet: Version | None = None, kube_proxy: Version | None = None,
                ccm: Version | None = None, etcd: Version | None = None) -> ClusterState:
    """A starting state: control plane at ``binary`` (optionally emulating), nodes at ``binary`` unless given."""
    cp = ControlPlaneVersion.of(binary, emulated, min_compat)
    node = kubelet or (binary if not cp.emulating else cp.emulated)  # nodes are never newer than the emulated version
    return ClusterState(apiserver=cp, controllers=cp, ccm=ccm, kubelet=node, kube_proxy=kube_proxy or node, etcd=etcd)


def make_plan(request: PlanRequest, *, releases: ReleaseCatalog | None = None, apis: ApiCatalog | None = None) -> Plan:
    """Plan ``request``; raises ``PlanRefusedError`` when no safe plan exists."""
    releases = releases or catalog()
    start, strategy = request.start, request.strategy
    releases.require(start.apiserver.binary, what="--from")
    target = releases.resolve(request.target, what="--to")
    if request.target.patch is None and target.same_minor(start.apiserver.binary) and start.apiserver.binary > target:
        target = start.apiserver.binary  # "--to 1.36" on a patch newer than the data knows: already there
    b = _Builder(start, releases, apis or api_catalog(), request.objects, request.flags)
    for v in (start.apiserver.binary, request.target):
        if releases.is_newer_than_data(v):
            b.notes.append(f"{v} is newer than turbok's release data (newest known {releases.latest(v)}, as of {releases.as_of})")
    effective = start.effective
    same_unknown_patch = start.apiserver.binary.patch is None and request.target.patch is None
    if strategy is Strategy.AUTO:
        strategy = Strategy.MINOR
    if target.mm > effective:
        direction = "upgrade"
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
        direction = "none"  # the report says "Nothing to do: the control plane already runs ..."
    b.finish_notes(direction)
    plan = Plan(direction, str(strategy), start, target, b.steps, b.skipped, b.notes, b.initial)
    if b.skipped:
        plan.supported = False
        plan.warnings = _skip_warnings(b.skipped)
    return plan


def _skip_warnings(skipped: Sequence[Version]) -> list[str]:
    names = ", ".join(str(v) for v in skipped)
    return [
        f"UNSUPPORTED UPSTREAM: this plan never installs kube-apiserver {names}. {sources.SKEW_POLICY_NO_SKIP}",
        f"{sources.KUBEADM_NO_SKIP}",
        f"KEP-4330, which allows skipping binaries while the emulated version moves one minor at a time, is still "
        f"alpha ({sources.KEP_4330_ALPHA.url}) and leaves kubeadm and Cluster API out: {sources.KEP_4330_NON_GOALS}",
        "The default (--strategy minor) installs every minor, each emulating the previous one first.",
    ]


# --- upgrades -----------------------------------------------------------------------------------


def _upgrade(b: _Builder, target: Version, strategy: Strategy) -> None:
    while b.state.effective < target.mm:
        cp = b.state.apiserver
        if cp.emulating:
            b.raise_emulation(target)
            continue
        nxt = _next_binary(b, target, strategy)
        if nxt is None:
            b.classic_minor(target, strategy)
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
    if b.state.etcd is not None:
        b.notes.append(f"etcd stays at {b.state.etcd}: this plan does not downgrade etcd")


# --- the builder: one method per kind of step -----------------------------------------------------


@dataclass(frozen=True)
class _Back:
    """How to undo a step: the words, who supports them, which vendors, why."""

    actions: Sequence[str]
    support: Support = Support.UPSTREAM
    vendors: tuple[str, ...] = ()
    note: str = ""


@dataclass
class _StepOptions:
    support: Support = Support.UPSTREAM
    vendors: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    skippable: bool = False
    reason: str = ""
    flag_components: tuple[str, ...] = ()


class _Builder:
    def __init__(self, start: ClusterState, releases: ReleaseCatalog, apis: ApiCatalog,
                 objects: Sequence[ManifestObject], flags: ComponentFlags | None) -> None:
        self.state = start
        self.releases = releases
        self.apis = apis
        self.objects = objects
        self.flags = flags
        self.steps: list[Step] = []
        self.notes: list[str] = []
        self.skipped: list[Version] = []
        self.text = StepText()
        self._start_effective = start.effective
        self._baseline = _keys(check_skew(start.versions()))
        self._reported: set[tuple[str, str, str]] = set()
        self._unchecked_releases: set[Version] = set()
        # objects already broken at the start: blockers before any step, not on the first that moves
        self.initial = list(self._blockers(start.effective))

    def latest(self, minor: Version, target: Version) -> Version:
        """The binary to install for ``minor``: the target itself, else that minor's newest patch."""
        return target if minor.same_minor(target) else self.releases.latest(minor)

    def add(self, kind: StepKind, title: str, actions: Iterable[str], new: ClusterState, order: Sequence[Phase],
            back: _Back, opts: _StepOptions | None = None) -> None:
        opts = opts or _StepOptions()
        self._prove(new, order, title)
        findings: list[Finding] = []
        if new.effective != self.state.effective:
            findings.extend(self._blockers(new.effective))
        findings.extend(self._flag_blockers(self.state, new, opts.flag_components))
        notes = list(opts.notes)
        for versions in _transitions(self.state, new, order):
            mixed = mixed_binaries(versions)
            if mixed and mixed not in notes:
                notes.append(mixed + "; do this step on a single kube-apiserver, or stop every old instance before "
                                     "starting a new one (an outage)")
        n = len(self.steps)
        rollback = Rollback(n, back.support, tuple(back.actions), back.vendors, back.note)
        self.steps.append(Step(n + 1, kind, title, tuple(actions), new, rollback, opts.skippable, opts.reason,
                               tuple(findings), opts.support, opts.vendors, tuple(notes)))
        self.state = new

    def preflight(self, target: Version, *, upgrade: bool) -> None:
        cp = self.state.apiserver
        newest = self.releases.latest(cp.binary) if self.releases.knows(cp.binary) else cp.binary
        actions = self.text.preflight(self.state, target, upgrade=upgrade, newest_patch=newest)
        self.add(StepKind.PREFLIGHT, "Preflight: back up etcd and clear blockers", actions, self.state, (),
                 _Back(("nothing changed: no rollback needed",), Support.NOT_NEEDED))

    def nodes_to(self, version: Version, *, optional: bool = False, reason: str = "") -> None:
        old = self.state
        new = old.with_(kubelet=version, kube_proxy=version)
        verb = "Upgrade" if version > old.kubelet else "Downgrade"
        back = _Back(self.text.nodes_back(old), Support.UPSTREAM,
                     note="older kubelets are within the skew policy; a drained node rejoins at its old version")
        self.add(StepKind.NODES, f"{verb} kubelet and kube-proxy to {version}", self.text.nodes(old, version), new,
                 ("nodes",), back, _StepOptions(skippable=optional, reason=reason))

    def ensure_nodes_for(self, cp: ControlPlaneVersion) -> None:
        """Before the apiservers run as ``cp``, nodes must be no older than its min compatibility - 2 (KEP-4330)."""
        for v in (self.state.kubelet, self.state.kube_proxy):
            if v.mm < node_floor(cp, v):
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
                     self.text.ccm(old, new), self.state.with_(ccm=new), ("ccm",), _Back(self.text.ccm_back(old)))

    def ensure_etcd_for(self, binary: Version) -> None:
        """etcd moves one minor per step, up to the minor kubeadm installs with ``binary`` (before that apiserver)."""
        current = self.state.etcd
        if current is None:
            return
        for minor in etcd_data().path(current, binary):
            old = self.state
            assert old.etcd is not None
            back = _Back(self.text.etcd_back(old.etcd), Support.ETCD_SNAPSHOT,
                         note="turbok plans no in-place etcd minor downgrade")
            self.add(StepKind.ETCD, f"Upgrade etcd to {minor}", self.text.etcd(old.etcd, minor, binary),
                     old.with_(etcd=minor), ("etcd",), back,
                     _StepOptions(notes=[f"etcd's policy: {sources.ETCD_UPGRADE_POLICY}"]))

    def install_emulating(self, binary_minor: Version, target: Version) -> None:
        old = self.state
        e = old.effective
        binary = self.latest(binary_minor, target)
        skipped = [m for m in self.releases.minors(old.apiserver.binary.add_minor(1), binary_minor) if m != binary_minor]
        self.skipped.extend(skipped)
        cp = ControlPlaneVersion.of(binary, e)
        self.ensure_nodes_for(cp)
        self.ensure_controllers_for(cp.min_compat)
        self.ensure_etcd_for(binary)
        old = self.state
        new = old.with_(apiserver=cp)
        opts = _StepOptions(flag_components=("kube-apiserver",))
        if skipped:
            opts.support = Support.UNSUPPORTED
            opts.notes.append(f"skips kube-apiserver {', '.join(str(v) for v in skipped)}: "
                              f"{sources.SKEW_POLICY_NO_SKIP}")
        self.add(StepKind.APISERVER, f"Install kube-apiserver {binary} emulating {e}",
                 self.text.apiserver(old, cp, skipped), new, ("apiserver",), self._binary_back(old, cp), opts)
        self._controllers(cp)

    def _binary_back(self, old: ClusterState, cp: ControlPlaneVersion) -> _Back:
        """The way back from installing kube-apiserver ``cp`` over ``old``'s binary."""
        prev = old.apiserver
        actions = tuple(self.text.apiserver_back(old))
        minors = cp.binary.minors_since(prev.binary)
        if minors <= 0:
            return _Back(actions, Support.UPSTREAM, note=f"a patch change within {prev.binary.mm}")
        if minors == 1 and cp.emulated == prev.binary.mm:
            return _Back(actions, Support.VENDOR, VENDORS,
                         note=f"upstream documents only lowering --emulated-version ({sources.KEP_4330_ROLLBACK}); a "
                              f"binary minor downgrade is a vendor feature: {sources.GKE_DOWNGRADABLE}; "
                              f"{sources.EKS_ROLLBACK}. Elsewhere: restore the etcd snapshot")
        return _Back((f"Nobody supports going back {minors} binary minors in place: stop the control plane, restore "
                      f"the etcd snapshot taken in preflight (writes since are lost) and reinstall kube-apiserver "
                      f"{prev.binary}{' with --emulated-version=' + str(prev.emulated) if prev.emulating else ''}",),
                     Support.ETCD_SNAPSHOT,
                     note="GKE downgrades only while the cluster emulates the previous minor, EKS only to the previous "
                          "minor")

    def _controllers(self, cp: ControlPlaneVersion, *, skippable: bool = False, reason: str = "") -> None:
        old = self.state
        new = old.with_(controllers=cp)
        back = _Back(self.text.controllers_back(old.controllers), Support.UPSTREAM,
                     note="controllers keep no state of their own, and the previous binary is within the skew policy")
        self.add(StepKind.CONTROLLERS, f"Install kube-controller-manager and kube-scheduler {cp}",
                 self.text.controllers(cp), new, ("controllers",), back,
                 _StepOptions(skippable=skippable, reason=reason,
                              flag_components=("kube-controller-manager", "kube-scheduler")))

    def raise_emulation(self, target: Version) -> None:
        old = self.state
        n = old.effective.add_minor(1)
        cp = ControlPlaneVersion.of(old.apiserver.binary, n)
        self.ensure_nodes_for(cp)
        self.ensure_controllers_for(cp.min_compat)
        old = self.state
        new = old.with_(apiserver=cp, controllers=ControlPlaneVersion.of(old.controllers.binary, n))
        title = (f"Remove --emulated-version: behave as {n}" if not cp.emulating else f"Raise --emulated-version to {n}")
        back = _Back(tuple(self.text.raise_emulation_back(old)), Support.UPSTREAM, note=str(sources.KEP_4330_ROLLBACK))
        self.add(StepKind.EMULATION, title, self.text.raise_emulation(old, n), new, ("apiserver", "controllers"), back,
                 _StepOptions(flag_components=COMPONENTS))
        self._ccm_follow(target)

    def _ccm_follow(self, target: Version) -> None:
        """cloud-controller-manager cannot emulate: its binary follows the apiserver's emulated version."""
        old = self.state
        if old.ccm is None or old.ccm.mm == old.effective:
            return
        binary = self.latest(old.effective, target)
        self.add(StepKind.CLOUD_CONTROLLER_MANAGER, f"{'Upgrade' if binary > old.ccm else 'Downgrade'} "
                 f"cloud-controller-manager to {binary}", self.text.ccm(old.ccm, binary), old.with_(ccm=binary),
                 ("ccm",), _Back(self.text.ccm_back(old.ccm)))

    def classic_minor(self, target: Version, strategy: Strategy) -> None:
        old = self.state
        n = old.effective.add_minor(1)
        binary = self.latest(n, target)
        cp = ControlPlaneVersion.of(binary)
        self.ensure_nodes_for(cp)
        self.ensure_controllers_for(cp.min_compat)
        self.ensure_etcd_for(binary)
        old = self.state
        skippable, reason = self._could_skip(n, target) if strategy is Strategy.CLASSIC else (False, "")
        if binary.minor >= 32:
            back = _Back(tuple(self.text.classic_back(old, cp)), Support.UPSTREAM,
                         note=f"the first action is upstream's rollback ({sources.KEP_4330_ROLLBACK}); reinstalling "
                              f"the {old.apiserver.binary} binary afterwards is a vendor feature ({', '.join(VENDORS)})")
        else:
            back = _Back(tuple(self.text.classic_back(old, cp)), Support.ETCD_SNAPSHOT,
                         note=f"a {binary.mm} kube-apiserver cannot emulate its predecessor (emulation starts with 1.32)")
        self.add(StepKind.APISERVER, f"Upgrade kube-apiserver to {binary}", self.text.apiserver(old, cp, []),
                 old.with_(apiserver=cp), ("apiserver",), back,
                 _StepOptions(skippable=skippable, reason=reason, flag_components=("kube-apiserver",)))
        self._controllers(cp)
        self._ccm_follow(target)

    def _could_skip(self, n: Version, target: Version) -> tuple[bool, str]:
        e = self.state.effective
        later = [m for m in self.releases.minors(n.add_minor(1), target) if can_emulate(m, e)]
        if not later:
            return False, ""
        m = later[-1]
        return True, (f"only with --strategy skip, which upstream does not support (a {m} binary can emulate {e}, "
                      "but kube-apiserver must not skip minor versions)")

    def patch_upgrade(self, target: Version) -> None:
        old = self.state
        cp = ControlPlaneVersion.of(target, old.apiserver.emulated if old.apiserver.emulating else None)
        self.add(StepKind.APISERVER, f"Upgrade kube-apiserver to {target}", self.text.apiserver(old, cp, []),
                 old.with_(apiserver=cp), ("apiserver",), self._binary_back(old, cp),
                 _StepOptions(flag_components=("kube-apiserver",)))
        self._controllers(cp)
        if old.ccm is not None and old.ccm < target and old.ccm.same_minor(target):
            self.add(StepKind.CLOUD_CONTROLLER_MANAGER, f"Upgrade cloud-controller-manager to {target}",
                     self.text.ccm(old.ccm, target), self.state.with_(ccm=target), ("ccm",),
                     _Back(self.text.ccm_back(old.ccm)))
        self.optional_nodes(target)

    def lower_emulation(self, m: Version) -> None:
        old = self.state
        if old.kubelet.mm > m or old.kube_proxy.mm > m:
            self.nodes_to(self.releases.latest(m))
        if self.state.ccm is not None and self.state.ccm.mm > m:
            ccm = self.state.ccm
            new_ccm = self.releases.latest(m)
            self.add(StepKind.CLOUD_CONTROLLER_MANAGER, f"Downgrade cloud-controller-manager to {new_ccm}",
                     self.text.ccm(ccm, new_ccm), self.state.with_(ccm=new_ccm), ("ccm",), _Back(self.text.ccm_back(ccm)))
        old = self.state
        new = old.with_(apiserver=ControlPlaneVersion.of(old.apiserver.binary, m),
                        controllers=ControlPlaneVersion.of(old.controllers.binary, m))
        self.add(StepKind.EMULATION, f"Lower --emulated-version to {m}", self.text.lower_emulation(old, m), new,
                 ("controllers", "apiserver"), _Back(tuple(self.text.lower_emulation_back(old))),
                 _StepOptions(notes=[str(sources.KEP_4330_ROLLBACK)], flag_components=COMPONENTS))

    def reinstall_binaries(self, target: Version, *, optional: bool) -> None:
        """Replace binaries newer than the emulated minor by ``target`` binaries (controllers first)."""
        old = self.state
        if old.apiserver.binary == target and not old.apiserver.emulating:
            return
        binary = target if target.patch is not None else self.releases.latest(target)
        cp = ControlPlaneVersion.of(binary)
        minors = old.apiserver.binary.minors_since(binary)
        vendors: tuple[str, ...]
        if minors == 0:
            support, vendors, why = Support.UPSTREAM, (), ""
        elif minors == 1:
            support, vendors = Support.VENDOR, VENDORS
            why = (f"a binary minor downgrade: upstream documents none ({sources.KEP_4330_ROLLBACK}); "
                   f"{sources.GKE_DOWNGRADABLE}; {sources.EKS_ROLLBACK}")
        else:
            support, vendors = Support.UNSUPPORTED, ()
            why = (f"a downgrade of {minors} binary minors: neither upstream nor GKE or EKS offers one; keep the "
                   f"{old.apiserver.binary} binaries emulating {binary.mm}")
        reason = (f"the {old.apiserver.binary} binaries can keep emulating {binary.mm}; installing {binary} "
                  f"binaries is optional") if optional else ""
        self.add(StepKind.CONTROLLERS, f"Install kube-controller-manager and kube-scheduler {binary}",
                 self.text.controllers(cp), old.with_(controllers=cp), ("controllers",),
                 _Back(self.text.controllers_back(old.controllers)),
                 _StepOptions(skippable=optional, reason=reason,
                              flag_components=("kube-controller-manager", "kube-scheduler")))
        prev = self.state
        self.add(StepKind.APISERVER, f"Install kube-apiserver {binary}", self.text.apiserver(prev, cp, []),
                 prev.with_(apiserver=cp), ("apiserver",),
                 _Back(tuple(self.text.apiserver_back(prev)), note="reinstalling the newer binary is an upgrade"),
                 _StepOptions(support=support, vendors=vendors, notes=[why] if why else [], skippable=optional,
                              reason=reason, flag_components=("kube-apiserver",)))

    def optional_nodes(self, target: Version) -> None:
        if self.state.kubelet < target or self.state.kube_proxy < target:
            self.nodes_to(target, optional=True,
                          reason="kubelet and kube-proxy may stay up to three minors behind kube-apiserver; upgrade "
                                 "them before they fall further behind than the next upgrade allows")

    def finish_notes(self, direction: str) -> None:
        if direction == "none":
            return
        if self.state.etcd is None and direction == "upgrade":
            want = etcd_data().minor_for(self.state.apiserver.binary)
            if want is not None:
                self.notes.append(f"etcd was not checked: kubeadm installs etcd {want} with {self.state.apiserver.binary.mm}; "
                                  "pass --etcd-version (or --kubeconfig of a cluster whose etcd runs as a Pod) to plan "
                                  "etcd steps, one etcd minor at a time")
        if not self.flags:
            self.notes.append("flags and feature gates were not checked: pass --flags-from with the static Pod "
                              "manifests or kubeadm ClusterConfiguration (or --kubeconfig), so that flags and gates "
                              "a new binary refuses become blockers")
        elif self._unchecked_releases:
            names = ", ".join(str(v) for v in sorted(self._unchecked_releases))
            have = ", ".join(components_data().binaries)
            self.notes.append(f"flags and feature gates removed in {names} are not in turbok's data (read off the "
                              f"{have} binaries): check your flags against those releases' notes")

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

    def _flag_blockers(self, old: ClusterState, new: ClusterState, components: Sequence[str]) -> list[Finding]:
        if not self.flags or not components:
            return []
        data = components_data()
        out: list[Finding] = []
        for component in components:
            is_api = component == "kube-apiserver"
            o, n = (old.apiserver, new.apiserver) if is_api else (old.controllers, new.controllers)
            if o == n:
                continue
            for r in self.releases.minors(o.binary.add_minor(1), n.binary):
                if not data.covers_removals(r):
                    self._unchecked_releases.add(r)
            for p in data.problems(self.flags, old_binary=o.binary, binary=n.binary, emulated=n.emulated):
                if p.component != component:
                    continue
                key = (p.subject, str(n.binary), str(n.emulated))
                if key in self._reported:
                    continue
                self._reported.add(key)
                out.append(Finding(FindingKind.FLAG, Severity.BLOCKER, p.subject, p.message, where="flags",
                                   source=p.source))
        return out


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
    if phase == "etcd":
        return partial.with_(etcd=new.etcd)
    return partial.with_(kubelet=new.kubelet, kube_proxy=new.kube_proxy)
