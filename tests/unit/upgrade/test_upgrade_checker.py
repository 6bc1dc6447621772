"""The API checker against manifests that use every removed API, plus skew and feature-gate findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.upgrade.apis import ApiCatalog
from turbok.upgrade.checker import (
    FeatureGate,
    FindingKind,
    Severity,
    check_feature_gates,
    check_objects,
    check_skew_at,
    check_skew_now,
    exit_code,
)
from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.manifests import ManifestObject, read_manifests
from turbok.upgrade.skew import ClusterVersions, Component, Instance
from turbok.upgrade.versions import Version, parse_version


def V(minor: int, patch: int | None = None) -> Version:
    return Version(1, minor, patch)


def test_every_removed_api_in_the_test_manifests_is_found_with_replacement_and_release(
        data_dir: Path, apis: ApiCatalog, guide_removals: list[dict[str, str | None]]) -> None:
    objects = read_manifests([str(data_dir / "removed")]).objects
    used = {(o.api_version, o.kind) for o in objects}
    expected = {(str(r["apiVersion"]), str(r["kind"])): r for r in guide_removals}
    assert used == set(expected), "the test manifests must use every removed apiVersion + kind"
    for obj in objects:
        r = expected[(obj.api_version, obj.kind)]
        removed_in = parse_version(str(r["removedIn"]))
        # in the release that removes it: a blocker naming the guide's replacement
        [f] = check_objects([obj], removed_in, apis)
        assert (f.kind, f.severity) == (FindingKind.REMOVED, Severity.BLOCKER)
        assert f.removed_in == r["removedIn"]
        assert (f.replacement or None) == r["replacementAtRemoval"], obj
        assert f.where.startswith(str(data_dir / "removed")) and ":" in f.where
        # at the newest release: the replacement to use today
        [now] = check_objects([obj], V(36), apis)
        assert (now.replacement or None) == r["replacementNow"], obj
        # one release earlier it still works (served or deprecated, never removed)
        earlier = check_objects([obj], removed_in.add_minor(-1), apis)
        assert all(e.kind is FindingKind.DEPRECATED for e in earlier), obj


def test_deprecated_apis_warn_with_their_removal_release(apis: ApiCatalog) -> None:
    obj = ManifestObject("batch/v1beta1", "CronJob", "nightly", "ops", "cron.yaml", 3)
    [f] = check_objects([obj], V(23), apis)
    assert (f.kind, f.severity, f.deprecated_in, f.removed_in) == (FindingKind.DEPRECATED, Severity.WARNING, "1.21", "1.25")
    assert "removed in 1.25" in f.message and f.replacement == "batch/v1"
    assert exit_code([f]) == 2


def test_served_and_custom_apis_are_clean(apis: ApiCatalog) -> None:
    objs = [ManifestObject("apps/v1", "Deployment", "a", "", "x", 1),
            ManifestObject("agents.x-k8s.io/v1beta1", "Sandbox", "s", "", "x", 2)]
    assert check_objects(objs, V(35), apis) == []
    assert exit_code([]) == 0


def test_managed_fields_history_is_not_a_finding(apis: ApiCatalog) -> None:
    old = ManifestObject("autoscaling/v2beta2", "HorizontalPodAutoscaler", "h", "n", "cluster:n/h",
                         origin="managedFields: kubectl")
    # the cluster (1.30) no longer serves v2beta2: that entry is history, no client can still write it
    assert check_objects([old], V(31), apis, current=V(30)) == []
    # a 1.25 cluster still serves it: the client that wrote it will break at 1.26
    [f] = check_objects([old], V(26), apis, current=V(25))
    assert f.kind is FindingKind.REMOVED and "managedFields: kubectl" in f.where


def _cluster(*, api: tuple[int, int], kubelets: list[int], kubectl: int | None = None) -> ClusterVersions:
    cp = ControlPlaneVersion.of(V(*api))
    inst = [Instance(Component.APISERVER, "a", V(*api), cp),
            Instance(Component.CONTROLLER_MANAGER, "kcm", V(*api), cp)]
    inst += [Instance(Component.KUBELET, f"n{i}", V(m, 1)) for i, m in enumerate(kubelets)]
    if kubectl:
        inst.append(Instance(Component.KUBECTL, "local", V(kubectl, 0)))
    return ClusterVersions(tuple(inst))


def test_skew_now_and_at_the_target() -> None:
    cluster = _cluster(api=(31, 2), kubelets=[31, 29, 28], kubectl=33)
    now = check_skew_now(cluster)
    assert [f.subject for f in now] == ["kubectl local"]
    at = check_skew_at(cluster, V(33))
    # kubelets 1.29 and 1.28 would be too old for a 1.33 control plane; kubectl already reported
    assert sorted(f.subject for f in at) == ["kubelet n1", "kubelet n2"]
    assert all(f.severity is Severity.BLOCKER and "with the control plane at 1.33" in f.message for f in at)
    # rolling back below the kubelets is just as bad
    assert [f.subject for f in check_skew_at(_cluster(api=(35, 1), kubelets=[35]), V(34))] == ["kubelet n0"]


def test_feature_gates() -> None:
    gates = [FeatureGate("MyAlpha", "ALPHA", True), FeatureGate("OffAlpha", "ALPHA", False),
             FeatureGate("OldThing", "DEPRECATED", True), FeatureGate("Stable", "", True),
             FeatureGate("Beta", "BETA", True)]
    found = check_feature_gates(gates)
    assert [(f.subject, f.severity) for f in found] == [("feature gate MyAlpha", Severity.WARNING),
                                                        ("feature gate OldThing", Severity.INFO)]
    assert "--emulated-version" in found[0].message
    assert exit_code(found) == 2
    assert exit_code(check_feature_gates([FeatureGate("OldThing", "DEPRECATED", True)])) == 0


@pytest.mark.parametrize(("severities", "code"), [([], 0), ([Severity.INFO], 0), ([Severity.WARNING], 2),
                                                  ([Severity.WARNING, Severity.BLOCKER], 3)])
def test_exit_code_is_the_worst_severity(severities: list[Severity], code: int) -> None:
    from turbok.upgrade.checker import Finding

    assert exit_code([Finding(FindingKind.SKEW, s, "x", "y") for s in severities]) == code
