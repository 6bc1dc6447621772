"""Plans for many from/to pairs, checked against the skew policy by a reference written here.

The reference (``policy_violations``) restates the version skew policy and
KEP-4330's emulation window in a few lines of its own, independent of
``turbok.upgrade.skew``, so a planner bug cannot hide behind a checker bug.
"""

from __future__ import annotations

import itertools

import pytest

from turbok.upgrade import sources
from turbok.upgrade.components import ComponentFlags
from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.errors import PlanRefusedError, UnknownVersionError
from turbok.upgrade.manifests import ManifestObject
from turbok.upgrade.plan import ClusterState, Plan, StepKind, Support
from turbok.upgrade.planner import PlanRequest, Strategy, make_plan, start_state
from turbok.upgrade.versions import ReleaseCatalog, Version


def V(minor: int, patch: int | None = None) -> Version:
    return Version(1, minor, patch)


def _floor(binary: int) -> int | None:
    return None if binary < 32 else 31 if binary == 32 else max(binary - 3, 31)


def policy_violations(s: ClusterState) -> list[str]:
    """The skew policy and the emulation window, restated independently.

    Nodes: KEP-4330 "Skew": kubelet and kube-proxy in {minCompatibilityVersion-2}..{emulationVersion}
    (one minor less of lag for nodes older than 1.25, as the policy says).
    """
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
        lag = 2 if v >= 25 else 1
        if not c - lag <= v <= e:
            out.append(f"{name} {v} outside {c - lag}..{e}")
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
        binaries = [frm] + [st.state.apiserver.binary.minor for st in plan.steps if st.kind is StepKind.APISERVER]
        if strategy is Strategy.SKIP:
            assert plan.supported is (not plan.skipped_binaries)
        else:  # the skew policy: kube-apiserver never skips a minor
            assert [b - a for a, b in zip(binaries, binaries[1:], strict=False)] == [1] * (to - frm)
            assert plan.supported and not plan.skipped_binaries and not plan.warnings


@pytest.mark.parametrize("strategy", [Strategy.AUTO, Strategy.MINOR])
@pytest.mark.parametrize(("frm", "to"), [(f, t) for f, t in PAIRS if f >= 31])
def test_every_rollback_is_labelled_by_who_supports_it(frm: int, to: int, strategy: Strategy,
                                                       releases: ReleaseCatalog) -> None:
    plan = make_plan(PlanRequest(start_state(V(frm, 3)), V(to), strategy))
    prev = plan.start
    for s in plan.steps:
        rb = s.rollback
        assert rb.actions
        if s.kind is StepKind.EMULATION:
            # lowering --emulated-version again is what upstream documents (KEP-4330)
            assert rb.support is Support.UPSTREAM and rb.safe
            back = make_plan(PlanRequest(s.state, prev.effective), releases=releases)
            assert back.direction == "rollback" and back.steps[-1].state.effective == prev.effective
        elif s.kind is StepKind.APISERVER:
            # a binary minor downgrade: GKE (while emulating the previous minor) and EKS (previous minor) only
            assert s.state.apiserver.emulating and s.state.effective == prev.effective
            assert rb.support is Support.VENDOR and not rb.safe
            assert set(rb.vendors) == {"GKE", "EKS"} and "downgradable_version" in rb.note
            assert f"Reinstall kube-apiserver {prev.apiserver.binary}" in rb.actions[0]
        elif s.kind is StepKind.PREFLIGHT:
            assert rb.support is Support.NOT_NEEDED
        else:
            assert rb.support is Support.UPSTREAM, (s.title, rb)
        assert s.support is Support.UPSTREAM, s.title
        prev = s.state


def test_the_default_plan_goes_one_minor_at_a_time_with_emulation(releases: ReleaseCatalog) -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4)), V(35)))
    assert plan.strategy == "minor" and plan.supported and plan.skipped_binaries == []
    installs = [(s.state.apiserver.binary.mm, s.state.apiserver.flag()) for s in plan.steps
                if s.kind is StepKind.APISERVER]
    assert installs == [(V(33), "1.32"), (V(34), "1.33"), (V(35), "1.34")]
    raises = [s.state.effective for s in plan.steps if s.kind is StepKind.EMULATION]
    assert raises == [V(33), V(34), V(35)]
    assert plan.end.apiserver.binary == releases.latest(V(35)) and not plan.end.apiserver.emulating


def test_skipping_minors_is_only_on_request_and_marked_unsupported_with_the_policy_quoted(
        releases: ReleaseCatalog) -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4)), V(35), Strategy.SKIP))
    assert plan.strategy == "skip" and plan.skipped_binaries == [V(33), V(34)]
    assert plan.supported is False
    text = "\n".join(plan.warnings)
    assert sources.SKEW_POLICY_NO_SKIP.text in text and sources.KUBEADM_NO_SKIP.text in text
    assert "alpha" in text and sources.KEP_4330_NON_GOALS.text in text
    install = next(s for s in plan.steps if s.kind is StepKind.APISERVER)
    assert install.support is Support.UNSUPPORTED
    assert install.state.apiserver.binary == releases.latest(V(35)) and install.state.apiserver.flag() == "1.32"
    # going back three binary minors: neither upstream nor a vendor; only the etcd snapshot
    assert install.rollback.support is Support.ETCD_SNAPSHOT
    # 1.32.4 and 1.35.7 side by side during the rollout: not covered by KEP-4330
    assert any("not covered by KEP-4330" in n for n in install.notes)
    assert [s.state.apiserver.flag() for s in plan.steps if s.kind is StepKind.EMULATION] == ["1.33", "1.34", "(unset)"]
    d = plan.to_dict()
    assert d["supportedUpstream"] is False and d["warnings"] == plan.warnings


def test_one_minor_plans_never_mix_binaries_more_than_one_minor_apart() -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4)), V(36)))
    assert not any("not covered by KEP-4330" in n for s in plan.steps for n in s.notes)


def test_emulation_cannot_reach_below_131_so_old_clusters_climb_classically() -> None:
    plan = make_plan(PlanRequest(start_state(V(29, 3)), V(35)))
    binaries = [s.state.apiserver.binary.mm for s in plan.steps if s.kind is StepKind.APISERVER]
    assert binaries == [V(30), V(31), V(32), V(33), V(34), V(35)]
    assert plan.skipped_binaries == []
    snapshot_only = [s.state.apiserver.binary.mm for s in plan.steps if s.rollback.support is Support.ETCD_SNAPSHOT]
    assert snapshot_only == [V(30), V(31)]  # 1.30 and 1.31 binaries cannot emulate their predecessor
    # with --strategy skip, 1.34 is the newest binary that can emulate 1.31
    skip = make_plan(PlanRequest(start_state(V(29, 3)), V(35), Strategy.SKIP))
    assert [s.state.apiserver.binary.mm for s in skip.steps if s.kind is StepKind.APISERVER] == [
        V(30), V(31), V(34), V(35)]
    assert skip.skipped_binaries == [V(32), V(33)] and not skip.supported


def test_classic_plans_go_one_minor_at_a_time_and_mark_what_emulation_could_skip() -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4)), V(35), Strategy.CLASSIC))
    api_steps = [s for s in plan.steps if s.kind is StepKind.APISERVER]
    assert [s.state.apiserver.binary.mm for s in api_steps] == [V(33), V(34), V(35)]
    assert not any(s.state.apiserver.emulating for s in plan.steps)
    assert [s.skippable for s in api_steps] == [True, True, False]
    assert "1.35 binary can emulate 1.32" in api_steps[0].skip_reason
    assert "upstream does not support" in api_steps[0].skip_reason
    # 1.33+ binaries can emulate their predecessor: lowering --emulated-version is upstream's rollback,
    # and reinstalling the old binary is marked as the vendor feature it is
    for s in api_steps:
        assert s.rollback.support is Support.UPSTREAM
        assert "--emulated-version" in s.rollback.actions[0] and "vendors" in s.rollback.actions[1]


def test_old_kubelets_are_upgraded_before_they_fall_out_of_skew() -> None:
    plan = make_plan(PlanRequest(start_state(V(32, 4), kubelet=V(29, 8)), V(35)))
    nodes = [s for s in plan.steps if s.kind is StepKind.NODES]
    # behaving as 1.33 makes the control plane compatible back to 1.32 only, so kubelets must be 1.30 or
    # newer (KEP-4330: min compatibility - 2) before that: upgraded to 1.32
    assert nodes[0].state.kubelet.mm == V(32) and not nodes[0].skippable
    after = plan.steps[nodes[0].number]  # the step after the node upgrade
    assert after.kind is StepKind.EMULATION and after.state.effective == V(33)


def test_nodes_under_emulation_follow_kep_4330_not_the_binary() -> None:
    """1.35.7 emulating 1.32 is compatible back to 1.32: kubelets 1.30..1.32, so 1.29 must move first."""
    plan = make_plan(PlanRequest(start_state(V(32, 4), kubelet=V(29, 5)), V(35), Strategy.SKIP))
    kinds = [s.kind for s in plan.steps]
    assert kinds.index(StepKind.NODES) < kinds.index(StepKind.APISERVER)
    install = next(s for s in plan.steps if s.kind is StepKind.APISERVER)
    assert install.state.apiserver.min_compat == V(32) and install.state.kubelet.mm >= V(30)
    for s in plan.steps:
        assert policy_violations(s.state) == [], s.title


def test_kubectl_range_is_min_compatibility_to_emulated_plus_one() -> None:
    emulating = start_state(V(35, 7), emulated=V(32), kubelet=V(32, 1))
    assert emulating.kubectl_range() == (V(32), V(33))  # not 1.31..1.33
    wide = start_state(V(35, 1), min_compat=V(33))
    assert wide.kubectl_range() == (V(33), V(36))
    assert start_state(V(35, 1)).kubectl_range() == (V(34), V(36))


def test_emulation_minor_is_only_checked_where_version_reports_it() -> None:
    """/version has emulationMinor from 1.33: a 1.32 binary emulating 1.31 must be checked another way."""
    plan = make_plan(PlanRequest(start_state(V(31, 4)), V(32)))
    install = next(s for s in plan.steps if s.kind is StepKind.APISERVER)
    assert install.state.apiserver.binary.mm == V(32) and install.state.apiserver.emulating
    text = " ".join(install.actions)
    assert "emulationMinor" in text and "does not report" in text and "command line" in text
    assert "reports emulationMinor" not in text
    raise_ = next(s for s in plan.steps if s.kind is StepKind.EMULATION)
    assert "kubectl version" not in " ".join(raise_.actions)
    later = make_plan(PlanRequest(start_state(V(33, 4)), V(34)))
    install = next(s for s in later.steps if s.kind is StepKind.APISERVER)
    assert "reports emulationMinor 33" in " ".join(install.actions)


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
    assert emu.support is Support.UPSTREAM
    assert plan.steps[3].skippable and plan.steps[4].skippable  # reinstalling 1.34 binaries is optional
    # 1.34.x replacing 1.35.1 is a binary minor downgrade: a vendor feature, not upstream's
    reinstall = plan.steps[4]
    assert reinstall.support is Support.VENDOR and set(reinstall.vendors) == {"GKE", "EKS"}
    assert sources.GKE_DOWNGRADABLE.text in reinstall.notes[0] and sources.EKS_ROLLBACK.text in reinstall.notes[0]
    assert plan.end.apiserver.binary == releases.latest(V(34)) and not plan.end.apiserver.emulating
    for s in plan.steps:
        assert policy_violations(s.state) == [], s.title


def test_rollback_beyond_the_min_compatibility_version_is_refused() -> None:
    with pytest.raises(PlanRefusedError, match=r"min compatibility version is 1\.34.*roll back to 1\.34"):
        make_plan(PlanRequest(start_state(V(35, 1)), V(33)))
    # with --min-compatibility-version=1.33 set beforehand (1.35+), two minors back is allowed
    plan = make_plan(PlanRequest(start_state(V(35, 1), min_compat=V(33)), V(33)))
    assert [s.state.effective for s in plan.steps if s.kind is StepKind.EMULATION] == [V(34), V(33)]
    # ...but no one supports reinstalling 1.33 binaries in place of 1.35 ones
    reinstall = plan.steps[-1]
    assert reinstall.kind is StepKind.APISERVER and reinstall.support is Support.UNSUPPORTED


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
                                       "cloud-controller-manager", "kubelet", "kube-proxy", "kubectl", "etcd"}
    assert step["emulatedVersion"] == "1.32" and step["supportedBy"] == "upstream"
    assert step["rollback"]["supportedBy"] == "vendor" and step["rollback"]["safe"] is False
    assert step["rollback"]["vendors"] == ["GKE", "EKS"]
    assert d["skippedBinaries"] == [] and d["supportedUpstream"] is True


def _flags(**by_component: list[str]) -> ComponentFlags:
    flags = ComponentFlags()
    for component, args in by_component.items():
        flags.add(component.replace("_", "-"), args, "test")
    return flags


def test_flags_and_gates_the_new_binary_refuses_are_blockers_on_the_step_that_installs_it() -> None:
    flags = _flags(kube_apiserver=["--feature-gates=SidecarContainers=true,DRAPrioritizedList=false"],
                   kube_controller_manager=["--concurrent-service-syncs=5", "--feature-gates", "SidecarContainers=true"])
    plan = make_plan(PlanRequest(start_state(V(36, 3)), V(37), flags=flags))
    by_step = {s.title: [f.subject for f in s.findings] for s in plan.steps if s.findings}
    install = next(s for s in plan.steps if s.kind is StepKind.APISERVER)
    controllers = next(s for s in plan.steps if s.kind is StepKind.CONTROLLERS)
    switch = next(s for s in plan.steps if s.kind is StepKind.EMULATION)
    # SidecarContainers was removed in 1.37: the 1.37.2 binaries exit at once, even while emulating 1.36
    assert by_step[install.title] == ["kube-apiserver feature gate SidecarContainers"]
    assert sorted(by_step[controllers.title]) == ["kube-controller-manager --concurrent-service-syncs",
                                                  "kube-controller-manager feature gate SidecarContainers"]
    # DRAPrioritizedList is locked to true at 1.37, not at 1.36: it fails when the emulated version reaches 1.37
    assert by_step[switch.title] == ["kube-apiserver feature gate DRAPrioritizedList"]
    assert "unrecognized feature gate: SidecarContainers" in install.findings[0].message
    assert plan.exit_code == 3


def test_flags_are_noted_as_unchecked_where_the_data_has_no_release() -> None:
    flags = _flags(kube_apiserver=["--feature-gates=Foo=true"])
    plan = make_plan(PlanRequest(start_state(V(34, 3)), V(35), flags=flags))
    assert any("removed in 1.35 are not in turbok's data" in n for n in plan.notes)
    bare = make_plan(PlanRequest(start_state(V(36, 3)), V(37)))
    assert any("flags and feature gates were not checked" in n for n in bare.notes)


def test_etcd_moves_one_minor_at_a_time_before_the_apiserver_that_needs_it() -> None:
    plan = make_plan(PlanRequest(start_state(V(33, 4), etcd=Version(3, 5, 24)), V(37)))
    kinds = [(s.kind, s.state.etcd, s.state.apiserver.binary.mm) for s in plan.steps]
    etcd_steps = [(i, k) for i, k in enumerate(kinds) if k[0] is StepKind.ETCD]
    assert [k[1] for _, k in etcd_steps] == [Version(3, 6), Version(3, 7)]
    first_134 = next(i for i, k in enumerate(kinds) if k[0] is StepKind.APISERVER and k[2] == V(34))
    first_137 = next(i for i, k in enumerate(kinds) if k[0] is StepKind.APISERVER and k[2] == V(37))
    assert etcd_steps[0][0] < first_134 and etcd_steps[1][0] < first_137
    step = plan.steps[etcd_steps[0][0]]
    assert step.rollback.support is Support.ETCD_SNAPSHOT
    assert any(sources.ETCD_UPGRADE_POLICY.text in n for n in step.notes)
    assert "newest 3.5 patch first" in step.actions[0]
    unknown = make_plan(PlanRequest(start_state(V(33, 4)), V(35)))
    assert any("etcd was not checked" in n for n in unknown.notes)


def test_start_state_rejects_an_impossible_emulation() -> None:
    with pytest.raises(PlanRefusedError):
        start_state(V(35, 1), emulated=V(30))
    assert start_state(V(35, 1), emulated=V(33)).controllers == ControlPlaneVersion.of(V(35, 1), V(33))
