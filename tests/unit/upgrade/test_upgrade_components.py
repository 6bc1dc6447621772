"""Component flags out of static Pods and kubeadm configuration, the flag data, and etcd's version table."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbok.upgrade.components import components_data, parse_args, read_flag_files
from turbok.upgrade.errors import ManifestError, VersionError
from turbok.upgrade.etcd import etcd_data, parse_etcd_version
from turbok.upgrade.versions import Version


def test_args_flags_and_feature_gates() -> None:
    flags, gates = parse_args(["kube-apiserver", "--a=1", "--b", "two", "--bare", "--feature-gates=X=true,kube:Y=false",
                               "--feature-gates", "Z=True,wardle:W=true"])
    assert flags == {"a": "1", "b": "two", "bare": ""}
    assert gates == {"X": True, "Y": False, "Z": True}  # another component's gate is not Kubernetes'


def test_static_pods_and_cluster_configuration(tmp_path: Path) -> None:
    (tmp_path / "kube-apiserver.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: kube-apiserver}\nspec:\n  containers:\n"
        "  - name: kube-apiserver\n    image: registry.k8s.io/kube-apiserver:v1.36.3\n"
        "    command: [kube-apiserver, --feature-gates=SidecarContainers=true, --secure-port=6443]\n")
    (tmp_path / "etcd.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd}\nspec:\n  containers:\n"
        "  - name: etcd\n    image: registry.k8s.io/etcd:3.6.8-0\n    command: [etcd]\n")
    (tmp_path / "kubeadm.yaml").write_text(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncontrollerManager:\n  extraArgs:\n"
        "  - {name: concurrent-service-syncs, value: '5'}\nscheduler:\n  extraArgs: {v: '2'}\n"
        "featureGates: {SomeKubeadmGate: true}\n")
    flags = read_flag_files([str(tmp_path)])
    assert flags.flags["kube-apiserver"] == {"secure-port": "6443"}
    assert flags.gates["kube-apiserver"] == {"SidecarContainers": True, "SomeKubeadmGate": True}
    assert flags.flags["kube-controller-manager"] == {"concurrent-service-syncs": "5"}
    assert flags.flags["kube-scheduler"] == {"v": "2"}
    assert flags.etcd_image == "registry.k8s.io/etcd:3.6.8-0"
    with pytest.raises(ManifestError, match="no such file"):
        read_flag_files([str(tmp_path / "missing")])


def test_the_flag_data_covers_the_releases_read_off_binaries() -> None:
    data = components_data()
    assert data.covers_removals(Version(1, 37)) and data.covers_removals(Version(1, 36))
    assert not data.covers_removals(Version(1, 35))  # no 1.34 binary to compare with
    assert "SidecarContainers" in data.removed_gates[Version(1, 37)]
    assert data.removed_flags[Version(1, 37)]["kube-controller-manager"] == {"concurrent-service-syncs"}
    assert data.locked_gates[Version(1, 37)]["DRAPrioritizedList"] is True


def test_etcd_versions_and_one_minor_at_a_time() -> None:
    assert parse_etcd_version("3.5.24-0") == Version(3, 5, 24)
    assert parse_etcd_version("v3.6") == Version(3, 6)
    with pytest.raises(VersionError):
        parse_etcd_version("1.35.0")
    data = etcd_data()
    assert data.minor_for(Version(1, 33, 2)) == Version(3, 5) and data.minor_for(Version(1, 37)) == Version(3, 7)
    assert data.path(Version(3, 5, 24), Version(1, 37)) == [Version(3, 6), Version(3, 7)]
    assert data.path(Version(3, 7, 3), Version(1, 36)) == []  # a newer etcd stays
