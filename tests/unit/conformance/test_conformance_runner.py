"""The runner: version mapping, selection, dry run, Ctrl-C cleanup, and the --cleanup sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.doubles import KubeApiDouble
from tests.unit.conformance.support import Cluster, fast_options
from turbok.client.kubeconfig import load_kubeconfig
from turbok.conformance.cleanup import MANAGED_BY_SELECTOR, sweep
from turbok.conformance.errors import InvalidOptionError, UnsupportedVersionError
from turbok.conformance.kube import KubeClient
from turbok.conformance.results import Status
from turbok.conformance.runner import Runner, RunSettings, select


def _version_double(tmp_path: Path, version: dict[str, str]) -> tuple[KubeApiDouble, Path]:
    api = KubeApiDouble({"version": version, "resources": [{"apiVersion": "v1", "kind": "Node", "name": "nodes", "namespaced": False}]})
    return api, tmp_path / "kubeconfig"


@pytest.mark.parametrize(("version", "checklist", "note"), [
    ({"major": "1", "minor": "33", "gitVersion": "v1.33.5"}, "1.33", None),
    ({"major": "1", "minor": "34+", "gitVersion": "v1.34.1-gke.1829001"}, "1.34", None),
    ({"gitVersion": "v1.36.0"}, "1.36", None),
    ({"major": "1", "minor": "38", "gitVersion": "v1.38.0"}, "1.37", "cluster is Kubernetes 1.38, newer than the newest checklist (1.37); using 1.37"),
])
def test_checklist_follows_cluster_version(tmp_path: Path, version: dict[str, str], checklist: str, note: str | None) -> None:
    api, kc = _version_double(tmp_path, version)
    with api.running(), KubeClient(load_kubeconfig(api.write_kubeconfig(kc))) as client:
        report = Runner(client, RunSettings(dry_run=True, options=fast_options())).run()
    assert report.checklist_version == checklist
    assert report.notes == ([note] if note else [])


def test_old_cluster_needs_version(tmp_path: Path) -> None:
    api, kc = _version_double(tmp_path, {"major": "1", "minor": "31", "gitVersion": "v1.31.9"})
    with api.running(), KubeClient(load_kubeconfig(api.write_kubeconfig(kc))) as client:
        with pytest.raises(UnsupportedVersionError, match="cluster is Kubernetes 1.31; AI Conformance checklists start at 1.33"):
            Runner(client, RunSettings(dry_run=True)).run()
        report = Runner(client, RunSettings(dry_run=True, version="1.33")).run()
        assert report.checklist_version == "1.33"
        assert report.notes == ["checking against the 1.33 checklist (--version); the cluster is 1.31"]


def test_unreadable_version(tmp_path: Path) -> None:
    api, kc = _version_double(tmp_path, {"gitVersion": "turbok-dev"})
    with api.running(), KubeClient(load_kubeconfig(api.write_kubeconfig(kc))) as client, \
            pytest.raises(UnsupportedVersionError, match="cannot read a Kubernetes version from /version \\(turbok-dev\\): pass --version"):
        Runner(client, RunSettings(dry_run=True)).run()


def test_select() -> None:
    from turbok.conformance import catalog

    reqs = list(catalog.checklist("1.35").requirements)
    assert [r.id for r in select(reqs, "observability/", None)] == ["accelerator_metrics", "ai_service_metrics"]
    assert [r.id for r in select(reqs, "gang|pod_auto", "pod")] == ["gang_scheduling"]
    assert len(select(reqs, None, "^accelerators/")) == len(reqs) - 4
    with pytest.raises(InvalidOptionError, match="--focus '\\(' is not a regular expression"):
        select(reqs, "(", None)


def test_dry_run_creates_nothing(conformant_cluster: Cluster) -> None:
    report = conformant_cluster.run(dry_run=True, skip="autoscaling")
    assert report.dry_run and report.exit_code == 0
    assert conformant_cluster.api.store.created == []
    assert [r.method for r in conformant_cluster.api.requests if r.method != "GET"] == []
    selected = [r for r in report.results if r.selected]
    assert len(selected) == 14 and all(r.status is Status.SKIPPED and r.reason.startswith("dry run: ") for r in selected)
    skipped = {r.requirement.id for r in report.results if not r.selected}
    assert skipped == {"cluster_autoscaling", "pod_autoscaling"}


def test_drafts_can_be_left_out(conformant_cluster: Cluster) -> None:
    report = conformant_cluster.run(dry_run=True, include_drafts=False)
    assert "workload_sandboxing" not in {r.requirement.id for r in report.results}
    assert not any(r.requirement.extra for r in report.results)


def test_ctrl_c_cleans_up(conformant_cluster: Cluster) -> None:
    """Ctrl-C while gang_scheduling watches its non-fitting Job: everything created so far is deleted."""
    store = conformant_cluster.api.store

    def sleeper(seconds: float) -> None:
        if any(o["metadata"]["name"].endswith("-nofit") for o in store.created_of("Job")):
            raise KeyboardInterrupt

    with conformant_cluster.client() as client:
        report = Runner(client, RunSettings(options=fast_options(negative_wait=30), focus="ai_inference|gang|robust"), sleeper=sleeper).run()
    by_id = {r.requirement.id: r for r in report.results if r.selected}
    assert report.interrupted and report.exit_code == 130
    assert by_id["ai_inference"].status is Status.PASSED
    assert by_id["gang_scheduling"].status is Status.UNKNOWN and by_id["gang_scheduling"].reason == "interrupted (Ctrl-C)"
    assert by_id["robust_controller"].status is Status.SKIPPED and by_id["robust_controller"].reason == "not run: the run was interrupted"
    assert store.labelled(MANAGED_BY_SELECTOR) == []
    deleted_kinds = {o["kind"] for o in store.deleted}
    assert {"Job", "ClusterQueue", "ResourceFlavor", "LocalQueue", "Namespace"} <= deleted_kinds


def _labelled(kind: str, api_version: str, name: str, ns: str | None = None, labelled: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "turbok-conformance"} if labelled else {}}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": {}}


def test_sweep_deletes_only_labelled_leftovers(conformant_cluster: Cluster) -> None:
    store = conformant_cluster.api.store
    for obj in (
        _labelled("Namespace", "v1", "turbok-conformance-old1"),
        _labelled("Pod", "v1", "probe", "turbok-conformance-old1"),
        _labelled("ClusterQueue", "kueue.x-k8s.io/v1beta1", "tc-gang-old1-cq"),
        _labelled("ResourceFlavor", "kueue.x-k8s.io/v1beta1", "tc-gang-old1-flavor"),
        _labelled("Pod", "v1", "stray", "default"),
        _labelled("Pod", "v1", "users-own-pod", "default", labelled=False),
        _labelled("ClusterQueue", "kueue.x-k8s.io/v1beta1", "team-a", labelled=False),
    ):
        store.add(obj)
    deleted_names: list[str] = []
    with conformant_cluster.client() as client:
        deleted, errors = sweep(client, on_delete=deleted_names.append)
    assert errors == []
    assert store.labelled(MANAGED_BY_SELECTOR) == []
    assert store.get("v1", "Pod", "users-own-pod", "default") is not None
    assert store.get("kueue.x-k8s.io/v1beta1", "ClusterQueue", "team-a") is not None
    assert deleted == 4  # the pod inside the namespace went with it
    assert deleted_names[0] == "Namespace turbok-conformance-old1"
    assert set(deleted_names[1:]) == {"ClusterQueue tc-gang-old1-cq", "ResourceFlavor tc-gang-old1-flavor", "Pod default/stray"}


_PODS = {"apiVersion": "v1", "kind": "Pod", "name": "pods", "namespaced": True}
_SANDBOXES = {"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "name": "sandboxes", "namespaced": True}


@pytest.mark.parametrize(("git_version", "resources", "engine"), [
    # turbok serves core Pods since issue 10: its gitVersion says what it is
    ("v1.37.0-turbok.0.1.0", [_PODS, _SANDBOXES], "turbok"),
    # a real cluster with the Agent Sandbox controller installed is still Kubernetes
    ("v1.37.2", [_PODS, _SANDBOXES], "kubernetes"),
    # an older turbok: Sandboxes served without Pods
    ("v1.34.0", [_SANDBOXES], "turbok"),
])
def test_engine_is_read_from_the_version_then_from_what_is_served(
        tmp_path: Path, git_version: str, resources: list[dict[str, Any]], engine: str) -> None:
    api = KubeApiDouble({"version": {"major": "1", "minor": git_version.split(".")[1], "gitVersion": git_version},
                         "resources": resources})
    with api.running(), KubeClient(load_kubeconfig(api.write_kubeconfig(tmp_path / "kubeconfig"))) as client:
        report = Runner(client, RunSettings(dry_run=True, options=fast_options())).run()
    assert report.cluster.engine == engine
