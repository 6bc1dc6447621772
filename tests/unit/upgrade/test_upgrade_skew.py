"""The version skew policy's own examples, and its KEP-4330 extension to emulated versions."""

from __future__ import annotations

from turbok.upgrade.emulation import ControlPlaneVersion
from turbok.upgrade.skew import ClusterVersions, Component, Instance, SkewViolation, check_skew
from turbok.upgrade.versions import Version


def V(minor: int, patch: int = 0) -> Version:
    return Version(1, minor, patch)


def api(minor: int, name: str = "a1", emulated: int | None = None, patch: int = 0) -> Instance:
    cp = ControlPlaneVersion.of(V(minor, patch), Version(1, emulated) if emulated else None)
    return Instance(Component.APISERVER, name, V(minor, patch), cp)


def ctl(component: Component, minor: int, emulated: int | None = None, name: str = "c1") -> Instance:
    if component is Component.CLOUD_CONTROLLER_MANAGER:
        return Instance(component, name, V(minor))
    return Instance(component, name, V(minor), ControlPlaneVersion.of(V(minor), Version(1, emulated) if emulated else None))


def node(component: Component, minor: int, name: str = "n1") -> Instance:
    return Instance(component, name, V(minor))


def violations(*instances: Instance) -> list[SkewViolation]:
    return check_skew(ClusterVersions(tuple(instances)))


def test_ha_apiservers_within_one_minor() -> None:
    assert violations(api(35, "a1"), api(34, "a2")) == []
    bad = violations(api(35, "a1"), api(33, "a2"))
    assert [(v.component, v.instance) for v in bad] == [(Component.APISERVER, "a2")]


def test_controllers_match_or_lag_one_minor_and_are_never_newer() -> None:
    for c in (Component.CONTROLLER_MANAGER, Component.SCHEDULER, Component.CLOUD_CONTROLLER_MANAGER):
        assert violations(api(35), ctl(c, 35)) == []
        assert violations(api(35), ctl(c, 34)) == []
        assert [v.component for v in violations(api(35), ctl(c, 33))] == [c]
        newer = violations(api(35), ctl(c, 36))
        assert newer and all(v.component is c for v in newer)


def test_ha_skew_narrows_controllers_to_the_older_apiserver() -> None:
    # policy example: apiservers at 1.35 and 1.34 -> controllers supported at 1.34 only
    assert violations(api(35, "a1"), api(34, "a2"), ctl(Component.CONTROLLER_MANAGER, 34)) == []
    assert violations(api(35, "a1"), api(34, "a2"), ctl(Component.CONTROLLER_MANAGER, 35))
    assert violations(api(35, "a1"), api(34, "a2"), ctl(Component.CONTROLLER_MANAGER, 33))


def test_kubelet_up_to_three_minors_older_never_newer() -> None:
    for lag in range(4):
        assert violations(api(35), node(Component.KUBELET, 35 - lag)) == []
    assert violations(api(35), node(Component.KUBELET, 31))
    assert violations(api(35), node(Component.KUBELET, 36))


def test_kubelets_before_125_may_lag_only_two() -> None:
    assert violations(api(27), node(Component.KUBELET, 24))  # 3 behind, but < 1.25
    assert violations(api(26), node(Component.KUBELET, 24)) == []
    assert violations(api(28), node(Component.KUBELET, 25)) == []


def test_ha_skew_narrows_kubelets() -> None:
    # policy example: apiservers at 1.35 and 1.34 -> kubelet 1.34, 1.33, 1.32
    pair = (api(35, "a1"), api(34, "a2"))
    assert violations(*pair, node(Component.KUBELET, 35))
    assert violations(*pair, node(Component.KUBELET, 32)) == []
    assert violations(*pair, node(Component.KUBELET, 31))


def test_kube_proxy_within_three_of_its_kubelet() -> None:
    assert violations(api(35), node(Component.KUBELET, 35), node(Component.KUBE_PROXY, 32)) == []
    # a kube-proxy on another node is not compared with this kubelet
    assert violations(api(35), node(Component.KUBELET, 35, "n1"), node(Component.KUBE_PROXY, 32, "n2")) == []
    assert violations(api(35), node(Component.KUBE_PROXY, 36))


def test_kubectl_within_one_minor_either_way() -> None:
    for k in (34, 35, 36):
        assert violations(api(35), node(Component.KUBECTL, k)) == []
    assert violations(api(35), node(Component.KUBECTL, 33))
    assert violations(api(35), node(Component.KUBECTL, 37))
    # HA: apiservers 1.35 and 1.34 -> kubectl 1.35 and 1.34 only
    assert violations(api(35, "a1"), api(34, "a2"), node(Component.KUBECTL, 36))
    assert violations(api(35, "a1"), api(34, "a2"), node(Component.KUBECTL, 33))


def test_emulation_measures_skew_against_the_emulated_version() -> None:
    emulating = api(35, emulated=33)
    # a kubelet may not be newer than the emulated version (KEP-4330 "--emulation-version")
    assert violations(emulating, node(Component.KUBELET, 34))
    assert violations(emulating, node(Component.KUBELET, 30)) == []
    # HA apiservers with different binaries but equal emulated versions are fine
    assert violations(api(35, "a1", emulated=32), api(32, "a2")) == []
    # controllers: within [min compatibility, emulated]
    assert violations(emulating, ctl(Component.CONTROLLER_MANAGER, 35, emulated=33)) == []
    assert violations(emulating, ctl(Component.CONTROLLER_MANAGER, 35))  # behaves as 1.35 > 1.33


def test_controllers_never_run_a_newer_binary_than_the_apiservers() -> None:
    found = violations(api(32), ctl(Component.SCHEDULER, 35, emulated=32))
    assert [v.rule for v in found] == ["must not run a newer binary than kube-apiserver (upgrade apiservers first)"]


def test_no_apiserver_means_nothing_to_measure_against() -> None:
    assert violations(node(Component.KUBELET, 20)) == []


def test_kubelets_under_emulation_range_from_min_compatibility_minus_two() -> None:
    """KEP-4330 "Skew": kubelet {minCompatibilityVersion-2}..{emulationVersion}, not the binary's N-3."""
    emulating = api(35, emulated=32)  # 1.35 binary emulating 1.32: min compatibility 1.32
    assert emulating.control is not None and emulating.control.min_compat == V(32).mm
    for ok in (30, 31, 32):
        assert violations(emulating, node(Component.KUBELET, ok)) == [], ok
    for bad in (29, 33):  # 1.29 passed the old N-3 rule (1.32 - 3); 1.33 is newer than the emulated version
        found = violations(emulating, node(Component.KUBELET, bad))
        assert found and found[0].source.endswith("#skew"), bad
    # a wider --min-compatibility-version widens the range
    wide = Instance(Component.APISERVER, "a1", V(35), ControlPlaneVersion.of(V(35), None, Version(1, 33)))
    assert violations(wide, node(Component.KUBELET, 31)) == []
    assert violations(wide, node(Component.KUBE_PROXY, 30))


def test_kubectl_under_emulation_ranges_from_min_compatibility_to_emulated_plus_one() -> None:
    emulating = api(35, emulated=32)
    for ok in (32, 33):
        assert violations(emulating, node(Component.KUBECTL, ok)) == [], ok
    for bad in (31, 34):  # 1.31 is emulated - 1 but older than the min compatibility version
        assert violations(emulating, node(Component.KUBECTL, bad)), bad
    wide = Instance(Component.APISERVER, "a1", V(35), ControlPlaneVersion.of(V(35), None, Version(1, 33)))
    assert [k for k in range(31, 38) if not violations(wide, node(Component.KUBECTL, k))] == [33, 34, 35, 36]


def test_apiserver_binaries_more_than_one_minor_apart_are_noted_as_uncovered() -> None:
    from turbok.upgrade.checker import Severity, check_skew_now
    from turbok.upgrade.skew import mixed_binaries

    mixed = ClusterVersions((api(35, "a1", emulated=32), api(32, "a2")))
    note = mixed_binaries(mixed)
    assert note is not None and "not covered by KEP-4330" in note and "1.32.0" in note
    assert mixed_binaries(ClusterVersions((api(35, "a1", emulated=34), api(34, "a2")))) is None
    info = [f for f in check_skew_now(mixed) if f.severity is Severity.INFO]
    assert len(info) == 1 and info[0].subject == "kube-apiserver binaries"
