"""Plans for many from/to pairs, checked against the skew policy by a reference written here.

The reference (``policy_violations``) restates the version skew policy and
KEP-4330's emulation window in a few lines of its own, independent of
``turbok.upgrade.skew``, so a planner bug cannot hide behind a checker bug.
"""

from __future__ import annotations

import itertools

import pytest

from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.errors import PlanRefusedError, UnknownVersionError
from turbok.upgrade.manifests import ManifestObject
from turbok.upgrade.plan import ClusterState, Plan, StepKind
from turbok.upgrade.planner import PlanRequest, Strategy, make_plan, start_state
from turbok.upgrade.versions import ReleaseCatalog, Version


def V(minor: int, patch: int | None = None) -> Version:
    return Version(1, minor, patch)


def _floor(binary: int) -> int | None:
    return None if binary < 32 else 31 if binary == 32 else max(binary - 3, 31)


def policy_violations(s: ClusterState) -> list[str]:
    """The skew policy and the emulation window, restated independently."""
    out: list[str] = []
    b, e, c = s.apiserver.binary.minor, s.apiserver.emulated.minor, s.apiserver.min_compat.minor
    fl = _floor(b)
    if e != b and (fl is None or not fl <= e < b):
        out.append(f"apiserver {b} cannot emulate {e}")
    cb, ce = s.controllers.binary.minor, s.controllers.emulated.minor
    if cb > b:
        out.append("controllers run a newer binary than the apiserver")
    if not c <= ce <= e:
        out.append(f"controllers behave as {ce}, outside {c}..{e}")
    if s.ccm is not None and not c <= s.ccm.minor <= e:
        out.append(f"cloud-controller-manager {s.ccm.minor} outside {c}..{e}")
    for name, v in (("kubelet", s.kubelet.minor), ("kube-proxy", s.kube_proxy.minor)):
        lag = 3 if v >= 25 else 2
        if not e - lag <= v <= e:
            out.append(f"{name} {v} outside {e - lag}..{e}")
    if abs(s.kubelet.minor - s.kube_proxy.minor) > (3 if s.kube_proxy.minor >= 25 else 2):
        out.append("kube-proxy too far from kubelet")
    return out


def mid_step(prev: ClusterState, new: ClusterState, kind: StepKind) -> ClusterState:
    """The state while a step runs: apiservers move first on the way up, controllers first on the way down."""
    if kind is StepKind.APISERVER or (kind is StepKind.EMULATION and new.effective > prev.effective):
        return prev.with_(apiserver=new.apiserver)
    if kind is StepKind.EMULATION:
        return prev.with_(controllers=new.controllers)
    return new


def check_upgrade(plan: Plan, target: Version) -> None:
    steps = plan.steps
    assert steps[0].kind is StepKind.PREFLIGHT and steps[0].state == plan.start
    prev = plan.start
    for s in steps:
        assert policy_violations(s.state) == [], (s.number, s.title)
        assert policy_violations(mid_step(prev, s.state, s.kind)) == [], (s.number, s.title, "mid-step")
        # the apiservers' behaviour moves one minor at a time, never back
        assert 0 <= s.state.effective.minors_since(prev.effective) <= 1, s.title
        if s.kind is StepKind.APISERVER and s.state.apiserver.emulating:
            assert s.state.effective == prev.effective, "a binary swap under emulation must not change behaviour"
        assert s.rollback.to_step == s.number - 1
        prev = s.state
    end = plan.end
    assert end.apiserver.binary == target and not end.apiserver.emulating
    assert end.controllers.binary == target and not end.controllers.emulating
    if end.ccm is not None:
        assert end.ccm.same_minor(target)


PAIRS = [(f, t) for f, t in itertools.combinations(range(24, 37), 2)]


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize(("frm", "to"), PAIRS)
def test_upgrade_plans_honour_the_skew_policy(frm: int, to: int, strategy: Strategy, releases: ReleaseCatalog) -> None:
    for lag, with_ccm, controllers_behind in itertools.product((0, 2), (False, True), (0, 1)):
        start = start_state(V(frm, 3), kubelet=V(frm - lag, 1),
                            ccm=V(frm - controllers_behind, 3) if with_ccm else None)
        if controllers_behind:  # allowed today: controllers one minor behind the apiservers
            start = start.with_(controllers=ControlPlaneVersion.of(V(frm - 1, 9)))
        plan = make_plan(PlanRequest(start, V(to), strategy))
        assert plan.direction == "upgrade"
        check_upgrade(plan, releases.latest(V(to)))


@pytest.mark.parametrize("strategy", [Strategy.SKIP, Strategy.MINOR])
@pytest.mark.parametrize(("frm", "to"), [(f, t) for f, t in PAIRS if f >= 31])
def test_every_step_of_an_emulated_plan_can_be_rolled_back(frm: int, to: int, strategy: Strategy,
                                                           releases: ReleaseCatalog) -> None:
    plan = make_plan(PlanRequest(start_state(V(frm, 3)), V(to), strategy))
    prev = plan.start
    for s in plan.steps:
        assert s.rollback.safe, f"step {s.number} ({s.title}) has no safe rollback"
        assert s.rollback.actions
        # ...and the planner itself can plan that rollback from the step's end state
        if s.kind is StepKind.EMULATION:
            back = make_plan(PlanRequest(s.state, prev.effective), releases=releases)
            assert back.direction == "rollback" and back.steps[-1].state.effective == prev.effective
        elif s.kind is StepKind.APISERVER and s.state.apiserver.emulating:
            back = make_plan(PlanRequest(s.state.with_(controllers=prev.controllers), prev.apiserver.binary))
            assert back.end.apiserver.binary == prev.apiserver.binary and not back.end.apiserver.emulating
        prev = s.state


def test_skip_plan_from_132_to_135_skips_two_binaries(releases: ReleaseCatalog) -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4)), V(35)))
    assert plan.strategy == "skip"
    assert plan.skipped_binaries == [V(33), V(34)]
    kinds = [s.kind for s in plan.steps]
    assert kinds == [StepKind.PREFLIGHT, StepKind.APISERVER, StepKind.CONTROLLERS, StepKind.EMULATION,
                     StepKind.EMULATION, StepKind.EMULATION, StepKind.NODES]
    latest = releases.latest(V(35))
    assert [s.state.apiserver.flag() for s in plan.steps] == ["(unset)", "1.32", "1.32", "1.33", "1.34", "(unset)",
                                                            "(unset)"]
    assert all(s.state.apiserver.binary == latest for s in plan.steps[1:])
    assert plan.steps[-1].skippable  # nodes may stay behind
    assert not any(s.skippable for s in plan.steps[:-1])


def test_emulation_cannot_reach_below_131_so_old_clusters_climb_classically() -> None:
    plan = make_plan(PlanRequest(start_state(V(29, 3)), V(35)))
    binaries = [s.state.apiserver.binary.mm for s in plan.steps if s.kind is StepKind.APISERVER]
    assert binaries == [V(30), V(31), V(34), V(35)]  # 1.34 is the newest binary that can emulate 1.31
    assert plan.skipped_binaries == [V(32), V(33)]
    unsafe = [s.state.apiserver.binary.mm for s in plan.steps if not s.rollback.safe]
    assert unsafe == [V(30), V(31)]  # 1.30 and 1.31 binaries cannot emulate their predecessor


def test_classic_plans_go_one_minor_at_a_time_and_mark_what_emulation_could_skip() -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4)), V(35), Strategy.CLASSIC))
    api_steps = [s for s in plan.steps if s.kind is StepKind.APISERVER]
    assert [s.state.apiserver.binary.mm for s in api_steps] == [V(33), V(34), V(35)]
    assert not any(s.state.apiserver.emulating for s in plan.steps)
    assert [s.skippable for s in api_steps] == [True, True, False]
    assert "1.35 binary can emulate 1.32" in api_steps[0].skip_reason
    assert all(s.rollback.safe for s in plan.steps)  # 1.33+ binaries can emulate their predecessor


def test_old_kubelets_are_upgraded_before_they_fall_out_of_skew() -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4), kubelet=V(29, 8)), V(35)))
    nodes = [s for s in plan.steps if s.kind is StepKind.NODES]
    # before the control plane behaves as 1.33, kubelets must be at 1.30 or newer: upgraded to 1.32
    assert nodes[0].state.kubelet.mm == V(32) and not nodes[0].skippable
    before = plan.steps[nodes[0].number]  # the step after the node upgrade
    assert before.kind is StepKind.EMULATION and before.state.effective == V(33)


def test_cloud_controller_manager_follows_the_emulated_version_by_binary() -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4), ccm=V(32, 4)), V(35)))
    ccm = [s.state.ccm for s in plan.steps if s.kind is StepKind.CLOUD_CONTROLLER_MANAGER]
    assert [v.mm for v in ccm if v is not None] == [V(33), V(34), V(35)]


def test_rollback_within_the_window(releases: ReleaseCatalog) -> None:
    plan = make_plan(PlanRequest(start_state(V(35, 1)), V(34)))
    assert plan.direction == "rollback"
    kinds = [s.kind for s in plan.steps]
    # kubelets at 1.35 must not be newer than the emulated 1.34: nodes first
    assert kinds == [StepKind.PREFLIGHT, StepKind.NODES, StepKind.EMULATION, StepKind.CONTROLLERS, StepKind.APISERVER]
    emu = plan.steps[2]
    assert emu.state.apiserver.binary == V(35, 1) and emu.state.effective == V(34)
    assert "--emulated-version=1.34" in emu.actions[0] and "controller" in emu.actions[0]  # controllers first
    assert plan.steps[3].skippable and plan.steps[4].skippable  # reinstalling 1.34 binaries is optional
    assert plan.end.apiserver.binary == releases.latest(V(34)) and not plan.end.apiserver.emulating
    for s in plan.steps:
        assert policy_violations(s.state) == [], s.title


def test_rollback_beyond_the_min_compatibility_version_is_refused() -> None:
    with pytest.raises(PlanRefusedError, match=r"min compatibility version is 1\.34.*roll back to 1\.34"):
        make_plan(PlanRequest(start_state(V(35, 1)), V(33)))
    # with --min-compatibility-version=1.33 set beforehand (1.35+), two minors back is allowed
    plan = make_plan(PlanRequest(start_state(V(35, 1), min_compat=V(33)), V(33)))
    assert [s.state.effective for s in plan.steps if s.kind is StepKind.EMULATION] == [V(34), V(33)]


def test_rollback_outside_the_emulation_window_is_refused() -> None:
    with pytest.raises(PlanRefusedError, match=r"can emulate 1\.33\.\.1\.36 only"):
        make_plan(PlanRequest(start_state(V(36, 1), min_compat=V(33)), V(32)))
    with pytest.raises(PlanRefusedError, match="restore the etcd snapshot"):
        make_plan(PlanRequest(start_state(V(31, 5)), V(30)))


def test_rollback_of_a_control_plane_still_emulating() -> None:
    state = start_state(V(35, 7), emulated=V(33), kubelet=V(32, 1))
    assert state.apiserver.min_compat == V(32)
    plan = make_plan(PlanRequest(state, V(32)))
    assert [s.state.effective for s in plan.steps if s.kind is StepKind.EMULATION] == [V(32)]


def test_upgrade_from_a_partly_emulated_state_continues_the_emulation() -> None:
    plan = make_plan(PlanRequest(start_state(V(35, 7), emulated=V(33), kubelet=V(33, 1)), V(35)))
    assert [s.kind for s in plan.steps[1:3]] == [StepKind.EMULATION, StepKind.EMULATION]
    assert plan.end.effective == V(35)


def test_patch_upgrades_and_no_op_plans(releases: ReleaseCatalog) -> None:
    latest = releases.latest(V(35))
    plan = make_plan(PlanRequest(start_state(V(35, 1)), V(35)))
    assert plan.direction == "upgrade" and plan.end.apiserver.binary == latest
    assert [s.kind for s in plan.steps][:3] == [StepKind.PREFLIGHT, StepKind.APISERVER, StepKind.CONTROLLERS]
    none = make_plan(PlanRequest(start_state(latest), V(35)))
    assert none.direction == "none" and none.steps == []
    # a patch newer than the data is not "downgraded" to the newest patch the data knows
    newer = Version(1, 35, (latest.patch or 0) + 2)
    plan = make_plan(PlanRequest(start_state(newer), V(35)))
    assert plan.direction == "none" and any("newer than turbok's release data" in n for n in plan.notes)


def test_unknown_versions_are_refused(releases: ReleaseCatalog) -> None:
    with pytest.raises(UnknownVersionError, match="--to"):
        make_plan(PlanRequest(start_state(V(35, 1)), V(60)))
    with pytest.raises(UnknownVersionError, match="--from"):
        make_plan(PlanRequest(start_state(V(12, 1)), V(35)))


def test_removed_apis_become_blockers_on_the_step_that_removes_them() -> None:
    ingress = ManifestObject("networking.k8s.io/v1beta1", "Ingress", "web", "shop", "ingress.yaml", 1)
    cron = ManifestObject("batch/v1beta1", "CronJob", "nightly", "shop", "cron.yaml", 1)
    plan = make_plan(PlanRequest(start_state(V(21, 2)), V(25), objects=[ingress, cron]))
    blocked = {s.state.effective: [f.subject for f in s.findings] for s in plan.steps if s.findings}
    assert blocked == {V(22): ["Ingress/web -n shop"], V(25): ["CronJob/nightly -n shop"]}
    assert plan.exit_code == 3


def test_a_rollback_blocks_on_objects_the_older_release_cannot_serve() -> None:
    vap = ManifestObject("admissionregistration.k8s.io/v1", "MutatingAdmissionPolicy", "p", "", "map.yaml", 1)
    plan = make_plan(PlanRequest(start_state(V(36, 1)), V(35)))
    assert plan.exit_code == 0
    plan = make_plan(PlanRequest(start_state(V(36, 1)), V(35), objects=[vap]))
    assert [f.kind.value for s in plan.steps for f in s.findings] == ["unavailable"]


def test_plan_dict_has_components_and_rollback_per_step() -> None:
    d = make_plan(PlanRequest(start_state(V(32, 4), ccm=V(32, 4)), V(34))).to_dict()
    assert d["kind"] == "UpgradePlan" and d["direction"] == "upgrade"
    step = d["steps"][1]
    assert set(step["components"]) == {"kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                       "cloud-controller-manager", "kubelet", "kube-proxy", "kubectl"}
    assert step["emulatedVersion"] == "1.32" and step["rollback"]["safe"] is True
    assert d["skippedBinaries"] == ["1.33"]


def test_start_state_rejects_an_impossible_emulation() -> None:
    with pytest.raises(PlanRefusedError):
        start_state(V(35, 1), emulated=V(30))
    assert start_state(V(35, 1), emulated=V(33)).controllers == ControlPlaneVersion.of(V(35, 1), V(33))
